"""The planner: where to split a model between edge and cloud, and where to put its early exits.

Pure functions over :class:`~edgelesspart.profiling.profile.ModelProfile` data (no TensorFlow), all
deterministic. The exact rules, the Pareto derivation and worked examples are in
``docs/planner.md``; in short:

* **latency rule** (:func:`split_by_latency`): the deepest internal cut point whose cumulative
  edge latency is <= the full model's latency on the cloud device;
* **memory rule** (:func:`split_by_memory`): the deepest internal cut point whose cumulative
  memory is <= ``fraction`` x the full model's memory;
* **exits** (:func:`place_exits`): at most three per part, at the ``k/(n+1)`` quantiles of a
  uniform (``linear``) or truncated 80/20 Pareto (``pareto``) distribution over the part's
  relative depth, snapped to distinct cut points;
* **objective mode** (:func:`plan_objective`): the split (and, with ``search="exhaustive"``, the
  exit subsets) minimising expected latency or expected cloud cost per request under per-exit
  exit rates; :func:`brute_force_optimum` enumerates every combination for comparison.

An *internal* cut point is any profiled cut point except the last entry (``"output"``, the whole
model). Splits and exits only sit at internal cut points. Ties are broken by model order: the
shallower cut point wins. Exit placement lives in :mod:`edgelesspart.planning.placement` and the
objective arithmetic (exit rates, expected latency/cost, the exact search) in
:mod:`edgelesspart.planning.objective`; this module re-exports what a caller needs.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from edgelesspart.errors import PlanError
from edgelesspart.planning import objective as _obj
from edgelesspart.planning.bottleneck import Crossing
from edgelesspart.planning.objective import (
    CostFn,
    LinkLike,
    Objective,
    Optimum,
    default_exit_rates,
    expected_cost,
    expected_latency,
    simple_cost_fn,
)
from edgelesspart.planning.payload import (
    AUTO,
    BoundaryPayload,
    boundary_payload,
    check_plan_codec,
    payload_limit,
    payload_parameters,
    split_payloads,
    wire_bytes,
)
from edgelesspart.planning.placement import (
    MAX_EXITS_PER_PART,
    PLACEMENTS,
    check_choice,
    check_pair,
    exit_targets,
    exits_pair,
    internal_cut_points,
    place_edge_exits,
    place_exits,
)
from edgelesspart.profiling.devices import DeviceProfile
from edgelesspart.profiling.profile import ModelProfile
from edgelesspart.runtime.plan import MODEL_INPUT, MODEL_OUTPUT, Plan, Stage

CONSTRAINTS = ("latency", "memory")
OBJECTIVES = _obj.OBJECTIVES
SEARCHES = ("placement", "exhaustive")

__all__ = [
    "CONSTRAINTS",
    "OBJECTIVES",
    "PLACEMENTS",
    "Optimum",
    "check_device_memory",
    "exits_pair",
    "brute_force_optimum",
    "default_exit_rates",
    "exit_targets",
    "expected_cost",
    "expected_latency",
    "place_edge_exits",
    "place_exits",
    "plan_objective",
    "plan_pipeline",
    "plan_split",
    "simple_cost_fn",
    "split_by_latency",
    "split_by_memory",
]


# --------------------------------------------------------------------------- checks and lookups


def _mb(nbytes: float) -> str:
    """Human-readable bytes (B, KiB or MiB)."""
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.3g} MiB"
    if nbytes >= 2**10:
        return f"{nbytes / 2**10:.3g} KiB"
    return f"{nbytes:.0f} B"


def check_device_memory(edge: ModelProfile, split: str, device: DeviceProfile | None) -> None:
    """Raise :class:`PlanError` when the edge prefix up to ``split`` exceeds the device budget."""
    if device is None:
        return
    need = edge.at(split).memory_bytes
    if need <= device.memory_bytes:
        return
    fitting = [cp for cp in internal_cut_points(edge) if cp.memory_bytes <= device.memory_bytes]
    hint = (
        f"the deepest cut point that fits is {fitting[-1].name!r} ({_mb(fitting[-1].memory_bytes)}"
        f", memory fraction {fitting[-1].memory_bytes / edge.total.memory_bytes:.2f})"
        if fitting
        else "no cut point fits; choose an edge device with more memory"
    )
    raise PlanError(
        f"Splitting at {split!r} needs {_mb(need)} on the edge but {device.name!r} has a budget "
        f"of {_mb(device.memory_bytes)}; {hint}."
    )


# --------------------------------------------------------------------------- split rules


def split_by_latency(edge: ModelProfile, cloud: ModelProfile) -> str:
    """The paper's latency rule: the edge runs as long as the complete network in the cloud.

    Returns the deepest internal cut point whose cumulative latency on the edge device is <= the
    full model's latency on the cloud device (``cloud.total.latency_ms``). When even the whole
    model on the edge fits that budget, the last internal cut point is returned (one split per
    network is kept, so the cloud still runs the tail); ``"output"`` is never returned.

    Raises:
        PlanError: no internal cut point fits (the message gives both latencies).
    """
    check_pair(edge, cloud)
    budget = cloud.total.latency_ms
    fitting = [cp for cp in internal_cut_points(edge) if cp.latency_ms <= budget]
    if not fitting:
        first = internal_cut_points(edge)[0]
        raise PlanError(
            f"No split satisfies the latency rule: the first cut point {first.name!r} already "
            f"takes {first.latency_ms:.4g} ms on {edge.device!r}, more than the full model's "
            f"{budget:.4g} ms on {cloud.device!r}. Use the memory constraint, a faster edge "
            "device or a slower cloud tier."
        )
    return fitting[-1].name


def split_by_memory(
    edge: ModelProfile, fraction: float = 0.7, device: DeviceProfile | None = None
) -> str:
    """The paper's memory rule: the user's fraction of the model's memory runs on the edge.

    Returns the deepest internal cut point whose cumulative ``memory_bytes`` is <= ``fraction``
    x the full model's memory. With ``device``, a split whose prefix exceeds
    ``device.memory_bytes`` is refused (the user's fraction is not silently lowered).

    Raises:
        PlanError: ``fraction`` not in (0, 1), no cut point within the fraction, or the chosen
            prefix does not fit the device (the message names the deepest one that does).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise PlanError(f"memory_fraction must be a number in (0, 1), got {fraction!r}.")
    if not 0.0 < fraction < 1.0:
        raise PlanError(
            f"memory_fraction must be in (0, 1) (exclusive), got {fraction}; e.g. 0.7 runs the "
            "first 70% of the model's memory on the edge."
        )
    if not internal_cut_points(edge):
        check_pair(edge, edge)
    total = edge.total.memory_bytes
    budget = fraction * total
    fitting = [cp for cp in internal_cut_points(edge) if cp.memory_bytes <= budget]
    if not fitting:
        first = internal_cut_points(edge)[0]
        raise PlanError(
            f"No split satisfies the memory rule: the first cut point {first.name!r} already "
            f"needs {_mb(first.memory_bytes)}, more than {fraction:g} x {_mb(total)} = "
            f"{_mb(budget)}. Raise memory_fraction to at least "
            f"{first.memory_bytes / total:.3f}."
        )
    check_device_memory(edge, fitting[-1].name, device)
    return fitting[-1].name


# --------------------------------------------------------------------------- plans


def stage_memory(profile: ModelProfile, start: str, end: str) -> int:
    """Predicted memory of the layers after ``start`` up to ``end``.

    From the input it is the profiled prefix memory. Otherwise the profile has no suffix
    measurement, so an upper bound is used: ``memory(end) - weight_bytes(start)`` (the
    weights after ``start`` plus at most the prefix's peak of live activations).
    """
    end_cp = profile.at(end) if end != MODEL_OUTPUT else profile.total
    if start == MODEL_INPUT:
        return end_cp.memory_bytes
    return max(0, end_cp.memory_bytes - profile.at(start).weight_bytes)


def two_stage_plan(
    edge: ModelProfile,
    cloud: ModelProfile,
    split: str,
    exits: tuple[tuple[str, ...], tuple[str, ...]],
    *,
    constraint: str,
    placement: str,
    parameters: dict[str, Any],
    rationale: str,
    devices: tuple[DeviceProfile | None, DeviceProfile | None] = (None, None),
) -> Plan:
    """Build the ``edge`` + ``cloud`` :class:`Plan` for ``split`` with its predictions.

    Edge stage: prefix latency and memory on the edge profile. Cloud stage: ``cloud.total -
    cloud.at(split)`` latency and the :func:`stage_memory` bound on the cloud profile.
    """
    edge_name = devices[0].name if devices[0] else edge.device
    cloud_name = devices[1].name if devices[1] else cloud.device
    at_split = edge.at(split)
    stages = (
        Stage(
            name="edge",
            device=edge_name,
            start=MODEL_INPUT,
            end=split,
            exits=exits[0],
            predicted_latency_ms=float(at_split.latency_ms),
            predicted_memory_bytes=at_split.memory_bytes,
        ),
        Stage(
            name="cloud",
            device=cloud_name,
            start=split,
            end=MODEL_OUTPUT,
            exits=exits[1],
            predicted_latency_ms=float(cloud.total.latency_ms - cloud.at(split).latency_ms),
            predicted_memory_bytes=stage_memory(cloud, split, MODEL_OUTPUT),
        ),
    )
    return Plan(
        constraint=constraint,
        placement=placement,
        stages=stages,
        cut_points=tuple(cp.name for cp in internal_cut_points(edge)),
        boundary_bytes=(at_split.boundary_bytes,),
        parameters={"edge_device": edge_name, "cloud_device": cloud_name, **parameters},
        rationale=rationale,
    )


def _split_rationale(
    edge: ModelProfile, cloud: ModelProfile, split: str, constraint: str, fraction: float
) -> str:
    cp = edge.at(split)
    if constraint == "latency":
        return (
            f"Split after {split!r}: the edge ({edge.device}) runs up to it in "
            f"{cp.latency_ms:.4g} ms, the deepest cut point within the full model's "
            f"{cloud.total.latency_ms:.4g} ms on the cloud ({cloud.device})."
        )
    return (
        f"Split after {split!r}: the edge prefix needs {_mb(cp.memory_bytes)}, the deepest cut "
        f"point within {fraction:g} x the full model's {_mb(edge.total.memory_bytes)}."
    )


def plan_split(
    edge_profile: ModelProfile,
    cloud_profile: ModelProfile,
    *,
    constraint: str,
    memory_fraction: float = 0.7,
    placement: str = "linear",
    exits_per_part: int | Sequence[int] = (2, 2),
    edge_device: DeviceProfile | None = None,
    cloud_device: DeviceProfile | None = None,
    depth: str = "latency",
    codec: str = AUTO,
    crossings: Mapping[str, Crossing] | None = None,
    link: LinkLike | None = None,
    split_exit: bool = False,
) -> Plan:
    """Split by the paper's latency or memory rule and place the exits inside each part.

    Args:
        edge_profile: the model profiled (or scaled) for the edge device.
        cloud_profile: the same model for the cloud device.
        constraint: ``"latency"`` (:func:`split_by_latency`) or ``"memory"``
            (:func:`split_by_memory`).
        memory_fraction: the edge's share of the model's memory (memory rule only).
        placement: ``"linear"`` or ``"pareto"`` (:func:`place_exits`).
        exits_per_part: exits per part, one int or ``(edge, cloud)``, each in 0..3.
        edge_device: when given, a split that does not fit its memory budget is refused.
        cloud_device: named in the plan; a Lambda device (``provider == "lambda"``) refuses a
            split whose boundary cannot fit its synchronous payload limit (see
            :mod:`edgelesspart.planning.payload`).
        depth: ``"latency"`` or ``"index"`` relative depth for exit placement.
        codec: the boundary codec (a name, or ``"auto"``); recorded with its encoded bytes in
            ``parameters``.
        crossings: per split, a measured learned bottleneck (:class:`Crossing`, device ms). At
            the chosen split it replaces the codec when its crossing on ``link`` is faster,
            it fits the payload limit and, under the latency rule, the edge part plus its
            encoder still fits the rule's budget (a split the codec cannot carry within the
            Lambda limit takes it whenever it fits).
        link: the link the crossing is compared on (no link: the bottleneck is never used).
        split_exit: the edge part's last exit sits at the split
            (:func:`~edgelesspart.planning.placement.place_edge_exits`); ``False`` keeps the
            paper's ``k/(n+1)`` placement in both parts.

    Returns:
        A two-stage :class:`Plan` (``edge``, ``cloud``) with predicted latency and memory.

    Raises:
        PlanError: no split satisfies the rule, the edge memory budget or the payload limit.
    """
    check_choice(constraint, CONSTRAINTS, "constraint")
    check_pair(edge_profile, cloud_profile)
    n_edge, n_cloud = exits_pair(exits_per_part)
    if constraint == "latency":
        split = split_by_latency(edge_profile, cloud_profile)
    else:
        split = split_by_memory(edge_profile, memory_fraction)
    check_device_memory(edge_profile, split, edge_device)
    crossing = (crossings or {}).get(split)
    budget = cloud_profile.total.latency_ms if constraint == "latency" else None
    payload, chosen = _split_crossing(
        edge_profile, split, codec, cloud_device, crossing, link, budget
    )
    exits = (
        place_edge_exits(edge_profile, split, n_edge, placement, depth=depth, at_split=split_exit),
        place_exits(cloud_profile, split, MODEL_OUTPUT, n_cloud, placement, depth=depth),
    )
    parameters: dict[str, Any] = {
        "exits_per_part": [n_edge, n_cloud],
        **({"split_exit": True} if split_exit else {}),
        "depth": depth,
        **payload_parameters(payload, codec, cloud_device),
        **_crossing_parameters(chosen, crossing),
    }
    if constraint == "memory":
        parameters["memory_fraction"] = memory_fraction
        parameters["budget_bytes"] = memory_fraction * edge_profile.total.memory_bytes
    else:
        parameters["budget_ms"] = cloud_profile.total.latency_ms
    return two_stage_plan(
        edge_profile,
        cloud_profile,
        split,
        exits,
        constraint=constraint,
        placement=placement,
        parameters=parameters,
        rationale=_split_rationale(edge_profile, cloud_profile, split, constraint, memory_fraction),
        devices=(edge_device, cloud_device),
    )


def crossing_payload(cut_point: str, crossing: Crossing) -> BoundaryPayload:
    """A bottleneck crossing as the payload the plan records."""
    return BoundaryPayload(
        cut_point,
        crossing.codec,
        int(round(crossing.nbytes)),
        True,
        f"learned bottleneck {crossing.name} (fewer bytes, faster crossing)",
    )


def _crossing_parameters(chosen: bool, crossing: Crossing | None) -> dict[str, Any]:
    """Plan parameters recording whether the split's bottleneck crossing is used."""
    if crossing is None:
        return {}
    if not chosen:
        return {"bottleneck": None, "bottleneck_considered": crossing.name}
    return {
        "bottleneck": crossing.name,
        "crossing_edge_ms": crossing.edge_ms,
        "crossing_cloud_ms": crossing.cloud_ms,
        "crossing_loss_pp": crossing.loss_pp,
    }


def _split_crossing(
    edge: ModelProfile,
    split: str,
    codec: str,
    cloud_device: DeviceProfile | None,
    crossing: Crossing | None,
    link: LinkLike | None,
    budget_ms: float | None,
) -> tuple[BoundaryPayload, bool]:
    """The split's payload under the split rules: the codec's, or the bottleneck's if it wins."""
    limit = payload_limit(cloud_device)
    fits = crossing is not None and (limit is None or crossing.max_bytes <= limit)
    try:
        payload = boundary_payload(edge.at(split), codec, cloud_device)
    except PlanError:
        if not fits:
            raise
        return crossing_payload(split, crossing), True  # type: ignore[arg-type]
    if not fits or link is None:
        return payload, False
    if budget_ms is not None and edge.at(split).latency_ms + crossing.edge_ms > budget_ms:
        return payload, False
    generic_ms = link.transfer_ms(wire_bytes(payload.nbytes, cloud_device))
    ours = link.transfer_ms(wire_bytes(int(round(crossing.nbytes)), cloud_device))
    if ours + crossing.edge_ms + crossing.cloud_ms < generic_ms:
        return crossing_payload(split, crossing), True
    return payload, False


def plan_pipeline(
    profile: ModelProfile,
    n_stages: int,
    *,
    devices: Sequence[str] | None = None,
    link: Any = None,
    codecs: Sequence[str] = ("raw",),
) -> Plan:
    """DEFER-style pipeline: ``n_stages`` edge stages (``edge-0``, ``edge-1``, ...), no exits.

    The cut points minimise the slowest stage (the pipeline's throughput bottleneck), found
    exactly by dynamic programming; ties go to the shallower cut points. This is the one-profile
    shortcut of :func:`edgelesspart.planning.chain.plan_chain` (every node runs ``profile``;
    ``devices`` only names them); heterogeneous nodes, codec and link costs are there.
    """
    from dataclasses import replace

    from edgelesspart.planning.chain import ChainCosts, plan_chain

    names = [cp.name for cp in profile.cut_points]
    if (
        isinstance(n_stages, bool)
        or not isinstance(n_stages, int)
        or not 1 <= n_stages <= len(names)
    ):
        raise PlanError(
            f"n_stages must be an integer in 1..{len(names)} (one more than the internal cut "
            f"points of {profile.model!r}), got {n_stages!r}."
        )
    devices = list(devices) if devices is not None else [profile.device] * n_stages
    if len(devices) != n_stages:
        raise PlanError(f"Give one device per stage: {n_stages} stages, {len(devices)} devices.")
    profiles = tuple(replace(profile, device=d) for d in devices)
    costs = ChainCosts(profiles, link=link, codecs=tuple(codecs))
    return plan_chain(costs, stage_prefix="edge-")


def _payload_splits(
    edge_profile: ModelProfile,
    edge_device: DeviceProfile | None,
    cloud_device: DeviceProfile | None,
    max_boundary_bytes: int | None,
    codec: str,
    rescue: Collection[str] = (),
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Feasible splits (memory, raw size, payload limit) and each one's planned payload.

    ``rescue``: splits a bottleneck can carry within the limit (no error when only they fit).
    """
    check_plan_codec(codec)
    candidates = _obj.feasible_splits(edge_profile, edge_device, max_boundary_bytes)
    payloads, refused = split_payloads(edge_profile, candidates, codec, cloud_device)
    splits = tuple(name for name in candidates if name in payloads)
    if splits or any(name in rescue for name in refused):
        return splits, payloads
    if refused:
        last = list(refused)[-1]
        raise PlanError(
            f"No split fits the cloud's payload limit: all {len(refused)} split(s) of "
            f"{edge_profile.model!r} left after the memory checks are refused. The deepest: "
            f"{refused[last]}"
        )
    raise PlanError(
        f"No split fits: every cut point of {edge_profile.model!r} exceeds the edge memory "
        f"budget or max_boundary_bytes={max_boundary_bytes}."
    )


def _fitting_crossings(
    crossings: Mapping[str, Crossing] | None, cloud: DeviceProfile | None
) -> dict[str, Crossing]:
    """The crossings whose largest payload fits the cloud's limit."""
    limit = payload_limit(cloud)
    return {s: c for s, c in (crossings or {}).items() if limit is None or c.max_bytes <= limit}


def _crossing_spec(spec: Any, split: str, crossing: Crossing, cloud: DeviceProfile | None) -> Any:
    """The objective with the bottleneck's bytes and ms charged at ``split``."""
    from dataclasses import replace

    nbytes = wire_bytes(int(round(crossing.nbytes)), cloud)
    return replace(
        spec,
        wire_bytes={**spec.wire_bytes, split: nbytes},
        crossing_ms={**spec.crossing_ms, split: (crossing.edge_ms, crossing.cloud_ms)},
    )


def _split_value(
    edge: ModelProfile,
    cloud: ModelProfile,
    split: str,
    spec: Any,
    search: str,
    limits: tuple[int, int],
    placement: str,
    depth: str,
) -> tuple[float, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The objective value of ``split`` and its exits (placement rule or exact search)."""
    if search == "placement":
        exits = (
            place_exits(edge, MODEL_INPUT, split, limits[0], placement, depth=depth),
            place_exits(cloud, split, MODEL_OUTPUT, limits[1], placement, depth=depth),
        )
        return _obj.objective_value(edge, cloud, split, exits, spec), exits
    value, edge_exits, cloud_exits = _obj.best_split_exits(edge, cloud, split, limits, spec)
    return value, (edge_exits, cloud_exits)


def _link_bytes(payloads: Mapping[str, Any], cloud: DeviceProfile | None) -> dict[str, int]:
    """Bytes one offload puts on the link at each split (base64 JSON event for Lambda)."""
    return {name: wire_bytes(p.nbytes, cloud) for name, p in payloads.items()}


def _objective_setup(
    edge_profile: ModelProfile,
    objective: str,
    *,
    edge_device: DeviceProfile | None,
    cloud_device: DeviceProfile | None,
    max_boundary_bytes: int | None,
    codec: str,
    rescue: Collection[str] = (),
    **objective_options: Any,
) -> tuple[tuple[str, ...], dict[str, Any], Any]:
    """Feasible splits, their planned payloads and the objective that charges those bytes."""
    splits, payloads = _payload_splits(
        edge_profile, edge_device, cloud_device, max_boundary_bytes, codec, rescue
    )
    spec = _obj.make_objective(
        edge_profile,
        objective,
        cloud_device=cloud_device,
        wire_bytes=_link_bytes(payloads, cloud_device),
        **objective_options,
    )
    return splits, payloads, spec


# --------------------------------------------------------------------------- objective mode


def _objective_rationale(
    spec: Objective, split: str, value: float, edge_exits: Sequence[str], n_splits: int
) -> str:
    offloaded = math.prod(1.0 - spec.rate(name) for name in edge_exits)
    what = (
        f"the expected latency, {value:.4g} ms per request"
        if spec.name == "expected-latency"
        else f"the expected cloud cost, ${value * 1e6:.4g} per 1M requests"
    )
    return (
        f"Split after {split!r} minimises {what} ({offloaded:.0%} of requests offloaded), "
        f"best of {n_splits} feasible split(s)."
    )


def plan_objective(
    edge_profile: ModelProfile,
    cloud_profile: ModelProfile,
    *,
    objective: str,
    link: LinkLike | None = None,
    exit_rates: Mapping[str, float] | None = None,
    placement: str = "linear",
    exits_per_part: int | Sequence[int] = (2, 2),
    exit_overhead_ms: float = 0.0,
    offload_overhead_ms: float = 0.0,
    cost_fn: CostFn | None = None,
    edge_device: DeviceProfile | None = None,
    cloud_device: DeviceProfile | None = None,
    search: str = "placement",
    depth: str = "latency",
    max_boundary_bytes: int | None = None,
    codec: str = AUTO,
    exit_head_ms: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
    crossings: Mapping[str, Crossing] | None = None,
) -> Plan:
    """The split (and exits) minimising expected latency or expected cloud cost per request.

    Args:
        edge_profile: the model on the edge device.
        cloud_profile: the model on the cloud device.
        objective: ``"expected-latency"`` (needs ``link``) or ``"expected-cost"`` (needs
            ``cost_fn``, or a ``cloud_device`` with provider and memory_mb for the bundled prices).
        link: edge -> cloud link; the split's boundary bytes cross it once per offload.
        exit_rates: P(answer | reached) per cut point; ``None`` for :func:`default_exit_rates`.
        placement: exit rule inside each part when ``search="placement"``.
        exits_per_part: exits per part (exactly, as the placement rule gives them; at most,
            with ``search="exhaustive"``), one int or ``(edge, cloud)``, each in 0..3.
        exit_overhead_ms: time of one exit head, per exit a request evaluates.
        offload_overhead_ms: fixed extra time per offload.
        cost_fn: cloud ms -> cost of one invocation.
        edge_device: splits whose prefix exceeds its memory budget are skipped.
        cloud_device: named in the plan; default prices for ``expected-cost``.
        search: ``"placement"`` (every split, exits by the placement rule) or ``"exhaustive"``
            (every split, optimal exit subsets by dynamic programming; ``placement="optimal"``).
        depth: relative depth for the placement rule (``"latency"`` or ``"index"``).
        max_boundary_bytes: skip splits whose raw boundary tensor is larger.
        codec: the boundary codec (a name, or ``"auto"``): link time uses its encoded bytes at
            each split (raw bytes where none were measured); with a Lambda ``cloud_device``,
            splits that cannot fit the synchronous payload limit are skipped.
        exit_head_ms: ``(edge, cloud)`` maps cut point -> the exit head's ms on each device
            (:func:`edgelesspart.exits.cost.device_head_ms`), charged per exit evaluated on top
            of ``exit_overhead_ms``; ``None``: heads cost only ``exit_overhead_ms``.
        crossings: per split, a measured learned bottleneck (:class:`Crossing`, with ms on
            the devices): one more way across the link. At that split the plan is valued both
            with the codec and with the bottleneck (its bytes on the link, its encoder and
            decoder time per offload, the payload limit), and the better one is kept; a split
            the codec cannot carry within the Lambda limit becomes feasible if the bottleneck
            fits.

    Returns:
        A two-stage plan; ``parameters["objective_value"]`` holds the minimised value. Ties are
        broken by model order (the shallower split wins).
    """
    check_pair(edge_profile, cloud_profile)
    check_choice(search, SEARCHES, "search")
    limits = exits_pair(exits_per_part)
    splits, payloads, spec = _objective_setup(
        edge_profile,
        objective,
        link=link,
        exit_rates=exit_rates,
        exit_overhead_ms=exit_overhead_ms,
        offload_overhead_ms=offload_overhead_ms,
        cost_fn=cost_fn,
        edge_device=edge_device,
        cloud_device=cloud_device,
        max_boundary_bytes=max_boundary_bytes,
        codec=codec,
        rescue=tuple(_fitting_crossings(crossings, cloud_device)),
        edge_exit_ms=(exit_head_ms or ({}, {}))[0],
        cloud_exit_ms=(exit_head_ms or ({}, {}))[1],
    )
    crossings = _fitting_crossings(crossings, cloud_device)
    feasible = _obj.feasible_splits(edge_profile, edge_device, max_boundary_bytes)
    splits = tuple(n for n in feasible if n in payloads or n in crossings)
    best: tuple[float, str, tuple[tuple[str, ...], tuple[str, ...]], bool] | None = None
    for split in splits:
        ways = ([False] if split in payloads else []) + ([True] if split in crossings else [])
        for use in ways:
            way = _crossing_spec(spec, split, crossings[split], cloud_device) if use else spec
            value, exits = _split_value(
                edge_profile, cloud_profile, split, way, search, limits, placement, depth
            )
            if best is None or _obj.is_better(value, best[0]):
                best = (value, split, exits, use)
    value, split, exits, use = best
    crossing = crossings.get(split)
    payload = crossing_payload(split, crossing) if use else payloads[split]  # type: ignore[arg-type]
    parameters = {
        "objective_value": value,
        "search": search,
        "exits_per_part": list(limits),
        "depth": depth,
        "link": getattr(link, "name", None),
        "exit_rates": "given" if exit_rates is not None else "default_exit_rates",
        "exit_overhead_ms": exit_overhead_ms,
        "exit_head_ms": "charged per cut point" if exit_head_ms else "not charged",
        "offload_overhead_ms": offload_overhead_ms,
        "feasible_splits": len(splits),
        **payload_parameters(payload, codec, cloud_device),
        **_crossing_parameters(use, crossing),
    }
    return two_stage_plan(
        edge_profile,
        cloud_profile,
        split,
        exits,
        constraint=objective,
        placement=placement if search == "placement" else "optimal",
        parameters=parameters,
        rationale=_objective_rationale(spec, split, value, exits[0], len(splits)),
        devices=(edge_device, cloud_device),
    )


def brute_force_optimum(
    edge_profile: ModelProfile,
    cloud_profile: ModelProfile,
    *,
    objective: str,
    link: LinkLike | None = None,
    exit_rates: Mapping[str, float] | None = None,
    exits_per_part: int | Sequence[int] = MAX_EXITS_PER_PART,
    exit_overhead_ms: float = 0.0,
    offload_overhead_ms: float = 0.0,
    cost_fn: CostFn | None = None,
    edge_device: DeviceProfile | None = None,
    cloud_device: DeviceProfile | None = None,
    max_boundary_bytes: int | None = None,
    codec: str = AUTO,
    exit_head_ms: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
) -> Optimum:
    """Exact optimum over every split x exit subset (at most ``exits_per_part`` per part).

    Same arguments and objective as :func:`plan_objective`; exponential in the number of cut
    points (see :func:`edgelesspart.planning.objective.brute_force`), meant as the reference a
    benchmark
    compares the placement rules against.
    """
    check_pair(edge_profile, cloud_profile)
    splits, payloads, spec = _objective_setup(
        edge_profile,
        objective,
        link=link,
        exit_rates=exit_rates,
        exit_overhead_ms=exit_overhead_ms,
        offload_overhead_ms=offload_overhead_ms,
        cost_fn=cost_fn,
        edge_device=edge_device,
        cloud_device=cloud_device,
        max_boundary_bytes=max_boundary_bytes,
        codec=codec,
        edge_exit_ms=(exit_head_ms or ({}, {}))[0],
        cloud_exit_ms=(exit_head_ms or ({}, {}))[1],
    )
    return _obj.brute_force(
        edge_profile,
        cloud_profile,
        objective=spec,
        limits=exits_pair(exits_per_part),
        splits=splits,
    )
