"""SlimEdge on Ray: one actor per device, fan-in to an aggregator, re-planning on failures.

* :class:`ViewWorker` (one Ray actor per device) runs its view's pruned backbone (LiteRT bytes)
  and can swap in a differently pruned segment between two requests (``swap``): the service
  never stops. A slow device is emulated by sleeping for the missing time (never by burning CPU).
* The **aggregator** actor fuses whatever features arrive: each request's feature refs of the
  views that answered are passed to ``fuse`` with a presence mask (Ray resolves them there).
* :class:`SlimEdgeService` (the dispatcher, in the driver) fans a request out, waits for the
  views up to a deadline, and treats a view as lost after ``max_missed`` missed deadlines or an
  actor error. When a device is lost it takes the precomputed plan for that single failure (or
  re-plans with NSGA-II for several failures), swaps the survivors' segments to the plan's
  ratios, and keeps answering from the survivors: no request is dropped.

Ray comes from the pipeline package's shared helpers (:mod:`edgelesspart.pipeline.raykit`:
``require_ray`` with its install hint, ``actor_options`` for placement by custom resource).
Device actors are *not* restarted (``max_restarts=0``): a lost device is re-planned around, not
waited for; the aggregator restarts like a pipeline stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart.errors import PlanError


def _ray() -> Any:
    from edgelesspart.pipeline.raykit import require_ray

    return require_ray()


class _Segment:
    """A LiteRT interpreter over one segment, batch resized on demand."""

    def __init__(self, tflite: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=tflite, num_threads=1)
        self.runner = self.interpreter.get_signature_runner("serving_default")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.runner(x=np.ascontiguousarray(x, dtype=np.float32))
        return next(iter(out.values()))


class ViewWorkerImpl:
    """The body of the per-device actor (plain class, so it is testable without Ray)."""

    def __init__(self, view: int, tflite: bytes, ratio: float, factor: float = 1.0) -> None:
        self.view = view
        self.segment = _Segment(tflite)
        self.ratio = ratio
        self.factor = factor
        self.swaps = 0

    def features(self, x: np.ndarray) -> np.ndarray:
        """This view's features; sleeps ``(factor - 1) x compute time`` to emulate the device."""
        start = time.perf_counter()
        out = self.segment(x)
        spent = time.perf_counter() - start
        if self.factor > 1.0:
            time.sleep((self.factor - 1.0) * spent)
        return out

    def swap(self, tflite: bytes, ratio: float) -> float:
        """Replace the segment (between two requests); returns the new ratio."""
        self.segment = _Segment(tflite)
        self.ratio = ratio
        self.swaps += 1
        return ratio

    def state(self) -> dict[str, Any]:
        """Heartbeat: view, ratio and swap count."""
        return {"view": self.view, "ratio": self.ratio, "swaps": self.swaps}


class AggregatorImpl:
    """Fuses the features of the views that answered (the fusion segment, LiteRT)."""

    def __init__(self, tflite: bytes, n_views: int) -> None:
        self.segment = _Segment(tflite)
        self.n_views = n_views

    def fuse(self, present: Sequence[int], *features: np.ndarray) -> np.ndarray:
        """Class probabilities from the ``present`` views' ``features`` (same order)."""
        batch, width = features[0].shape
        x = np.zeros((batch, self.n_views, width + 1), dtype=np.float32)
        for v, f in zip(present, features):
            x[:, v, :width] = f
            x[:, v, width] = 1.0
        return self.segment(x)


@dataclass
class ServiceStats:
    """What the dispatcher observed."""

    answered: int = 0
    lost_devices: list[int] = field(default_factory=list)
    replans: list[dict[str, Any]] = field(default_factory=list)
    degraded_answers: int = 0


#: segment library: (view, ratio) -> LiteRT bytes of that view's backbone pruned at that ratio
Library = Mapping[tuple[int, float], bytes]


def nearest_ratio(library: Library, view: int, ratio: float) -> float:
    """The largest available ratio of ``view`` not above ``ratio`` (never prunes more)."""
    available = sorted(r for v, r in library if v == view)
    below = [r for r in available if r <= ratio + 1e-9]
    return below[-1] if below else available[0]


class SlimEdgeService:
    """The dispatcher: fan-out to device actors, fan-in at the aggregator, failure handling.

    Args:
        library: pruned backbone segments per ``(view, ratio)``.
        fusion: LiteRT bytes of the fusion segment.
        ratios: the starting plan's ratio per view.
        planner: ``alive views -> ratio per view``, e.g. ``optimize.failure_planner``
            (precomputed single-failure plans, NSGA-II otherwise).
        factors: per-device latency factor to emulate (default 1, no sleeping).
        deadline_s: how long a request waits for the views.
        max_missed: missed deadlines before a device is declared lost.
        resources: per device, a Ray custom resource naming its node (``None``: anywhere).
    """

    def __init__(
        self,
        library: Library,
        fusion: bytes,
        ratios: Sequence[float],
        planner: Callable[[list[int]], Sequence[float]],
        *,
        factors: Sequence[float] | None = None,
        deadline_s: float = 2.0,
        max_missed: int = 2,
        resources: Sequence[str | None] | None = None,
    ) -> None:
        from edgelesspart.pipeline.raykit import actor_options

        ray = _ray()
        n = len(ratios)
        factors = list(factors) if factors is not None else [1.0] * n
        resources = list(resources) if resources is not None else [None] * n
        worker = ray.remote(ViewWorkerImpl)
        aggregator = ray.remote(AggregatorImpl).options(**actor_options())
        self.library = library
        self.planner = planner
        self.deadline_s = deadline_s
        self.max_missed = max_missed
        self.ratios = [nearest_ratio(library, v, r) for v, r in enumerate(ratios)]
        self.workers = [
            worker.options(
                **actor_options(resource=resources[v], max_restarts=0, max_task_retries=0)
            ).remote(v, library[(v, self.ratios[v])], self.ratios[v], factors[v])
            for v in range(n)
        ]
        self.aggregator = aggregator.remote(fusion, n)
        self.alive = list(range(n))
        self.missed = [0] * n
        self.stats = ServiceStats()
        ray.get([w.state.remote() for w in self.workers], timeout=120)  # every segment loaded

    def infer(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """Answer one batch from the views whose devices answer within the deadline."""
        ray = _ray()
        refs = {v: self.workers[v].features.remote(views[v]) for v in self.alive}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.deadline_s)
        ready_ids = {r.hex() for r in ready}
        present, lost = [], []
        for v, ref in refs.items():
            if ref.hex() not in ready_ids:
                self.missed[v] += 1
                if self.missed[v] >= self.max_missed:
                    lost.append(v)
                continue
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayError:
                lost.append(v)
                continue
            self.missed[v] = 0
            present.append(v)
        if not present:
            raise PlanError("No device answered: every view is lost; the request cannot be fused.")
        probs = ray.get(self.aggregator.fuse.remote(present, *(refs[v] for v in present)))
        self.stats.answered += 1
        if len(present) < len(self.alive):
            self.stats.degraded_answers += 1
        if lost:
            self.device_lost(lost)
        return probs

    def device_lost(self, lost: Sequence[int]) -> dict[str, Any]:
        """Drop ``lost`` views, re-plan for the survivors, swap their segments without stopping."""
        start = time.perf_counter()
        self.alive = [v for v in self.alive if v not in set(lost)]
        self.stats.lost_devices.extend(lost)
        if not self.alive:
            raise PlanError("Every device is lost; nothing left to re-plan for.")
        planned = self.planner(list(self.alive))
        planned_s = time.perf_counter() - start
        swaps = []
        for v in self.alive:
            ratio = nearest_ratio(self.library, v, planned[v])
            if ratio != self.ratios[v]:
                self.workers[v].swap.remote(
                    self.library[(v, ratio)], ratio
                )  # ordered before the next request
                self.ratios[v] = ratio
                swaps.append(v)
        record = {"lost": list(lost), "alive": list(self.alive), "ratios": list(self.ratios),
                  "replan_seconds": planned_s, "swapped": swaps}  # fmt: skip
        self.stats.replans.append(record)
        return record

    def states(self) -> list[dict[str, Any]]:
        """Heartbeat of every alive device."""
        ray = _ray()
        return ray.get([self.workers[v].state.remote() for v in self.alive], timeout=30)

    def kill(self, view: int) -> None:
        """Kill a device's actor (tests and the failure experiment)."""
        _ray().kill(self.workers[view], no_restart=True)
