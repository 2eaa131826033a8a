"""A stage that holds every width's LiteRT segments and switches width live (TF-free).

:class:`WidthStage` loads, for each width of a width bundle, the segments of one stage (or of
several consecutive stages, as the single-node edge runs them) once, at start-up. ``set_width``
only swaps which chain the *next* call uses: a call already running finishes with the width it
started with, nothing is reloaded and no request is dropped. Every width of a stage takes and
hands on the same full-channel boundary (only inner channels are pruned), so neighbours never
need to know each other's width.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgelesspart.dynamic.widths import (
    DynamicManifest,
    load_manifest,
    segment_path,
    width_key,
)
from edgelesspart.errors import ConfigError
from edgelesspart.runtime.segments import SegmentRunner


class WidthStage:
    """Stages ``indices`` of a width bundle at every width, one width active at a time.

    Args:
        bundle: the width bundle directory.
        indices: consecutive stage indices this object runs (one for a pipeline node, all for a
            single-node edge).
        manifest: the bundle's manifest if already loaded (else read and verified here).
        width: the initial width.
        pool_size: LiteRT interpreters per segment (concurrent calls).
    """

    def __init__(
        self,
        bundle: str | Path,
        indices: Sequence[int],
        *,
        manifest: DynamicManifest | None = None,
        width: float = 1.0,
        pool_size: int = 1,
    ) -> None:
        self.bundle = Path(bundle)
        self.manifest = manifest or load_manifest(self.bundle)
        self.indices = tuple(int(i) for i in indices)
        known = range(len(self.manifest.stages))
        if not self.indices or any(i not in known for i in self.indices):
            raise ConfigError(
                f"Stage indices {list(indices)} are not in the bundle, which has stages "
                f"0..{len(self.manifest.stages) - 1}."
            )
        self.widths = self.manifest.widths
        self._chains: dict[str, list[SegmentRunner]] = {}
        for w in self.widths:
            chain = []
            for i in self.indices:
                seg = self.manifest.stages[i].at(w).segment
                path = segment_path(self.bundle, seg.files["tflite"])
                chain.append(SegmentRunner(path, seg, pool_size=pool_size))
            self._chains[width_key(w)] = chain
        self._lock = threading.Lock()
        self._width = self._check(width)
        self.switches = 0
        self.rows_by_width: dict[str, int] = {width_key(w): 0 for w in self.widths}

    def _check(self, width: float) -> float:
        key = width_key(width)
        if key not in self._chains:
            raise ConfigError(
                f"Width {width!r} is not in this bundle; it holds "
                f"{', '.join(width_key(w) for w in self.widths)}."
            )
        return float(width)

    @property
    def width(self) -> float:
        """The width the next call runs at."""
        with self._lock:
            return self._width

    def set_width(self, width: float) -> float:
        """Make the next call run at ``width``; return the previous width."""
        new = self._check(width)
        with self._lock:
            old, self._width = self._width, new
            if old != new:
                self.switches += 1
        return old

    def __call__(self, x: np.ndarray, width: float | None = None) -> np.ndarray:
        """Run the stage chain on a batch at the current width (or ``width`` if given).

        Returns the last segment's boundary tensor or, for the final stage, the
        ``(N, classes)`` probabilities.
        """
        with self._lock:
            use = self._width if width is None else self._check(width)
            key = width_key(use)
        out = np.asarray(x, dtype=np.float32)
        for runner in self._chains[key]:
            probs, boundary = runner(out)
            out = boundary if boundary is not None else probs
        with self._lock:  # counted once computed: a refused input served no rows
            self.rows_by_width[key] += int(out.shape[0])
        return out

    def timed(self, x: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Run at the current width; return ``(output, width used, seconds)``."""
        width = self.width
        start = time.perf_counter()
        out = self(x, width=width)
        return out, width, time.perf_counter() - start

    def latency_ms(self, width: float) -> float:
        """Measured build-host latency of this chain at ``width`` (sum over its stages)."""
        return float(sum(self.manifest.stages[i].at(width).latency_ms for i in self.indices))
