"""A chain of N edge nodes with a serverless cloud tail: ``build --nodes N --cloud-device D``.

The edge chain covers the model up to a hand-off cut point ``h``; its last node encodes the
boundary at ``h`` and sends the rows no edge exit answered to the cloud function, which runs the
rest. Every candidate ``(h, codec)`` is costed as the two-part build costs its split:

* **6 MB rule** -- the largest measured payload at ``h`` with the codec, as the cloud's wire
  carries it (base64 JSON on Lambda), must fit the provider's limit
  (:mod:`edgelesspart.planning.payload`); candidates that do not are refused, with the reason;
* **latency** of one offloaded request = the edge stages' times + the link + the offload
  overhead + the cloud part's time on the cloud device + the expected cold start
  (``cold_start_prob x cold_start_ms``);
* **price** of one offloaded request = one invocation of the cloud part's duration at the cloud
  tier's memory (the bundled price tables), the expected cold start's billed INIT included;
* the **edge bottleneck** -- the slowest edge stage, which sets the chain's throughput -- found
  exactly by :func:`~edgelesspart.planning.chain.min_bottleneck` for the chain ending at ``h``.

The objective (``expected-latency``, the default, or ``expected-cost``) picks the hand-off; the
edge bottleneck breaks ties. The plan assumes every request reaches the cloud (the edge exits
are placed and trained after the split); ``edgelesspart evaluate`` reports the measured share.
Pure functions, no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from edgelesspart.errors import PlanError
from edgelesspart.planning.chain import ChainCosts, min_bottleneck, stage_memory
from edgelesspart.planning.payload import largest_bytes, payload_limit, wire_bytes
from edgelesspart.profiling.devices import DeviceProfile
from edgelesspart.profiling.profile import ModelProfile
from edgelesspart.runtime.plan import MODEL_OUTPUT, Plan, Stage

#: Default expected cold start of a LiteRT tail (REFERENCE.md §2.4: platform 0.3-1 s + LiteRT
#: import ~0.1 s + model load 0.5-2 s for a small model), and the share of offloads meeting one.
DEFAULT_COLD_START_MS = 1000.0
DEFAULT_COLD_START_PROB = 0.01
#: Fixed per-offload overhead (HTTPS / function front end), as the two-part objective's default.
DEFAULT_OFFLOAD_OVERHEAD_MS = 20.0
CLOUD_STAGE = "cloud"


def _tail_ms(cloud: ModelProfile, costs: ChainCosts, pos: int, codec: str) -> float:
    """The cloud part's time: decode the boundary, run the layers after ``pos``."""
    before = cloud.cut_points[pos].latency_ms
    factor = float(cloud.extra.get("latency_factor", 1.0))
    measured = (costs.codec_ms or {}).get(cloud.cut_points[pos].name, {}).get(codec)
    decode = measured[1] * factor if measured is not None else 0.0
    return float(cloud.total.latency_ms - before) + decode


def plan_chain_with_cloud(
    costs: ChainCosts,
    cloud: ModelProfile,
    cloud_device: DeviceProfile,
    *,
    objective: str = "expected-latency",
    cost_fn: Callable[[float], float] | None = None,
    offload_overhead_ms: float = DEFAULT_OFFLOAD_OVERHEAD_MS,
    cold_start_ms: float = DEFAULT_COLD_START_MS,
    cold_start_prob: float = DEFAULT_COLD_START_PROB,
    stage_prefix: str = "stage",
) -> Plan:
    """The N-edge-stage + cloud plan: hand-off, codecs, and its latency, price and limits.

    Args:
        costs: the edge nodes' profiles, the link and the candidate codecs (the same link
            carries node-to-node frames and the offload).
        cloud: the model's profile scaled to the cloud device (same cut points).
        cloud_device: the cloud tier (its provider sets the payload limit and the prices).
        objective: ``expected-latency`` or ``expected-cost`` (per offloaded request).
        cost_fn: cloud ms -> price of one invocation (default: the tier's price table).
        offload_overhead_ms / cold_start_ms / cold_start_prob: the offload's fixed costs.

    Raises:
        PlanError: an unknown objective, or no hand-off whose payload fits the cloud's limit.
    """
    from edgelesspart.planning.objective import default_cost_fn

    if objective not in ("expected-latency", "expected-cost"):
        raise PlanError(
            f"Unknown objective {objective!r} for a chain with a cloud tail; use "
            "expected-latency or expected-cost."
        )
    cost_fn = cost_fn or default_cost_fn(cloud_device)
    n = len(costs.profiles)
    limit = payload_limit(cloud_device)
    candidates: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for pos in range(n - 1, costs.last):
        cp = costs.profiles[0].cut_points[pos]
        for codec in costs.codecs:
            nbytes = wire_bytes(largest_bytes(cp, codec), cloud_device)
            if limit is not None and nbytes > limit:
                refused.append({"handoff": cp.name, "codec": codec, "wire_bytes": nbytes,
                                "limit": limit})  # fmt: skip
                continue
            bottleneck, cuts = min_bottleneck(costs, end=pos, tail_codecs=(codec,))
            stages = chain_stage_costs_to(costs, cuts)
            edge_ms = sum(s.cpu_ms for s in stages)  # transfers: inner links + the offload
            link_ms = sum(s.transfer_ms for s in stages)
            tail_ms = _tail_ms(cloud, costs, pos, codec)
            cold = cold_start_prob * cold_start_ms
            latency = edge_ms + link_ms + offload_overhead_ms + tail_ms + cold
            price = cost_fn(tail_ms) + cold_start_prob * (cost_fn(cold_start_ms) - cost_fn(0.0))
            candidates.append({
                "handoff": cp.name, "position": pos, "codec": codec, "cuts": cuts,
                "stages": stages, "edge_bottleneck_ms": bottleneck, "edge_ms": edge_ms,
                "link_ms": link_ms, "cloud_ms": tail_ms, "latency_ms": latency,
                "cost_per_request": price, "wire_bytes": nbytes,
            })  # fmt: skip
    if not candidates:
        worst = min(refused, key=lambda r: r["wire_bytes"]) if refused else None
        raise PlanError(
            f"No hand-off to {cloud_device.name} fits its payload limit of {limit} bytes"
            + (f" (the smallest is {worst['wire_bytes']} bytes at {worst['handoff']} with "
               f"{worst['codec']})" if worst else "")
            + "; use a compressing codec (--codec auto), fewer nodes, or an HTTP cloud."
        )  # fmt: skip
    key = "latency_ms" if objective == "expected-latency" else "cost_per_request"
    best = min(candidates, key=lambda c: (c[key], c["edge_bottleneck_ms"], c["position"]))
    return _plan(costs, cloud, cloud_device, best, candidates, refused, objective, stage_prefix,
                 cold_start_ms=cold_start_ms, cold_start_prob=cold_start_prob,
                 offload_overhead_ms=offload_overhead_ms)  # fmt: skip


def chain_stage_costs_to(costs: ChainCosts, cuts: Any) -> tuple[Any, ...]:
    """Stage costs of an edge chain whose last ``(cut, codec)`` is the hand-off to the cloud."""
    *inner, (handoff, codec) = cuts
    bounds = [(-1, None), *inner, (handoff, codec)]
    return tuple(
        costs.stage(k, bounds[k][0], bounds[k][1], bounds[k + 1][0], bounds[k + 1][1])
        for k in range(len(bounds) - 1)
    )


def _plan(
    costs: ChainCosts,
    cloud: ModelProfile,
    cloud_device: DeviceProfile,
    best: Mapping[str, Any],
    candidates: list[dict[str, Any]],
    refused: list[dict[str, Any]],
    objective: str,
    prefix: str,
    **assumptions: float,
) -> Plan:
    stages = []
    for k, s in enumerate(best["stages"]):
        stages.append(
            Stage(
                name=f"{prefix}{k}", device=s.device, start=s.start, end=s.end,
                predicted_latency_ms=s.total_ms,
                predicted_memory_bytes=stage_memory(costs.profiles[k], s.start, s.end),
                options={"node": k, "tier": "edge", "codec_out": s.codec_out,
                         "cost": s.to_dict()},
            )
        )  # fmt: skip
    handoff = best["handoff"]
    stages.append(
        Stage(
            name=CLOUD_STAGE, device=cloud_device.name, start=handoff, end=MODEL_OUTPUT,
            predicted_latency_ms=best["cloud_ms"],
            predicted_memory_bytes=stage_memory(cloud, handoff, MODEL_OUTPUT),
            options={"tier": "cloud"},
        )
    )  # fmt: skip
    tail = {
        key: best[key]
        for key in ("handoff", "codec", "wire_bytes", "edge_bottleneck_ms", "edge_ms", "link_ms",
                    "cloud_ms", "latency_ms", "cost_per_request")
    }  # fmt: skip
    tail.update(
        cost_per_million=best["cost_per_request"] * 1e6,
        payload_limit=payload_limit(cloud_device),
        provider=cloud_device.provider,
        memory_mb=cloud_device.memory_mb,
        objective=objective,
        offload_share_assumed=1.0,
        **assumptions,
        candidates=[{k: c[k] for k in ("handoff", "codec", "edge_bottleneck_ms", "latency_ms",
                                      "cost_per_request", "wire_bytes")}
                    for c in candidates],
        refused=refused,
    )  # fmt: skip
    pace = best["edge_bottleneck_ms"]
    n = len(costs.profiles)
    # one edge node running the whole model, as plan_chain compares (no cloud)
    single = costs.profiles[0].total.latency_ms + costs.transfer(costs.result()[0])
    parameters = {
        "n_stages": n + 1,
        "n_edge_stages": n,
        "devices": [p.device for p in costs.profiles] + [cloud_device.name],
        "link": None if costs.link is None else costs.link.to_dict(),
        "codecs": list(costs.codecs),
        "link_codecs": [c for _, c in best["cuts"]],
        "bottleneck_ms": pace,
        "throughput_per_s": 1000.0 / pace if pace > 0 else math.inf,
        "single_node_ms": single,
        "predicted_speedup_vs_one_node": single / pace if pace > 0 else math.inf,
        "codec_times": "measured" if costs.codec_ms else "estimated (ESTIMATED_CODEC_MBPS)",
        "cloud_tail": tail,
    }
    return Plan(
        constraint="pipeline",
        placement="none",
        stages=tuple(stages),
        cut_points=tuple(cp.name for cp in costs.profiles[0].cut_points[:-1]),
        boundary_bytes=tuple(
            costs.profiles[0].cut_points[p].boundary_bytes for p, _ in best["cuts"]
        ),  # fmt: skip
        parameters=parameters,
        rationale=(
            f"{n} edge stages hand off at {handoff} ({best['codec']}, {best['wire_bytes']} "
            f"bytes on the wire) to {cloud_device.name}: {best['latency_ms']:.4g} ms and "
            f"${best['cost_per_request'] * 1e6:.3g} per 1M offloaded requests ({objective}); the "
            f"slowest edge stage takes {pace:.4g} ms; {len(refused)} hand-off(s) over the "
            "payload limit refused."
        ),
    )
