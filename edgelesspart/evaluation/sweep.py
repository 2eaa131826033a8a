"""Threshold sweep: every confidence threshold from one trace, without re-running the model.

Pure numpy. A *trace* (``edgelesspart.runtime.executor.Trace``) holds every exit's probabilities
for every sample, plus per-segment host timings and boundary sizes. For a threshold ``t`` a sample
answers at the first exit (in model order) whose top-1 confidence is ``>= t``; the final
classifier answers whatever is left. ``t = 0`` therefore answers everything at the first exit and
``t > 1`` sends everything to the final classifier (confidences never exceed 1).

The first stage of the trace is the *edge*; a sample is *offloaded* when it answers in any later
stage. Latency per sample = host ms of every segment run up to the answering one, times the
device factor of its stage, plus one link transfer of the (encoded) boundary bytes at every stage
change, plus the expected cold start ``cold_start_prob x cold_start_ms`` once it is offloaded.
A stage on a device measured with ``profile-device`` uses the device's own latencies instead of a
factor (:class:`MeasuredSegment`). See ``docs/evaluation.md`` for every reported metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from edgelesspart.errors import ConfigError, InputError

PriceFn = Callable[[float], float]


class LinkLike(Protocol):
    """Anything with ``transfer_ms(nbytes)`` (``edgelesspart.profiling.links.Link`` fits)."""

    def transfer_ms(self, nbytes: int) -> float:
        """Milliseconds to send ``nbytes`` over the link, round trip included."""
        ...


@dataclass(frozen=True)
class MeasuredSegment:
    """A segment's time on a device measured with ``profile-device`` (no factor).

    Attributes:
        device_ms: the device's measured cumulative latency at the segment's end cut point minus
            that at its start (the backbone stretch, as the planner charges it).
        host_ms: the same stretch in the bundle's host profile.
        rest_factor: device / host full-model latency; the part of a traced segment beyond its
            host stretch (the exit head, the per-invoke cost) is charged at this ratio, the
            planner's ms-per-MAC estimate of an exit head on the device.
    """

    device_ms: float
    host_ms: float
    rest_factor: float

    def on_device(self, traced_host_ms: float) -> float:
        """Device ms of the segment whose traced host time is ``traced_host_ms``."""
        rest = max(0.0, float(traced_host_ms) - self.host_ms)
        return max(0.0, self.device_ms) + rest * self.rest_factor


@dataclass(frozen=True)
class LatencyModel:
    """How host timings become edge/cloud latencies.

    Attributes:
        edge_factor: multiplier of host ms on the edge device (>1 = slower than this host).
        cloud_factor: multiplier of host ms on the cloud device.
        link: the edge-cloud link; ``None`` means transfers are free (0 ms).
        codec_ratio: encoded bytes / raw bytes of a boundary tensor on the wire.
        cold_start_ms: extra latency of a cold cloud container.
        cold_start_prob: probability that an offloaded request meets a cold container.
        offload_overhead_ms: fixed software cost of one hop between stages (HTTP request,
            JSON, encode/decode, the cloud's front end), charged with every transfer; measure
            it on the deployment (``edgelesspart_offload_latency_seconds`` minus the cloud
            compute) or on loopback (benchmark P6). 0 by default: only compute and link.
        measured_segments: segment name -> :class:`MeasuredSegment` for the segments of a
            stage whose device was measured with ``profile-device``; those replace
            ``host ms x factor``.
        edge_cumulative_ms: a measured edge device's latency from the input to each cut point
            (``input`` 0, ``output`` the whole backbone), for the baselines; empty when scaled.
        cloud_cumulative_ms: the same for a measured cloud device.
    """

    edge_factor: float = 1.0
    cloud_factor: float = 1.0
    link: LinkLike | None = None
    codec_ratio: float = 1.0
    cold_start_ms: float = 0.0
    cold_start_prob: float = 0.0
    offload_overhead_ms: float = 0.0
    measured_segments: Mapping[str, MeasuredSegment] = field(default_factory=dict)
    edge_cumulative_ms: Mapping[str, float] = field(default_factory=dict)
    cloud_cumulative_ms: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("edge_factor", "cloud_factor", "codec_ratio"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"LatencyModel.{name} must be a positive number, got {value}.")
        if not 0.0 <= self.cold_start_prob <= 1.0 or self.cold_start_ms < 0:
            raise ConfigError(
                f"Cold start needs 0 <= prob <= 1 and ms >= 0, got prob={self.cold_start_prob}, "
                f"ms={self.cold_start_ms}."
            )
        if not np.isfinite(self.offload_overhead_ms) or self.offload_overhead_ms < 0:
            raise ConfigError(
                f"LatencyModel.offload_overhead_ms must be >= 0 ms, got {self.offload_overhead_ms}."
            )

    def transfer_ms(self, raw_bytes: int, *, encoded: bool = True) -> float:
        """One hop: link time for a tensor of ``raw_bytes`` (scaled by the codec ratio if
        ``encoded``) plus :attr:`offload_overhead_ms`."""
        if self.link is None:
            return float(self.offload_overhead_ms)
        nbytes = raw_bytes * self.codec_ratio if encoded else raw_bytes
        return float(self.link.transfer_ms(int(round(nbytes)))) + self.offload_overhead_ms

    def segment_ms(self, segment: str, host_ms: float, remote: bool) -> float:
        """Device ms of a traced segment: measured when its device was, else host ms x factor."""
        measured = self.measured_segments.get(segment)
        if measured is not None:
            return measured.on_device(host_ms)
        return float(host_ms) * (self.cloud_factor if remote else self.edge_factor)

    def backbone_ms(self, cut: str | None, host_ms: float, *, remote: bool) -> float:
        """Device ms from the input to ``cut`` (``output``: the whole backbone) on the edge
        (``remote=False``) or cloud device: measured when known, else ``host_ms`` x factor."""
        cumulative = self.cloud_cumulative_ms if remote else self.edge_cumulative_ms
        if cut is not None and cut in cumulative:
            return float(cumulative[cut])
        return float(host_ms) * (self.cloud_factor if remote else self.edge_factor)

    @property
    def expected_cold_ms(self) -> float:
        """Cold-start latency as its expectation over requests."""
        return self.cold_start_prob * self.cold_start_ms


@dataclass(frozen=True)
class StageMemory:
    """Memory of the two parts (from the plan's ``predicted_memory_bytes``)."""

    edge_bytes: int = 0
    cloud_bytes: int = 0


@dataclass(frozen=True)
class ExitCosts:
    """Per exit (aligned with ``trace.exits``): what it costs a sample to answer there."""

    exits: tuple[str, ...]
    latency_ms: np.ndarray
    cloud_ms: np.ndarray
    offloaded: np.ndarray


@dataclass(frozen=True)
class ThresholdResult:
    """The metrics of one threshold on one split (see ``docs/evaluation.md``)."""

    threshold: float
    accuracy: float
    exit_mix: dict[str, float]
    offload_rate: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    edge_memory_bytes: int
    cloud_memory_bytes: int
    expected_memory_bytes: float
    cloud_cost_per_million: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def _stage_order(trace: Any) -> list[str]:
    order: list[str] = []
    for seg in trace.segments:
        stage = trace.segment_stage[seg]
        if stage not in order:
            order.append(stage)
    return order


def exit_costs(trace: Any, model: LatencyModel) -> ExitCosts:
    """Latency, billed cloud ms and offload flag of answering at each exit of ``trace``."""
    if not trace.segments:
        raise InputError("The trace has no segments; trace a bundle with at least one segment.")
    edge_stage = trace.segment_stage[trace.segments[0]]
    elapsed, cloud, stage = 0.0, 0.0, edge_stage
    at_segment: dict[str, tuple[float, float, bool]] = {}
    previous: str | None = None
    for seg in trace.segments:
        seg_stage = trace.segment_stage[seg]
        if seg_stage != stage and previous is not None:
            elapsed += model.transfer_ms(int(trace.boundary_bytes.get(previous, 0)))
            if stage == edge_stage:
                elapsed += model.expected_cold_ms
            stage = seg_stage
        remote = seg_stage != edge_stage
        ms = model.segment_ms(seg, float(trace.segment_ms[seg]), remote)
        elapsed += ms
        cloud += ms if remote else 0.0
        at_segment[seg] = (elapsed, cloud, remote)
        previous = seg
    rows = [at_segment[trace.exit_segment[name]] for name in trace.exits]
    return ExitCosts(
        exits=tuple(trace.exits),
        latency_ms=np.array([r[0] for r in rows], dtype=np.float64),
        cloud_ms=np.array([r[1] for r in rows], dtype=np.float64),
        offloaded=np.array([r[2] for r in rows], dtype=bool),
    )


def confidences(trace: Any, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and top-1 prediction per sample and exit, both ``(N, E)``.

    The confidence is scored like the runtime executor scores it: with the trace's ``measure``
    (``max-softmax`` or ``entropy``, see ``edgelesspart.runtime.confidence``) on its
    probabilities, which the executor has already temperature-scaled with the manifest's
    ``serving.temperatures``.
    """
    from edgelesspart.runtime.confidence import MAX_SOFTMAX, score

    mats = [np.asarray(trace.probs[name]) for name in trace.exits]
    counts = {m.shape[0] for m in mats}
    if len(counts) != 1 or any(m.ndim != 2 for m in mats):
        shapes = {name: np.shape(trace.probs[name]) for name in trace.exits}
        raise InputError(f"Every exit needs (N, C) probabilities for the same N; got {shapes}.")
    if labels is not None and len(labels) != mats[0].shape[0]:
        raise InputError(
            f"Got {len(labels)} labels for a trace of {mats[0].shape[0]} samples; trace the same "
            "split the labels come from."
        )
    measure = getattr(trace, "measure", MAX_SOFTMAX)
    conf = np.stack([score(m, measure) for m in mats], axis=1)
    pred = np.stack([m.argmax(axis=1) for m in mats], axis=1)
    return conf, pred


def answering_exit(conf: np.ndarray, threshold: float) -> np.ndarray:
    """Index of the exit answering each sample: the first with confidence >= threshold.

    Like the runtime executor, a threshold above 1 never lets an early exit answer, even if
    float rounding gives a confidence a hair above 1.
    """
    mask = (conf >= threshold) & (threshold <= 1.0)
    mask[:, -1] = True
    return mask.argmax(axis=1)


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """Validate thresholds (finite, >= 0; values > 1 mean "never exit early")."""
    values = tuple(float(t) for t in thresholds)
    if not values:
        raise ConfigError("Give at least one threshold, e.g. --thresholds 0.3:0.9:0.05.")
    bad = [t for t in values if not np.isfinite(t) or t < 0]
    if bad:
        raise ConfigError(
            f"Thresholds must be finite and >= 0 (> 1 means never exit early); got {bad}."
        )
    return values


def sweep(
    trace: Any,
    labels: np.ndarray,
    thresholds: Sequence[float],
    *,
    latency_model: LatencyModel,
    price_fn: PriceFn,
    memory: StageMemory | None = None,
) -> list[ThresholdResult]:
    """Evaluate every threshold from one trace.

    Args:
        trace: an executor ``Trace`` (every exit's probabilities, segment timings, boundaries).
        labels: integer labels, one per traced sample.
        thresholds: confidence thresholds to evaluate.
        latency_model: device factors, link, codec ratio and cold start.
        price_fn: cost of one cloud invocation given its cloud compute ms.
        memory: edge/cloud memory of the plan (zeros when unknown).

    Returns:
        One :class:`ThresholdResult` per threshold, in the given order.
    """
    values = check_thresholds(thresholds)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    conf, pred = confidences(trace, labels)
    costs = exit_costs(trace, latency_model)
    prices = np.array(
        [price_fn(ms) if off else 0.0 for ms, off in zip(costs.cloud_ms, costs.offloaded)]
    )
    memory = memory or StageMemory()
    return [_one_threshold(t, conf, pred, labels, costs, prices, memory) for t in values]


def _one_threshold(
    threshold: float,
    conf: np.ndarray,
    pred: np.ndarray,
    labels: np.ndarray,
    costs: ExitCosts,
    prices: np.ndarray,
    memory: StageMemory,
) -> ThresholdResult:
    n = len(labels)
    idx = answering_exit(conf, threshold)
    latency = costs.latency_ms[idx]
    counts = np.bincount(idx, minlength=len(costs.exits))
    offload = float(costs.offloaded[idx].mean())
    return ThresholdResult(
        threshold=threshold,
        accuracy=float((pred[np.arange(n), idx] == labels).mean()),
        exit_mix={name: float(c / n) for name, c in zip(costs.exits, counts)},
        offload_rate=offload,
        latency_mean_ms=float(latency.mean()),
        latency_p50_ms=float(np.percentile(latency, 50, method="inverted_cdf")),
        latency_p95_ms=float(np.percentile(latency, 95, method="inverted_cdf")),
        edge_memory_bytes=int(memory.edge_bytes),
        cloud_memory_bytes=int(memory.cloud_bytes),
        expected_memory_bytes=float(memory.edge_bytes + offload * memory.cloud_bytes),
        cloud_cost_per_million=float(prices[idx].mean() * 1_000_000),
        samples=n,
    )


def exit_accuracy(trace: Any, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of each exit on its own (as if every sample answered there)."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    _, pred = confidences(trace, labels)
    return {name: float((pred[:, i] == labels).mean()) for i, name in enumerate(trace.exits)}


def parse_thresholds(text: str) -> tuple[float, ...]:
    """Parse ``start:stop:step`` (stop included) or a comma list ``0.5,0.8``."""
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError("need step > 0 and stop >= start")
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise ConfigError(
            f"Bad --thresholds {text!r} ({exc}); expected start:stop:step such as 0.3:0.9:0.05, "
            "or a comma list such as 0.5,0.8."
        ) from exc
    return check_thresholds(values)


def concat_traces(traces: Sequence[Any]) -> Any:
    """Join traces of consecutive batches into one (probabilities concatenated in order).

    Segment timings become the median of the batches' per-sample medians; structure fields
    (exits, segments, stages, boundary sizes) come from the first trace.
    """
    if not traces:
        raise InputError("No traces to join; trace at least one batch.")
    first = traces[0]
    if len(traces) == 1:
        return first
    probs = {e: np.concatenate([np.asarray(t.probs[e]) for t in traces]) for e in first.exits}
    seg_ms = {s: float(np.median([t.segment_ms[s] for t in traces])) for s in first.segments}
    return replace(first, probs=probs, segment_ms=seg_ms)
