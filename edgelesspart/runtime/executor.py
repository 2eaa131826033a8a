"""Progressive executor: run a stage's segments; each sample stops at its first confident exit.

After every exit, the rows whose top-1 confidence reaches the threshold are answered and
removed from the batch, so later segments never run for them; the model's final classifier
answers every row that gets that far. Rows still pending at the end of a non-final stage are
handed on (their boundary tensor) to the next stage, usually through an offloader.

:meth:`ProgressiveExecutor.trace` is the evaluation path: it runs every loaded segment once on
every row and keeps every exit's probabilities, so an evaluator can compute the outcome of any
threshold from one trace with exactly the numbers the served path would see.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from itertools import islice
from numbers import Real
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError, ConfigError
from edgelesspart.runtime.bundle import Bundle
from edgelesspart.runtime.confidence import (
    DEFAULT_THRESHOLD,  # noqa: F401  (re-exported: the services import it from here)
    MAX_SOFTMAX,
    scorer_for,
    serving_threshold,
)
from edgelesspart.runtime.manifest import FINAL_EXIT, SegmentSpec
from edgelesspart.runtime.preprocess import validate_input

TOTAL = "total"
_NO_ROWS = np.empty(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False  # shared by every result with nothing pending


def check_threshold(value: Any) -> float:
    """Validate a confidence threshold and return it as a float.

    ``0 <= t``; an exit answers when its top-1 confidence ``>= t``. Any value above 1 means
    "never exit early" (only the final classifier answers).

    Raises:
        ConfigError: not a real number, NaN, or negative.
    """
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise ConfigError(
            f"Threshold must be a number >= 0 (values > 1 disable early exits), "
            f"got {value!r} of type {type(value).__name__}."
        )
    try:
        number = float(value)
    except OverflowError as exc:  # an int beyond float range
        raise ConfigError(
            "Threshold must be a number >= 0, got an int too large for a float."
        ) from exc
    if math.isnan(number) or number < 0:
        raise ConfigError(
            f"Threshold must be a number >= 0 (values > 1 disable early exits), got {value!r}."
        )
    return number


@dataclass(frozen=True)
class Answer:
    """One sample's answer. :meth:`to_dict` is the JSON the services return."""

    label: int
    class_name: str
    confidence: float
    exit: str
    stage: str
    timings: dict[str, float] = field(default_factory=dict)
    degraded: bool = False
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "label": self.label,
            "class_name": self.class_name,
            "confidence": self.confidence,
            "exit": self.exit,
            "stage": self.stage,
            "timings": dict(self.timings),
            "degraded": self.degraded,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        """Build from :meth:`to_dict` output (e.g. an answer the cloud part sent back)."""
        return cls(
            label=int(data["label"]),
            class_name=str(data["class_name"]),
            confidence=float(data["confidence"]),
            exit=str(data["exit"]),
            stage=str(data["stage"]),
            timings={str(k): float(v) for k, v in dict(data.get("timings", {})).items()},
            degraded=bool(data.get("degraded", False)),
            reason=None if data.get("reason") is None else str(data["reason"]),
        )

    def as_degraded(self, reason: str) -> Answer:
        """This answer marked as a degraded fallback, with the reason."""
        return replace(self, degraded=True, reason=reason)


@dataclass(frozen=True)
class StageResult:
    """What one stage made of a batch.

    Attributes:
        answers: one per input row; ``None`` when the row must go on to the next stage.
        pending: int indices of the rows still pending, in input order.
        boundary: the boundary tensor rows for ``pending`` (``None`` if nothing is pending).
        best: per input row, the most confident exit seen in this stage (the degraded
            fallback when the next stage cannot answer); ``None`` if the stage has no exit.
    """

    answers: list[Answer | None]
    pending: np.ndarray
    boundary: np.ndarray | None
    best: list[Answer | None]


@dataclass(frozen=True)
class Trace:
    """Every exit's probabilities for a batch, plus per-segment timings and boundary sizes."""

    exits: tuple[str, ...]
    exit_stage: dict[str, str]
    exit_segment: dict[str, str]
    probs: dict[str, np.ndarray]
    segments: tuple[str, ...]
    segment_stage: dict[str, str]
    segment_ms: dict[str, float]
    boundary_bytes: dict[str, int]
    measure: str = MAX_SOFTMAX  # how confidence is scored from ``probs`` (already calibrated)


_ROW_0 = np.zeros(1, dtype=np.int64)
_ROW_0.flags.writeable = False  # the pending rows of a batch of one that no exit answered


def _bad_exit(exit_name: str, probs: np.ndarray | None, classes: int) -> None:
    got = None if probs is None else probs.shape
    raise BundleError(
        f"Exit {exit_name!r} returned probabilities of shape {got}; the manifest lists "
        f"{classes} classes."
    )


def _answer(
    decision: tuple, times: list[tuple[str, float]], classes: tuple[str, ...], stage: str
) -> Answer:
    """The :class:`Answer` of a decision ``(label, confidence, exit, segments_run)``."""
    label, confidence, exit_name, ran = decision
    timings = dict(times[:ran])
    timings[TOTAL] = float(sum(timings.values()))
    return Answer(label, classes[label], confidence, exit_name, stage, timings)


_new = object.__new__


def _quick_answer(
    label: int, class_name: str, confidence: float, exit_name: str, stage: str, timings: dict
) -> Answer:
    """``Answer(label, class_name, confidence, exit_name, stage, timings)``, built faster.

    A frozen dataclass's ``__init__`` sets each of its 8 fields with ``object.__setattr__``;
    this fills the instance's ``__dict__`` at once (the same fields and values, so equality,
    hashing, ``replace`` and :meth:`Answer.to_dict` are unchanged). Used by the batch-of-one
    path, where the answer object is a measurable part of P2's per-sample overhead.
    """
    answer = _new(Answer)
    answer.__dict__.update(
        label=label, class_name=class_name, confidence=confidence, exit=exit_name,
        stage=stage, timings=timings, degraded=False, reason=None,
    )  # fmt: skip
    return answer


def _quick_result(
    answers: list[Answer | None], pending: np.ndarray, boundary: np.ndarray | None,
    best: list[Answer | None],
) -> StageResult:  # fmt: skip
    """``StageResult(answers, pending, boundary, best)`` without the frozen ``__init__``."""
    result = _new(StageResult)
    result.__dict__.update(answers=answers, pending=pending, boundary=boundary, best=best)
    return result


def _one_answer(
    decision: tuple, times: dict[str, float], classes: tuple[str, ...], stage: str
) -> Answer:
    """The answer of a batch-1 decision ``(label, confidence, exit, segments_run)``.

    ``times`` (segment -> ms, in run order) becomes the answer's timings as it is when the
    decision was made at the last segment run (it gets ``total`` added), else a copy of its
    first ``segments_run`` entries: build the earlier decision's answer first.
    """
    label, confidence, exit_name, ran = decision
    timings = times if ran == len(times) else dict(islice(times.items(), ran))
    timings[TOTAL] = float(sum(timings.values()))
    return _quick_answer(label, classes[label], confidence, exit_name, stage, timings)


class _Rows:
    """Per-row bookkeeping while a batch moves through a stage.

    Every row still active has run the same segments, so the segment times are kept once, in
    order (``times``), rather than per row. An exit decision is kept as a plain tuple
    ``(label, confidence, exit, segments_run)``; the :class:`Answer` objects (each with its
    own timings dict and ``total``) are built once at the end, one per distinct decision.
    ``active`` holds the input indices of the rows still going on.
    """

    __slots__ = ("active", "answers", "best", "times")

    def __init__(self, n: int) -> None:
        self.answers: list[tuple | None] = [None] * n
        self.best: list[tuple | None] = [None] * n
        self.times: list[tuple[str, float]] = []
        self.active: list[int] = list(range(n))

    def finish(self, classes: tuple[str, ...], stage: str) -> tuple[list, list]:
        """The per-row answers and best exits as :class:`Answer` objects."""
        times = self.times
        built: dict[int, Answer] = {}  # by decision identity: answer and best often coincide

        def build(decision: tuple | None) -> Answer | None:
            if decision is None:
                return None
            key = id(decision)
            answer = built.get(key)
            if answer is None:
                answer = built[key] = _answer(decision, times, classes, stage)
            return answer

        return [build(d) for d in self.answers], [build(d) for d in self.best]


class ProgressiveExecutor:
    """Run one stage of a loaded bundle with early exits.

    Thread-safe: it holds no per-call state, and each segment runner has its own pool.

    Args:
        bundle: a bundle with ``stage`` loaded.
        stage: the stage name (``"edge"``, ``"cloud"``, ...).
        threshold: default confidence threshold (see :func:`check_threshold`); ``None``: the
            manifest's ``serving.threshold`` (chosen by the build), else ``DEFAULT_THRESHOLD``.

    Exit probabilities are temperature-scaled and scored with the manifest's ``serving`` entry
    (:mod:`edgelesspart.runtime.confidence`), in :meth:`run` and :meth:`trace` alike.
    """

    def __init__(self, bundle: Bundle, stage: str, threshold: float | None = None) -> None:
        self.bundle = bundle
        self.stage = stage
        serving = bundle.manifest.serving
        self.scorer = scorer_for(serving)
        self.threshold = check_threshold(
            serving_threshold(serving) if threshold is None else threshold
        )
        self._segments = bundle.segments(stage)
        if not self._segments:
            raise BundleError(f"Stage {stage!r} has no segments in manifest.json.")
        self._runners = [bundle.runner(seg.name) for seg in self._segments]
        # the loop's per-segment constants, resolved once: name and exit (or None)
        self._steps = tuple(
            (seg.name, None if seg.exit is None else str(seg.exit)) for seg in self._segments
        )
        # the batch-of-one loop's: name, exit, runner
        self._plan = tuple((n, e, r) for (n, e), r in zip(self._steps, self._runners))
        self._classes = bundle.classes
        self.input_spec = self._segments[0].input
        self.is_final = self._segments[-1].exit == FINAL_EXIT

    @property
    def segments(self) -> tuple[SegmentSpec, ...]:
        """This stage's segments in execution order."""
        return self._segments

    def run(
        self, x: np.ndarray, threshold: float | None = None, *, trusted: bool = False
    ) -> StageResult:
        """Run the stage on a batch, answering each row at its first confident exit.

        Args:
            x: ``(N, *input.shape)`` (or one sample) for the stage's first segment.
            threshold: overrides the executor's default threshold for this call.
            trusted: ``x`` is already a validated C-contiguous batch of the input spec (e.g.
                rows a dynamic batcher validated per request), so the check is skipped.

        Returns:
            The per-row answers, the pending rows and their boundary tensor.

        Raises:
            InputError: ``x`` has the wrong shape or dtype, or holds NaN/Inf.
            ConfigError: the threshold is invalid.
        """
        thr = self.threshold if threshold is None else check_threshold(threshold)
        current = x if trusted else validate_input(x, self.input_spec)
        if current.shape[0] == 1:
            return self._run_one(current, thr)
        rows = _Rows(current.shape[0])
        clock, times = time.perf_counter, rows.times
        for (name, exit_name), runner in zip(self._steps, self._runners):
            t0 = clock()
            probs, boundary = runner(current, trusted=True)
            times.append((name, (clock() - t0) * 1000.0))
            if exit_name is not None:
                answered = self._exit(exit_name, probs, rows, thr)
                if any(answered):  # only copy when some rows were answered here
                    keep = [not a for a in answered]
                    rows.active = [row for row, k in zip(rows.active, keep) if k]
                    if not rows.active:
                        break
                    boundary = boundary[np.asarray(keep)] if boundary is not None else None
            current = boundary
        answers, best = rows.finish(self._classes, self.stage)
        if not rows.active:  # the common case at batch 1: every row answered in this stage
            return StageResult(answers, _NO_ROWS, None, best)
        pending = np.asarray(rows.active, dtype=np.int64)
        return StageResult(answers, pending, current, best)

    def _run_one(self, current: np.ndarray, thr: float) -> StageResult:
        """:meth:`run` for one row: the same decisions, without per-row bookkeeping.

        A batch of one is the latency path (P2: the executor's cost over the bare invokes is a
        fixed Python cost per segment), so the loop keeps one decision tuple and one timings
        dict instead of lists per row, scores the exit on the row itself
        (:meth:`ExitScorer.top1_one`) and builds each answer once, at the end.
        """
        clock, times = time.perf_counter, {}
        top1, classes, stage = self.scorer.top1_one, self._classes, self.stage
        n_classes, early = len(classes), thr <= 1.0
        best = answer = None
        for name, exit_name, runner in self._plan:
            t0 = clock()
            probs, boundary = runner(current, trusted=True)
            times[name] = (clock() - t0) * 1000.0
            if exit_name is not None:
                if probs is None or probs.shape[1] != n_classes:
                    _bad_exit(exit_name, probs, n_classes)
                label, conf = top1(exit_name, probs, thr)
                step = len(times)
                if best is None or conf > best[1]:
                    best = (label, conf, exit_name, step)
                if (early and conf >= thr) or exit_name == FINAL_EXIT:
                    answer = best if best[3] == step else (label, conf, exit_name, step)
                    break
            current = boundary
        if answer is None:
            best_answer = None if best is None else _one_answer(best, times, classes, stage)
            return _quick_result([None], _ROW_0, current, [best_answer])
        if answer is best:
            done = _one_answer(answer, times, classes, stage)  # this exit is also the best one
            return _quick_result([done], _NO_ROWS, None, [done])
        best_answer = _one_answer(best, times, classes, stage)  # an earlier one: before times grows
        done = _one_answer(answer, times, classes, stage)
        return _quick_result([done], _NO_ROWS, None, [best_answer])

    def _exit(
        self, exit_name: str, probs: np.ndarray | None, rows: _Rows, thr: float
    ) -> list[bool]:
        """Record answers at an exit; return per active row whether it was answered here."""
        classes = self._classes
        if probs is None or probs.shape[1] != len(classes):
            _bad_exit(exit_name, probs, len(classes))
        labels, conf = self.scorer.top1(exit_name, probs, thr)
        if exit_name == FINAL_EXIT:
            answered = [True] * len(labels)
        elif thr <= 1.0:
            answered = [c >= thr for c in conf]
        else:
            answered = [False] * len(labels)
        # plain Python values, no numpy scalar per row and field; Answers are built at the end
        ran, best, answers = len(rows.times), rows.best, rows.answers
        for row, label, confidence, done in zip(rows.active, labels, conf, answered):
            decision = (label, confidence, exit_name, ran)
            previous = best[row]
            if previous is None or confidence > previous[1]:
                best[row] = decision
            if done:
                answers[row] = decision
        return answered

    def trace(self, x: np.ndarray, *, batch_size: int = 256, timing_samples: int = 5) -> Trace:
        """Run every segment of every loaded stage on every row; keep every exit's output.

        Args:
            x: input of the first loaded stage, ``(N, *input.shape)``.
            batch_size: rows per LiteRT call (bounds memory on large evaluation sets).
            timing_samples: batch-1 runs per segment for the median per-sample latency.

        Returns:
            A :class:`Trace`; ``segment_ms`` is the median of ``timing_samples`` batch-1 runs.
        """
        segments = [s for st in self.bundle.stages for s in self.bundle.segments(st)]
        current = validate_input(x, segments[0].input)
        probs: dict[str, np.ndarray] = {}
        boundary_bytes: dict[str, int] = {}
        segment_ms = self._chained_ms(segments, current[: max(1, timing_samples)])
        for seg in segments:
            runner = self.bundle.runner(seg.name)
            outs = [
                runner(current[i : i + batch_size], trusted=True)
                for i in range(0, len(current), batch_size)
            ]
            if seg.exit is not None:
                raw = np.concatenate([o[0] for o in outs]).astype(np.float32)
                probs[seg.exit] = self.scorer.calibrate(seg.exit, raw)
            if seg.boundary is not None:
                current = np.concatenate([o[1] for o in outs])
                boundary_bytes[seg.name] = int(current[0].nbytes)
            else:
                boundary_bytes[seg.name] = 0
        exits = tuple(s.exit for s in segments if s.exit is not None)
        return Trace(
            exits=exits,
            exit_stage={s.exit: s.stage for s in segments if s.exit is not None},
            exit_segment={s.exit: s.name for s in segments if s.exit is not None},
            probs=probs,
            segments=tuple(s.name for s in segments),
            segment_stage={s.name: s.stage for s in segments},
            segment_ms=segment_ms,
            boundary_bytes=boundary_bytes,
            measure=self.scorer.measure,
        )

    def _chained_ms(self, segments: list[SegmentSpec], samples: np.ndarray) -> dict[str, float]:
        """Median batch-1 milliseconds per segment, each sample run through the whole chain.

        Timing a segment on its own, call after call, keeps its weights in the CPU caches and
        under-reports what it costs inside the chain, where the other segments evict them; so
        every sample goes through all segments in order, as in serving, after one warm-up pass
        (the first call after a resize allocates tensors).
        """
        runners = [self.bundle.runner(seg.name) for seg in segments]
        times: dict[str, list[float]] = {seg.name: [] for seg in segments}
        for i in (0, *range(len(samples))):
            current = samples[i : i + 1]
            for seg, runner in zip(segments, runners):
                t0 = time.perf_counter()
                _, boundary = runner(current, trusted=True)
                times[seg.name].append((time.perf_counter() - t0) * 1000.0)
                if boundary is None:
                    break
                current = boundary
        return {name: float(np.median(ts[1:] or ts)) for name, ts in times.items()}
