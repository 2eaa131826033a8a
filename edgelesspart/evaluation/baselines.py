"""The three reference deployments every threshold sweep is compared with.

* ``edge-only``: the whole backbone on the edge device, no exits, nothing offloaded.
* ``cloud-only``: the raw input is sent over the link and the whole backbone runs in the cloud.
* ``split-no-exits``: the plan's split without early exits: the edge part, the boundary tensor
  over the link (encoded with the bundle's codec), the cloud part, always offloaded.

All three answer with the final classifier, so their accuracy is the full model's. Host timings
come from the bundle's profile when it has one (backbone only); otherwise from the trace's
segment timings, which also include the exit heads (a slight over-estimate, recorded in
:attr:`Backbone.source`). A device measured with ``profile-device`` uses its own latency at the
split and at the output (``LatencyModel.backbone_ms``) instead of host ms x factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgelesspart.errors import InputError
from edgelesspart.evaluation.sweep import LatencyModel, PriceFn, StageMemory

BASELINES = ("edge-only", "cloud-only", "split-no-exits")


@dataclass(frozen=True)
class Backbone:
    """Host timings and sizes of the backbone without exits.

    Attributes:
        full_ms: host ms of the whole model (batch 1).
        split_ms: host ms of the edge part (input up to the split).
        input_bytes: raw bytes of one input sample.
        boundary_bytes: raw bytes of the split tensor for one sample.
        full_memory_bytes: memory of the whole model on one device.
        source: ``profile`` or ``trace`` (where the timings came from).
        split: the split's cut point name (looked up in a measured device's latencies), or
            ``None`` when unknown.
    """

    full_ms: float
    split_ms: float
    input_bytes: int
    boundary_bytes: int
    full_memory_bytes: int
    source: str = "trace"
    split: str | None = None


@dataclass(frozen=True)
class BaselineResult:
    """Metrics of one baseline deployment (same definitions as the sweep)."""

    name: str
    accuracy: float
    offload_rate: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    edge_memory_bytes: int
    cloud_memory_bytes: int
    cloud_cost_per_million: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def backbone_from_trace(trace: Any, *, input_bytes: int, memory: StageMemory) -> Backbone:
    """Estimate the backbone from a trace: all segments' ms, the first stage's ms, its boundary."""
    edge_stage = trace.segment_stage[trace.segments[0]]
    edge_segments = [s for s in trace.segments if trace.segment_stage[s] == edge_stage]
    return Backbone(
        full_ms=float(sum(trace.segment_ms[s] for s in trace.segments)),
        split_ms=float(sum(trace.segment_ms[s] for s in edge_segments)),
        input_bytes=int(input_bytes),
        boundary_bytes=int(trace.boundary_bytes.get(edge_segments[-1], 0)),
        full_memory_bytes=int(memory.edge_bytes + memory.cloud_bytes),
        source="trace",
    )


def _row(name: str, accuracy: float, latency: float, offload: float, edge: int, cloud: int,
         cost: float) -> BaselineResult:
    return BaselineResult(
        name=name,
        accuracy=accuracy,
        offload_rate=offload,
        latency_mean_ms=latency,
        latency_p50_ms=latency,
        latency_p95_ms=latency,
        edge_memory_bytes=int(edge),
        cloud_memory_bytes=int(cloud),
        cloud_cost_per_million=cost * 1_000_000,
    )


def baselines(
    backbone: Backbone,
    final_accuracy: float,
    *,
    latency_model: LatencyModel,
    price_fn: PriceFn,
    memory: StageMemory,
) -> dict[str, BaselineResult]:
    """Compute the three baselines.

    Args:
        backbone: host timings and sizes of the model without exits.
        final_accuracy: accuracy of the final classifier (the full model) on the split.
        latency_model: the same device factors, link and cold start as the sweep.
        price_fn: the same cloud pricing as the sweep.
        memory: the plan's edge/cloud memory (for the split baseline).

    Returns:
        ``{"edge-only": ..., "cloud-only": ..., "split-no-exits": ...}``.
    """
    if backbone.split_ms > backbone.full_ms + 1e-9 or not np.isfinite(backbone.full_ms):
        raise InputError(
            f"The edge part ({backbone.split_ms} ms) cannot take longer than the whole model "
            f"({backbone.full_ms} ms); check the profile in the bundle."
        )
    lm = latency_model
    cut = backbone.split
    cloud_full = lm.backbone_ms("output", backbone.full_ms, remote=True)
    cloud_rest = max(0.0, cloud_full - lm.backbone_ms(cut, backbone.split_ms, remote=True))
    cold = lm.expected_cold_ms
    edge_only = lm.backbone_ms("output", backbone.full_ms, remote=False)
    cloud_only = lm.transfer_ms(backbone.input_bytes, encoded=False) + cloud_full + cold
    split = (
        lm.backbone_ms(cut, backbone.split_ms, remote=False)
        + lm.transfer_ms(backbone.boundary_bytes)
        + cloud_rest
        + cold
    )
    full_mem = backbone.full_memory_bytes
    return {
        "edge-only": _row("edge-only", final_accuracy, edge_only, 0.0, full_mem, 0, 0.0),
        "cloud-only": _row(
            "cloud-only", final_accuracy, cloud_only, 1.0, 0, full_mem, price_fn(cloud_full)
        ),
        "split-no-exits": _row(
            "split-no-exits", final_accuracy, split, 1.0, memory.edge_bytes, memory.cloud_bytes,
            price_fn(cloud_rest),
        ),
    }
