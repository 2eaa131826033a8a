"""The single-node edge with an SLO: narrow the whole model before refusing requests (TF-free).

:class:`WidthEdge` runs every stage of a width bundle in one process (one
:class:`~edgelesspart.dynamic.stage.WidthStage` over all stages, all narrowed together, whose
accuracy per width is the bundle's measured uniform-width accuracy). Requests are computed one
at a time, as on a single device; at most ``max_queue`` more wait, and only beyond that is a
request refused (:class:`~edgelesspart.errors.PipelineBusy`, HTTP 429). Every ``tick_s`` the
same :class:`~edgelesspart.dynamic.controller.WidthController` the pipeline uses reads arrival
rate, service time, queue and throughput and picks the width, so under overload the edge first
gets faster (narrower) and refuses only when even the narrowest width cannot keep up. ``scale``
emulates a slower device by sleeping (``scale`` x the segment's build-host latency).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.dynamic.controller import (
    ControllerConfig,
    Observation,
    StageMetrics,
    WidthController,
    curves_from_manifest,
)
from edgelesspart.dynamic.stage import WidthStage
from edgelesspart.dynamic.widths import load_manifest, width_key
from edgelesspart.errors import ConfigError, PipelineBusy
from edgelesspart.pipeline.emulation import sleep_s

DECISIONS_KEPT = 200


@dataclass(frozen=True)
class EdgeAnswer:
    """One answer: probabilities, the width that computed it, and the latency in the service."""

    seq: int
    probs: np.ndarray
    widths: tuple[float, ...]
    latency_ms: float


class WidthEdge:
    """All stages of a width bundle on one node, with an optional SLO controller.

    Args:
        bundle: the width bundle directory.
        slo_ms: latency SLO; ``None`` serves at full width with no controller.
        scale: emulated device time = ``scale`` x build-host latency (1: as fast as this host).
        max_queue: requests that may wait while one computes; more are refused.
        tick_s: controller period.
        config: controller settings (default: ``ControllerConfig(slo_ms)``).
    """

    def __init__(
        self,
        bundle: str | Path,
        *,
        slo_ms: float | None = None,
        scale: float = 1.0,
        max_queue: int = 8,
        tick_s: float = 0.5,
        config: ControllerConfig | None = None,
    ) -> None:
        if max_queue < 0 or not scale >= 1.0:
            raise ConfigError(f"max_queue must be >= 0 and scale >= 1, got {max_queue}, {scale}.")
        self.manifest = load_manifest(bundle)
        indices = list(range(len(self.manifest.stages)))
        self.stage = WidthStage(bundle, indices, manifest=self.manifest)
        self.scale, self.max_queue, self.tick_s = float(scale), int(max_queue), float(tick_s)
        self.slo_ms = slo_ms
        self.controller = None
        if slo_ms is not None:
            curves, full = curves_from_manifest(self.manifest, scale=self.scale, groups=[indices])
            self.controller = WidthController(curves, full, config or ControllerConfig(slo_ms))
        self._compute = threading.Lock()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(("arrived", "completed", "refused", "met_slo"), 0)
        self._waiting = 0
        self._busy_s = 0.0
        self._decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (time.perf_counter(), 0, 0, 0.0)

    def start(self) -> WidthEdge:
        """Start the controller loop (no-op without an SLO)."""
        if self.controller is not None and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="edge-width", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the controller loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def infer(self, x: np.ndarray) -> EdgeAnswer:
        """Answer one batch at the current width.

        Raises:
            PipelineBusy: one request computes and ``max_queue`` wait already.
        """
        start = time.perf_counter()
        with self._lock:
            self._counts["arrived"] += 1
            seq = self._counts["arrived"]
            if self._waiting >= self.max_queue + 1:
                self._counts["refused"] += 1
                raise PipelineBusy(
                    f"The edge is computing one request and {self.max_queue} are waiting, even "
                    f"at width {width_key(self.stage.width)}; retry shortly."
                )
            self._waiting += 1
        try:
            with self._compute:
                began = time.perf_counter()
                out, width, seconds = self.stage.timed(np.asarray(x, dtype=np.float32))
                sleep_s(self.scale * self.stage.latency_ms(width) / 1000.0 - seconds)
                busy = time.perf_counter() - began
        finally:
            with self._lock:
                self._waiting -= 1
        latency = (time.perf_counter() - start) * 1000.0
        with self._lock:
            self._busy_s += busy
            self._counts["completed"] += 1
            self._counts["met_slo"] += int(self.slo_ms is not None and latency <= self.slo_ms)
        return EdgeAnswer(seq, out, (width,), latency)

    def observe(self) -> Observation:
        """Metrics since the previous call, as the controller reads them."""
        now = time.perf_counter()
        with self._lock:
            arrived, done, busy = self._counts["arrived"], self._counts["completed"], self._busy_s
            queue = self._waiting
        t0, arrived0, done0, busy0 = self._last
        self._last = (now, arrived, done, busy)
        dt = max(1e-6, now - t0)
        items = done - done0
        service = (busy - busy0) / items * 1000.0 if items else None
        stage = StageMetrics(service, queue, items / dt, self.stage.width)
        return Observation(now, (arrived - arrived0) / dt, (stage,))

    def _loop(self) -> None:
        while self.controller is not None and not self._stop.wait(self.tick_s):
            decision = self.controller.step(self.observe())
            if decision.changed:
                with self._lock:
                    self._decisions.append(decision.to_dict())
                self.stage.set_width(decision.widths[0])

    def metrics(self) -> dict[str, Any]:
        """Counters, current width, recent decisions with reasons, SLO attainment."""
        with self._lock:
            done = self._counts["completed"]
            return {
                "submitted": self._counts["arrived"],
                "completed": done,
                "rejected": self._counts["refused"],
                "in_flight": self._waiting,
                "slo_ms": self.slo_ms,
                "slo_attainment": self._counts["met_slo"] / done if done else None,
                "decisions": list(self._decisions),
                "widths": {"edge": width_key(self.stage.width)},
                "stages": [
                    {
                        "stage": "edge",
                        "width": self.stage.width,
                        "switches": self.stage.switches,
                        "rows_by_width": dict(self.stage.rows_by_width),
                    }
                ],
            }

    def __enter__(self) -> WidthEdge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
