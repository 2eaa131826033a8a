"""Measured host compute of a bundle with its exits against the full model, timed interleaved.

One helper for ``build`` (the ``compute:`` line, ``serving.payoff``, the exit-payoff pass) and
``evaluate`` (``selection.compute``), so both report the same kind of figure:
:func:`time_interleaved` runs, per sample at batch 1, the full model without exits (the bundle's
``reference/full_model.tflite``, exported from the same trained backbone) and the bundle's
segment chain (every segment's runner call plus the scoring of its exit, as the executor does)
in turns, which one goes first rotating by sample and round, for ``rounds`` rounds. Both sides
of the ratio are therefore measured in the same seconds under the same load; a full-model time
from the build's earlier host profile against segment times measured minutes later (what the
figure used to be) gave ratios off by 3x on a loaded machine.

:func:`measured_compute` turns the timing into the served cost at a threshold: the exit mix of
a whole traced split times the cumulative segment cost of each exit. Each segment, and the full
model, costs the median of its timings (the same work on every sample, so a call preempted by
another process is noise, which a mean would keep). The spread is the saving computed from each
round alone (its min and max over rounds), so a reader sees how much the figure moves.
Bundles without a reference model (older builds, chain exports) fall back to the host profile's
full-model time and say so (``full_model_source``), with no spread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgelesspart.errors import ConfigError
from edgelesspart.evaluation.sweep import answering_exit, confidences

#: samples timed per measurement (evenly spread over the split) and rounds per sample
DEFAULT_TIMING_SAMPLES = 96
DEFAULT_TIMING_ROUNDS = 5


@dataclass(frozen=True)
class ComputeTiming:
    """Host milliseconds per sample of the full model and of every segment, timed interleaved.

    Attributes:
        full_ms: ``(samples, rounds)`` the full model without exits (empty without a reference).
        segment_ms: segment name -> ``(samples, rounds)`` its runner call and exit scoring.
        segments: segment names in execution order.
        source: ``"interleaved"``, or why the full model was not timed.
    """

    full_ms: np.ndarray
    segment_ms: dict[str, np.ndarray]
    segments: tuple[str, ...]
    source: str

    @property
    def samples(self) -> int:
        """Samples timed."""
        return int(next(iter(self.segment_ms.values())).shape[0]) if self.segment_ms else 0

    @property
    def rounds(self) -> int:
        """Rounds per sample."""
        return int(next(iter(self.segment_ms.values())).shape[1]) if self.segment_ms else 0

    @property
    def interleaved(self) -> bool:
        """Whether the full model was timed in the same trace as the segments."""
        return self.full_ms.size > 0

    def segment_means(self, round_: int | None = None) -> dict[str, float]:
        """Per segment: the median of its timings over samples and rounds (ms), or over the
        samples of one round. A segment does the same work on every sample, so the median is
        its cost; a call that another process preempted is noise, not cost, and a mean would
        carry it."""
        return {s: _median(m, round_) for s, m in self.segment_ms.items()}

    def full_mean(self, round_: int | None = None) -> float | None:
        """The full model's median time (ms), over every timing or one round's, if timed."""
        return _median(self.full_ms, round_) if self.interleaved else None


def _median(timings: np.ndarray, round_: int | None) -> float:
    return float(np.median(timings if round_ is None else timings[:, round_]))


def reference_runner(bundle: Any) -> Any | None:
    """A runner of the bundle's full model without exits, or ``None`` if it has none."""
    from edgelesspart.runtime.manifest import (
        FINAL_EXIT,
        REFERENCE_MODEL_PATH,
        SegmentSpec,
        safe_path,
    )
    from edgelesspart.runtime.plan import MODEL_INPUT, MODEL_OUTPUT
    from edgelesspart.runtime.segments import SegmentRunner

    manifest = bundle.manifest
    path = safe_path(bundle.path, REFERENCE_MODEL_PATH)
    if REFERENCE_MODEL_PATH not in manifest.files or not path.is_file():
        return None
    spec = SegmentSpec(
        name="full_model", stage="reference", start=MODEL_INPUT, end=MODEL_OUTPUT,
        input=manifest.input.tensor, exit=FINAL_EXIT, boundary=None,
        files={"tflite": REFERENCE_MODEL_PATH},
    )  # fmt: skip
    return SegmentRunner(path, spec, pool_size=1)


def _rows(x: np.ndarray, samples: int) -> list[np.ndarray]:
    n = min(int(samples), len(x))
    picks = np.unique(np.linspace(0, len(x) - 1, n).round().astype(int)) if n else []
    return [np.ascontiguousarray(x[i : i + 1], dtype=np.float32) for i in picks]


def time_interleaved(
    bundle: Any,
    x: np.ndarray,
    *,
    samples: int = DEFAULT_TIMING_SAMPLES,
    rounds: int = DEFAULT_TIMING_ROUNDS,
) -> ComputeTiming:
    """Time the full model and the segment chain of ``bundle`` in turns, sample by sample.

    Args:
        bundle: a loaded :class:`~edgelesspart.runtime.bundle.Bundle` (every stage loaded).
        x: input rows of the first segment; ``samples`` of them, evenly spread, are timed.
        samples: rows to time.
        rounds: timings per row and side; which side goes first rotates.

    Returns:
        The :class:`ComputeTiming`.
    """
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.preprocess import validate_input

    if int(samples) < 1 or int(rounds) < 1:
        raise ConfigError(f"Timing needs >= 1 sample and round, got {samples} and {rounds}.")
    executors = [ProgressiveExecutor(bundle, stage) for stage in bundle.stages]
    steps = [
        (seg.name, seg.exit, bundle.runner(seg.name), ex.scorer)
        for ex in executors
        for seg in ex.segments
    ]
    rows = _rows(validate_input(np.asarray(x), executors[0].input_spec), samples)
    full = reference_runner(bundle)
    clock = time.perf_counter

    def chain(row: np.ndarray, out: list[float]) -> None:
        current = row
        for _name, exit_name, runner, scorer in steps:
            t0 = clock()
            probs, boundary = runner(current, trusted=True)
            if exit_name is not None and probs is not None:
                scorer.top1(exit_name, probs, 1.01)
            out.append((clock() - t0) * 1000.0)
            if boundary is None:
                break
            current = boundary

    def reference(row: np.ndarray) -> float:
        t0 = clock()
        full(row, trusted=True)
        return (clock() - t0) * 1000.0

    for row in rows[:2]:  # warm-up: the first call after a resize allocates tensors
        chain(row, [])
        if full is not None:
            reference(row)
    seg = np.zeros((len(steps), len(rows), int(rounds)))
    ref = np.zeros((len(rows), int(rounds)))
    for r in range(int(rounds)):
        for i, row in enumerate(rows):
            times: list[float] = []
            if full is not None and (r + i) % 2:
                ref[i, r] = reference(row)
                chain(row, times)
            else:
                chain(row, times)
                if full is not None:
                    ref[i, r] = reference(row)
            seg[: len(times), i, r] = times
    source = "interleaved" if full is not None else "no reference model in the bundle"
    return ComputeTiming(
        full_ms=ref if full is not None else np.zeros((0, 0)),
        segment_ms={name: seg[k] for k, (name, *_rest) in enumerate(steps)},
        segments=tuple(name for name, *_rest in steps),
        source=source,
    )


def _served(trace: Any, threshold: float, seg_ms: dict[str, float]) -> float:
    """Mean host ms per sample at ``threshold``: every segment up to its answering exit."""
    conf, _ = confidences(trace)
    idx = answering_exit(conf, threshold)
    cumulative, total = {}, 0.0
    for name in trace.segments:
        total += seg_ms[name]
        cumulative[name] = total
    per_exit = np.array([cumulative[trace.exit_segment[e]] for e in trace.exits])
    return float(per_exit[idx].mean())


def measured_compute(
    trace: Any, threshold: float, timing: ComputeTiming, profile_full_ms: float | None = None
) -> dict[str, Any]:
    """Host compute per sample at ``threshold`` against the full model without exits, measured.

    The served cost of a sample is the measured host time of every segment it runs (exit heads,
    scoring and per-call overhead included) up to its answering exit, under ``trace``'s exit mix
    (a whole split); the reference is the full model timed in the same interleaved trace
    (:func:`time_interleaved`), else ``profile_full_ms`` (the build's host profile, measured at
    another time: no spread, and ``full_model_source`` says so). ``saving`` is their ratio
    (> 1: the exits pay off); ``saving_rounds`` is the saving of each round alone (min, median,
    max); ``exit_overhead_ms`` is what running every segment costs beyond the full model.
    """
    if tuple(trace.segments) != timing.segments:
        raise ConfigError(
            f"The timing covers segments {list(timing.segments)} but the trace has "
            f"{list(trace.segments)}; time the same bundle."
        )
    seg = timing.segment_means()
    served = _served(trace, threshold, seg)
    every = float(sum(seg.values()))
    full = timing.full_mean()
    spread = None
    if full is not None:
        source = f"interleaved: {timing.samples} samples x {timing.rounds} rounds"
        by_round = [
            timing.full_mean(r) / _served(trace, threshold, timing.segment_means(r))
            for r in range(timing.rounds)
        ]
        spread = {
            "min": round(min(by_round), 3),
            "median": round(float(np.median(by_round)), 3),
            "max": round(max(by_round), 3),
        }
    elif profile_full_ms is not None:
        full = float(profile_full_ms)
        source = "host profile, measured at build time, not interleaved (no reference model)"
    else:
        raise ConfigError("No full-model time: the bundle has no reference model or profile.")
    return {
        "threshold": threshold,
        "full_model_host_ms": round(full, 4),
        "full_model_source": source,
        "served_host_ms": round(served, 4),
        "all_segments_host_ms": round(every, 4),
        "exit_overhead_ms": round(every - full, 4),
        "saving": round(full / served, 3) if served > 0 else None,
        "saving_rounds": spread,
        "timed_samples": timing.samples,
        "rounds": timing.rounds,
    }


def format_saving(net: dict[str, Any]) -> str:
    """``"1.08x (rounds 1.02-1.11)"``: the saving and, when interleaved, its spread."""
    text = f"{net['saving']:.2f}x"
    spread = net.get("saving_rounds")
    if spread:
        text += f" (per round {spread['min']:.2f}-{spread['max']:.2f}x)"
    return text
