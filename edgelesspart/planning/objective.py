"""Objective mode of the planner: expected latency and expected cloud cost of a two-stage plan.

Pure Python, no TensorFlow. A request walks the plan's exits in model order. ``exit_rates[c]``
is the probability that a sample *still running* when it reaches exit ``c`` answers there; a
sample that passes every edge exit is offloaded (its boundary tensor crosses the link once),
and one that passes every cloud exit answers at the final classifier. Every exit evaluated costs
``exit_overhead_ms`` on the device that runs it, plus the exit head's own time at that cut point
(``edge_exit_ms`` / ``cloud_exit_ms``: the rendered head's cost on each device, see
:mod:`edgelesspart.exits.cost`), so an exit is placed only where the samples it answers save
more than every sample reaching it pays. Definitions and a worked example: ``docs/planner.md``.

* expected latency = sum over outcomes of P(outcome) x (edge ms [+ link ms + offload overhead
  + cloud ms when offloaded]);
* expected cost = sum over offloaded outcomes of P(outcome) x ``cost_fn(cloud ms)`` (the edge is
  owned hardware and costs nothing per request).

:func:`best_split_exits` finds, for one split, the exit subsets (at most ``k`` per part) that
minimise the objective exactly by dynamic programming; :func:`brute_force` enumerates
every split x subset combination with the direct formula, as the reference it is tested
against. The keyword-argument entry points are :func:`edgelesspart.planning.planner.plan_objective`
and
:func:`edgelesspart.planning.planner.brute_force_optimum`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Protocol

from edgelesspart.errors import PlanError
from edgelesspart.profiling.devices import DeviceProfile
from edgelesspart.profiling.profile import ModelProfile
from edgelesspart.runtime.plan import MODEL_OUTPUT, Plan

OBJECTIVES = ("expected-latency", "expected-cost")
#: Relative tolerance under which two objective values count as a tie (model order wins).
TIE_TOLERANCE = 1e-9
#: The prior exit rate is DEFAULT_RATE_SCALE x relative latency depth, capped at DEFAULT_RATE_CAP.
DEFAULT_RATE_SCALE = 0.9
DEFAULT_RATE_CAP = 0.9

CostFn = Callable[[float], float]


class LinkLike(Protocol):
    """Anything with ``transfer_ms(nbytes)`` (:class:`edgelesspart.profiling.links.Link` fits)."""

    def transfer_ms(self, nbytes: int) -> float:
        """Milliseconds to send ``nbytes`` edge -> cloud, round trip included."""
        ...


@dataclass(frozen=True)
class Objective:
    """Everything an objective value depends on besides the split and the exits.

    Attributes:
        name: ``expected-latency`` or ``expected-cost``.
        rates: exit rate per internal cut point.
        link: the edge -> cloud link (expected latency).
        cost_fn: cloud milliseconds -> cost of one invocation (expected cost).
        exit_overhead_ms: time of one exit head, charged for every exit a sample evaluates.
        offload_overhead_ms: fixed per-offload overhead (HTTPS / function front end).
        wire_bytes: bytes one offload puts on the link per split (the planned codec's encoded
            bytes, see :mod:`edgelesspart.planning.payload`); a split not listed sends its raw
            ``boundary_bytes``.
        edge_exit_ms: the exit head's time per cut point on the edge device (added to
            ``exit_overhead_ms`` for an exit in the edge part; 0 where not listed).
        cloud_exit_ms: the same on the cloud device, for exits in the cloud part.
        crossing_ms: per split, ``(edge ms, cloud ms)`` one offload adds on top of the link
            (a learned bottleneck's encoder + codec encode on the edge device, codec decode +
            decoder on the cloud device; see :mod:`edgelesspart.planning.bottleneck`); 0 where
            not listed.
    """

    name: str
    rates: Mapping[str, float]
    link: LinkLike | None = None
    cost_fn: CostFn | None = None
    exit_overhead_ms: float = 0.0
    offload_overhead_ms: float = 0.0
    wire_bytes: Mapping[str, int] = field(default_factory=dict)
    edge_exit_ms: Mapping[str, float] = field(default_factory=dict)
    cloud_exit_ms: Mapping[str, float] = field(default_factory=dict)
    crossing_ms: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise PlanError(f"Unknown objective {self.name!r}; choose one of {OBJECTIVES}.")
        if self.name == "expected-latency" and self.link is None:
            raise PlanError("The expected-latency objective needs a link (e.g. load_link('wifi')).")
        if self.name == "expected-cost" and self.cost_fn is None:
            raise PlanError(
                "The expected-cost objective needs cost_fn(cloud_ms) -> cost, or a cloud device "
                "with a provider and memory_mb (e.g. load_device('gcf-2gb'))."
            )
        for what in ("exit_overhead_ms", "offload_overhead_ms"):
            value = getattr(self, what)
            if not (math.isfinite(value) and value >= 0):
                raise PlanError(f"{what} must be a finite number >= 0, got {value}.")
        for what in ("edge_exit_ms", "cloud_exit_ms"):
            heads = getattr(self, what)
            bad = {k: v for k, v in heads.items() if not (math.isfinite(v) and v >= 0)}
            if bad:
                raise PlanError(f"{what} must map cut points to ms >= 0, got {bad}.")

    def exit_ms(self, name: str, *, cloud: bool) -> float:
        """What evaluating the exit at ``name`` costs a sample, on the edge or in the cloud."""
        heads = self.cloud_exit_ms if cloud else self.edge_exit_ms
        return self.exit_overhead_ms + float(heads.get(name, 0.0))

    def rate(self, name: str) -> float:
        """The exit rate of cut point ``name``."""
        if name not in self.rates:
            raise PlanError(
                f"No exit rate for cut point {name!r}; exit_rates must cover every cut point an "
                "exit may sit at (or pass None for default_exit_rates)."
            )
        return self.rates[name]


def default_exit_rates(
    profile: ModelProfile, scale: float = DEFAULT_RATE_SCALE, cap: float = DEFAULT_RATE_CAP
) -> dict[str, float]:
    """A prior exit rate per internal cut point, until measured rates are available.

    ``p(c) = min(cap, max(0, scale x latency(c) / latency(output)))``: deeper exits see more of
    the network and answer more samples. With a 0 ms model, index depth replaces latency depth.
    This is an assumption, not a measurement: pass rates from an evaluation trace when you have
    them.
    """
    internal = [cp for cp in profile.cut_points[:-1] if cp.name != MODEL_OUTPUT]
    total = profile.total.latency_ms
    count = len(profile.cut_points)
    rates = {}
    for pos, cp in enumerate(internal):
        depth = cp.latency_ms / total if total > 0 else (pos + 1) / count
        rates[cp.name] = min(cap, max(0.0, scale * depth))
    return rates


def check_rates(profile: ModelProfile, exit_rates: Mapping[str, float] | None) -> dict[str, float]:
    """Validate ``exit_rates`` (each in [0, 1]) or build :func:`default_exit_rates`."""
    if exit_rates is None:
        return default_exit_rates(profile)
    rates = {}
    for name, value in exit_rates.items():
        try:
            rate = float(value)
        except (TypeError, ValueError):
            rate = math.nan
        if not 0.0 <= rate <= 1.0:
            raise PlanError(f"Exit rate of {name!r} must be within [0, 1], got {value!r}.")
        rates[str(name)] = rate
    return rates


def outcomes(
    edge: ModelProfile,
    cloud: ModelProfile,
    split: str,
    exits: tuple[Sequence[str], Sequence[str]],
    objective: Objective,
) -> list[tuple[float, float, float | None]]:
    """Every way a request can end: ``(probability, edge ms, cloud ms or None)``.

    Edge ms counts the prefix up to the answering exit (or the split) plus the cost of every
    exit evaluated (:meth:`Objective.exit_ms`); cloud ms likewise from the split. ``None`` means
    answered on the edge.
    """
    survive, events, heads = 1.0, [], 0.0
    for name in exits[0]:
        rate = objective.rate(name)
        heads += objective.exit_ms(name, cloud=False)
        events.append((survive * rate, edge.at(name).latency_ms + heads, None))
        survive *= 1.0 - rate
    edge_ms = edge.at(split).latency_ms + heads
    base, heads = cloud.at(split).latency_ms, 0.0
    for name in exits[1]:
        rate = objective.rate(name)
        heads += objective.exit_ms(name, cloud=True)
        events.append((survive * rate, edge_ms, cloud.at(name).latency_ms - base + heads))
        survive *= 1.0 - rate
    events.append((survive, edge_ms, cloud.total.latency_ms - base + heads))
    return events


def _offload_ms(edge: ModelProfile, split: str, objective: Objective) -> float:
    nbytes = objective.wire_bytes.get(split, edge.at(split).boundary_bytes)
    link_ms = objective.link.transfer_ms(nbytes) if objective.link else 0.0
    edge_ms, cloud_ms = objective.crossing_ms.get(split, (0.0, 0.0))
    return link_ms + objective.offload_overhead_ms + edge_ms + cloud_ms


def objective_value(
    edge: ModelProfile,
    cloud: ModelProfile,
    split: str,
    exits: tuple[Sequence[str], Sequence[str]],
    objective: Objective,
) -> float:
    """The expected latency (ms) or expected cost per request of one split and its exits."""
    events = outcomes(edge, cloud, split, exits, objective)
    if objective.name == "expected-latency":
        offload = _offload_ms(edge, split, objective)
        return sum(
            p * (edge_ms + (0.0 if cloud_ms is None else offload + cloud_ms))
            for p, edge_ms, cloud_ms in events
        )
    cost_fn = objective.cost_fn
    extra = objective.crossing_ms.get(split, (0.0, 0.0))[1]
    return sum(p * cost_fn(cloud_ms + extra) for p, _, cloud_ms in events if cloud_ms is not None)


def _plan_crossing(plan: Plan) -> dict[str, tuple[float, float]]:
    """The plan's recorded per-offload crossing time (a bottleneck's), if any."""
    edge = plan.parameters.get("crossing_edge_ms")
    cloud = plan.parameters.get("crossing_cloud_ms")
    if edge is None and cloud is None:
        return {}
    return {plan.split: (float(edge or 0.0), float(cloud or 0.0))}


def _two_stages(plan: Plan) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    if len(plan.stages) != 2:
        raise PlanError(
            f"Expected latency and cost are defined for two-stage (edge, cloud) plans; this plan "
            f"has {len(plan.stages)} stages."
        )
    return plan.split, plan.stages[0].exits, plan.stages[1].exits


def expected_latency(
    plan: Plan,
    edge_profile: ModelProfile,
    cloud_profile: ModelProfile,
    exit_rates: Mapping[str, float] | None,
    link: LinkLike,
    exit_overhead_ms: float = 0.0,
    *,
    offload_overhead_ms: float = 0.0,
) -> float:
    """Expected end-to-end latency (ms) of one request under ``plan``.

    Args:
        plan: a two-stage plan (edge, cloud).
        edge_profile: the model on the edge device.
        cloud_profile: the model on the cloud device.
        exit_rates: P(answer at exit | reached it) per cut point; ``None`` for the prior of
            :func:`default_exit_rates`.
        link: the edge -> cloud link; one ``link.transfer_ms(boundary bytes)`` per offload
            (the plan's ``boundary_wire_bytes`` parameter when present, then
            ``boundary_encoded_bytes``, else raw bytes).
        exit_overhead_ms: time of one exit head, per exit evaluated.
        offload_overhead_ms: fixed extra time per offload (front-end, serialisation).
    """
    split, edge_exits, cloud_exits = _two_stages(plan)
    wire = plan.parameters.get("boundary_wire_bytes", plan.parameters.get("boundary_encoded_bytes"))
    objective = Objective(
        "expected-latency",
        check_rates(edge_profile, exit_rates),
        link=link,
        exit_overhead_ms=exit_overhead_ms,
        offload_overhead_ms=offload_overhead_ms,
        wire_bytes={split: int(wire)} if isinstance(wire, int) else {},
        crossing_ms=_plan_crossing(plan),
    )
    return objective_value(edge_profile, cloud_profile, split, (edge_exits, cloud_exits), objective)


def expected_cost(
    plan: Plan,
    edge_profile: ModelProfile,
    cloud_profile: ModelProfile,
    exit_rates: Mapping[str, float] | None,
    cost_fn: CostFn,
    exit_overhead_ms: float = 0.0,
) -> float:
    """Expected cloud cost of one request under ``plan``: sum of P x ``cost_fn(cloud ms)``.

    ``cost_fn`` maps the cloud part's duration of one invocation to its price, e.g.
    ``edgelesspart.profiling.pricing.make_price_fn(load_prices("gcf"), 2048)``.
    """
    split, edge_exits, cloud_exits = _two_stages(plan)
    objective = Objective(
        "expected-cost",
        check_rates(edge_profile, exit_rates),
        cost_fn=cost_fn,
        exit_overhead_ms=exit_overhead_ms,
        crossing_ms=_plan_crossing(plan),
    )
    return objective_value(edge_profile, cloud_profile, split, (edge_exits, cloud_exits), objective)


def default_cost_fn(cloud_device: DeviceProfile | None) -> CostFn:
    """``cost_fn`` from the bundled price table of ``cloud_device.provider`` at its memory."""
    if cloud_device is None or cloud_device.provider is None or cloud_device.memory_mb is None:
        name = cloud_device.name if cloud_device else None
        raise PlanError(
            f"The expected-cost objective needs cost_fn or a cloud device with provider and "
            f"memory_mb; got {name!r}. Use e.g. load_device('gcf-2gb') or pass cost_fn."
        )
    from edgelesspart.profiling.devices import pricing_provider
    from edgelesspart.profiling.pricing import load_prices, make_price_fn

    table = load_prices(pricing_provider(cloud_device.provider))
    return make_price_fn(table, cloud_device.memory_mb)


def simple_cost_fn(
    per_request: float, per_gb_s: float, memory_mb: float, billing_increment_ms: float = 1.0
) -> CostFn:
    """``cost_fn`` from plain prices: ``per_request + billed seconds x GB x per_gb_s``.

    Duration is rounded up to ``billing_increment_ms`` (at least one increment); GB is
    ``memory_mb / 1024``. E.g. Lambda x86 at 2048 MB: ``simple_cost_fn(2e-7, 1.66667e-5, 2048)``
    prices a 150 ms call at 5.2e-6 USD.
    """
    if min(per_request, per_gb_s) < 0 or memory_mb <= 0 or billing_increment_ms <= 0:
        raise PlanError(
            f"Prices must be >= 0 and memory/increment > 0; got per_request={per_request}, "
            f"per_gb_s={per_gb_s}, memory_mb={memory_mb}, increment={billing_increment_ms}."
        )

    def cost_fn(cloud_ms: float) -> float:
        steps = max(1, math.ceil(cloud_ms / billing_increment_ms - 1e-9))
        seconds = steps * billing_increment_ms / 1000.0
        return per_request + seconds * memory_mb / 1024.0 * per_gb_s

    return cost_fn


def make_objective(
    edge_profile: ModelProfile,
    objective: str,
    *,
    link: LinkLike | None = None,
    exit_rates: Mapping[str, float] | None = None,
    exit_overhead_ms: float = 0.0,
    offload_overhead_ms: float = 0.0,
    cost_fn: CostFn | None = None,
    cloud_device: DeviceProfile | None = None,
    wire_bytes: Mapping[str, int] | None = None,
    edge_exit_ms: Mapping[str, float] | None = None,
    cloud_exit_ms: Mapping[str, float] | None = None,
) -> Objective:
    """Build the :class:`Objective` named ``objective`` with validated (or default) exit rates.

    ``expected-cost`` without ``cost_fn`` prices the cloud device's provider and memory tier
    (:func:`default_cost_fn`). Unknown objective names raise :class:`PlanError` (the
    :class:`Objective` constructor checks them).
    """
    if objective == "expected-cost" and cost_fn is None:
        cost_fn = default_cost_fn(cloud_device)
    return Objective(
        objective,
        check_rates(edge_profile, exit_rates),
        link=link,
        cost_fn=cost_fn,
        exit_overhead_ms=exit_overhead_ms,
        offload_overhead_ms=offload_overhead_ms,
        wire_bytes=dict(wire_bytes or {}),
        edge_exit_ms=dict(edge_exit_ms or {}),
        cloud_exit_ms=dict(cloud_exit_ms or {}),
    )


def is_better(value: float, best: float) -> bool:
    """True when ``value`` beats ``best`` by more than the relative tie tolerance."""
    return value < best - TIE_TOLERANCE * abs(best)


def _best_chain(
    candidates: Sequence[str],
    limit: int,
    objective: Objective,
    exit_value: Callable[[str, float], float],
    stop_value: Callable[[float], float],
    head_ms: Callable[[str], float],
) -> tuple[float, tuple[str, ...]]:
    """Exact best exit subset (at most ``limit``) of one part by backward recursion.

    ``value(pos, used, spent)`` = min(stop now, min over later candidates c of rate(c) x
    exit_value(c, spent') + (1 - rate(c)) x value(c, used + 1, spent')), where ``spent`` is the
    exit-head time a sample has paid so far in this part and ``spent' = spent + head_ms(c)``
    (carried, not summed afterwards, because a cost function of the cloud time need not be
    linear). Stopping is tried first, then candidates in model order, so ties keep fewer and
    shallower exits.
    """
    memo: dict[tuple[int, int, float], tuple[float, tuple[str, ...]]] = {}

    def value(pos: int, used: int, spent: float) -> tuple[float, tuple[str, ...]]:
        key = (pos, used, round(spent, 9))
        if key not in memo:
            best = (stop_value(spent), ())
            if used < limit:
                for nxt in range(pos + 1, len(candidates)):
                    name = candidates[nxt]
                    rate = objective.rate(name)
                    paid = spent + head_ms(name)
                    rest, chain = value(nxt, used + 1, paid)
                    total = rate * exit_value(name, paid) + (1.0 - rate) * rest
                    if is_better(total, best[0]):
                        best = (total, (name, *chain))
            memo[key] = best
        return memo[key]

    return value(-1, 0, 0.0)


def part_candidates(profile: ModelProfile, split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Exit candidates of the edge part (input..split, inclusive) and the cloud part."""
    names = [cp.name for cp in profile.cut_points[:-1] if cp.name != MODEL_OUTPUT]
    cut = names.index(split)
    return tuple(names[: cut + 1]), tuple(names[cut + 1 :])


def best_split_exits(
    edge: ModelProfile,
    cloud: ModelProfile,
    split: str,
    limits: tuple[int, int],
    objective: Objective,
) -> tuple[float, tuple[str, ...], tuple[str, ...]]:
    """The optimal exits (at most ``limits`` per part) for one split: ``(value, edge, cloud)``."""
    edge_cands, cloud_cands = part_candidates(edge, split)
    base = cloud.at(split).latency_ms
    lat_c = {cp.name: cp.latency_ms - base for cp in cloud.cut_points}
    total_c = cloud.total.latency_ms - base

    def per_sample(ms: float) -> float:
        return ms if objective.name == "expected-latency" else objective.cost_fn(ms)

    cloud_value, cloud_exits = _best_chain(
        cloud_cands,
        limits[1],
        objective,
        lambda name, spent: per_sample(lat_c[name] + spent),
        lambda spent: per_sample(total_c + spent),
        lambda name: objective.exit_ms(name, cloud=True),
    )
    edge_head = lambda name: objective.exit_ms(name, cloud=False)  # noqa: E731
    if objective.name == "expected-latency":
        lat_e = {cp.name: cp.latency_ms for cp in edge.cut_points}
        offload = lat_e[split] + _offload_ms(edge, split, objective) + cloud_value
        value, edge_exits = _best_chain(
            edge_cands,
            limits[0],
            objective,
            lambda name, spent: lat_e[name] + spent,
            lambda spent: offload + spent,
            edge_head,
        )
    else:
        value, edge_exits = _best_chain(
            edge_cands, limits[0], objective, lambda name, spent: 0.0, lambda spent: cloud_value,
            edge_head,
        )  # fmt: skip
    return value, edge_exits, cloud_exits


def feasible_splits(
    edge: ModelProfile,
    edge_device: DeviceProfile | None = None,
    max_boundary_bytes: int | None = None,
) -> tuple[str, ...]:
    """Internal cut points whose prefix fits the edge device and whose boundary fits the limit."""
    return tuple(
        cp.name
        for cp in edge.cut_points[:-1]
        if cp.name != MODEL_OUTPUT
        and (edge_device is None or cp.memory_bytes <= edge_device.memory_bytes)
        and (max_boundary_bytes is None or cp.boundary_bytes <= max_boundary_bytes)
    )


@dataclass(frozen=True)
class Optimum:
    """The best combination found by :func:`brute_force`.

    Attributes:
        value: the objective (ms or cost per request).
        split: the split cut point.
        edge_exits: exits of the edge part, model order.
        cloud_exits: exits of the cloud part, model order.
        evaluated: how many combinations were evaluated.
    """

    value: float
    split: str
    edge_exits: tuple[str, ...]
    cloud_exits: tuple[str, ...]
    evaluated: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "value": self.value,
            "split": self.split,
            "edge_exits": list(self.edge_exits),
            "cloud_exits": list(self.cloud_exits),
            "evaluated": self.evaluated,
        }


def _subsets(names: Sequence[str], limit: int) -> list[tuple[str, ...]]:
    return [c for size in range(limit + 1) for c in combinations(names, size)]


def brute_force(
    edge_profile: ModelProfile,
    cloud_profile: ModelProfile,
    *,
    objective: Objective,
    limits: tuple[int, int] = (3, 3),
    splits: Sequence[str] | None = None,
) -> Optimum:
    """Enumerate every split x edge-exit subset x cloud-exit subset (at most ``limits``).

    Exact by construction (the direct outcome formula on every combination), so it is
    exponential: sum over splits of C(edge candidates, <= k) x C(cloud candidates, <= k)
    evaluations; keep it to profiles of ~20 cut points. Ties keep the first combination in
    enumeration order: splits in model order, subsets by size then lexicographic model order.
    """
    chosen = tuple(splits) if splits is not None else feasible_splits(edge_profile)
    if not chosen:
        raise PlanError("No feasible split to search (every cut point was excluded).")
    best: Optimum | None = None
    count = 0
    for split in chosen:
        edge_cands, cloud_cands = part_candidates(edge_profile, split)
        for edge_exits in _subsets(edge_cands, limits[0]):
            for cloud_exits in _subsets(cloud_cands, limits[1]):
                value = objective_value(
                    edge_profile, cloud_profile, split, (edge_exits, cloud_exits), objective
                )
                count += 1
                if best is None or is_better(value, best.value):
                    best = Optimum(value, split, edge_exits, cloud_exits, 0)
    return Optimum(best.value, best.split, best.edge_exits, best.cloud_exits, count)
