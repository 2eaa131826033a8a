"""Plan truth: is the chosen split worth it against running everything on one side?

Pure Python, no TensorFlow. :func:`check_plan` predicts, on the same device profiles, link and
prices the planner uses, the expected latency and expected cloud cost per request of three
deployments:

* ``split``: the plan (edge prefix with its exits, the boundary over the link, the cloud part);
* ``edge-only``: the whole model on the edge device, nothing sent, no cloud cost; it is an
  option only when the whole model fits the edge device's memory budget;
* ``cloud-only``: the raw input over the link and the whole model in the cloud function.

The split is *dominated* when an option is at least as fast **and** at least as cheap (Pareto
dominance on expected latency and expected cost). Each domination becomes a warning that names
the better option and why, e.g. "the boundary (128 KiB raw fp32) is larger than the input
(12 KiB)". :func:`chance_warning` flags a final classifier that is no better than guessing.
Both are called by the build (``edgelesspart build`` prints them); see ``docs/demo.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgelesspart.planning.objective import expected_cost, expected_latency
from edgelesspart.profiling.profile import ModelProfile
from edgelesspart.runtime.plan import Plan

#: Relative tolerance under which two predictions count as equal.
TOLERANCE = 1e-6
#: A final accuracy within this many points (absolute) of 1/classes counts as chance.
CHANCE_MARGIN = 0.05
CHECK_VERSION = 1


@dataclass(frozen=True)
class Option:
    """One deployment's predictions per request.

    Attributes:
        name: ``split``, ``edge-only`` or ``cloud-only``.
        latency_ms: expected end-to-end latency.
        cost: expected cloud cost (table currency, USD).
        feasible: whether the deployment is possible (edge-only: the model fits the edge).
        note: why it is infeasible, or what the prediction assumes.
    """

    name: str
    latency_ms: float
    cost: float
    feasible: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "latency_ms": self.latency_ms,
            "cost": self.cost,
            "feasible": self.feasible,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Option:
        """Build from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            latency_ms=float(data["latency_ms"]),
            cost=float(data["cost"]),
            feasible=bool(data.get("feasible", True)),
            note=str(data.get("note", "")),
        )

    def dominates(self, other: Option) -> bool:
        """True when this option is feasible and no slower and no dearer than ``other``."""
        return (
            self.feasible
            and self.latency_ms <= other.latency_ms * (1 + TOLERANCE)
            and self.cost <= other.cost * (1 + TOLERANCE) + 1e-15
        )


@dataclass(frozen=True)
class PlanCheck:
    """The split against edge-only and cloud-only, and the warnings that follow."""

    split: Option
    alternatives: tuple[Option, ...]
    dominated_by: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when no feasible option dominates the split."""
        return not self.dominated_by

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (versioned)."""
        return {
            "version": CHECK_VERSION,
            "split": self.split.to_dict(),
            "alternatives": [o.to_dict() for o in self.alternatives],
            "dominated_by": list(self.dominated_by),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanCheck:
        """Build from :meth:`to_dict` output."""
        return cls(
            split=Option.from_dict(data["split"]),
            alternatives=tuple(Option.from_dict(o) for o in data.get("alternatives", [])),
            dominated_by=tuple(str(n) for n in data.get("dominated_by", [])),
            warnings=tuple(str(w) for w in data.get("warnings", [])),
        )


def _kib(nbytes: float) -> str:
    return f"{nbytes / 1024:.0f} KiB" if nbytes >= 1024 else f"{nbytes:.0f} B"


def _per_million(cost: float) -> str:
    return f"${cost * 1e6:.3g}/1M"


def check_plan(
    plan: Plan,
    edge_profile: ModelProfile,
    cloud_profile: ModelProfile,
    *,
    link: Any,
    cost_fn: Callable[[float], float],
    input_bytes: int,
    edge_memory_bytes: int | None = None,
    exit_rates: Mapping[str, float] | None = None,
    exit_overhead_ms: float = 0.0,
    offload_overhead_ms: float = 0.0,
) -> PlanCheck:
    """Compare a two-stage plan with edge-only and cloud-only on expected latency and cost.

    Args:
        plan: the (edge, cloud) plan the build chose.
        edge_profile: the model on the edge device (scaled host profile).
        cloud_profile: the model on the cloud device.
        link: the edge -> cloud link (``transfer_ms(nbytes)``), as in the planner.
        cost_fn: cloud ms -> cost of one invocation (the cloud device's price table).
        input_bytes: raw bytes of one input sample (what cloud-only sends).
        edge_memory_bytes: the edge device's memory budget; edge-only is an option only when
            the whole model fits it (``None``: assume it fits).
        exit_rates: P(answer | reached) per exit cut point; ``None`` for the planner's prior
            (:func:`edgelesspart.planning.objective.default_exit_rates`).
        exit_overhead_ms: time of one exit head, per exit evaluated.
        offload_overhead_ms: fixed extra time per offload (charged to cloud-only too).

    Returns:
        A :class:`PlanCheck`; its ``warnings`` are empty when the split is not dominated.
    """
    split = Option(
        "split",
        expected_latency(
            plan,
            edge_profile,
            cloud_profile,
            exit_rates,
            link,
            exit_overhead_ms,
            offload_overhead_ms=offload_overhead_ms,
        ),
        expected_cost(plan, edge_profile, cloud_profile, exit_rates, cost_fn, exit_overhead_ms),
        note=f"split after {plan.split!r}, exits at {', '.join(plan.exits) or 'none'}",
    )
    full = edge_profile.total
    fits = edge_memory_bytes is None or full.memory_bytes <= edge_memory_bytes
    edge_only = Option(
        "edge-only",
        float(full.latency_ms),
        0.0,
        feasible=fits,
        note=(
            f"the whole model ({_kib(full.memory_bytes)}) on {edge_profile.device}"
            if fits
            else f"the whole model needs {_kib(full.memory_bytes)}, over the edge budget of "
            f"{_kib(edge_memory_bytes or 0)}"
        ),
    )
    cloud_ms = float(cloud_profile.total.latency_ms)
    cloud_only = Option(
        "cloud-only",
        link.transfer_ms(int(input_bytes)) + offload_overhead_ms + cloud_ms,
        cost_fn(cloud_ms),
        note=f"the raw input ({_kib(input_bytes)}) over {getattr(link, 'name', 'the link')}",
    )
    alternatives = (edge_only, cloud_only)
    dominated = tuple(o.name for o in alternatives if o.dominates(split))
    context = _Context(plan, edge_profile, cloud_profile, link, input_bytes)
    warnings = tuple(_warning(o, split, context) for o in alternatives if o.name in dominated)
    return PlanCheck(split, alternatives, dominated, warnings)


@dataclass(frozen=True)
class _Context:
    plan: Plan
    edge: ModelProfile
    cloud: ModelProfile
    link: Any
    input_bytes: int


def _edge_reasons(ctx: _Context, split: Option) -> list[str]:
    full = ctx.edge.total.latency_ms
    link_ms = ctx.link.transfer_ms(0)
    reasons = [
        f"the whole model takes {full:.3g} ms on {ctx.edge.device}, less than the split's "
        f"expected {split.latency_ms:.3g} ms"
    ]
    if link_ms >= full:
        name = getattr(ctx.link, "name", "the link")
        reasons.append(f"one round trip over {name} alone takes {link_ms:.3g} ms")
    reasons.append("edge-only pays no cloud function")
    return reasons + _boundary_reason(ctx)


def _boundary_reason(ctx: _Context) -> list[str]:
    """ "the boundary (128 KiB raw fp32) is larger than the input (12 KiB)", when it is."""
    raw = ctx.plan.boundary_bytes[0] if ctx.plan.boundary_bytes else 0
    wire = ctx.plan.parameters.get("boundary_wire_bytes")
    if (wire if isinstance(wire, int) else raw) <= ctx.input_bytes:
        return []  # what is really sent is no larger than the input
    sent = f", {_kib(wire)} on the wire" if isinstance(wire, int) and wire != raw else ""
    return [
        f"the boundary ({_kib(raw)} raw fp32{sent}) is larger than the input "
        f"({_kib(ctx.input_bytes)})"
    ]


def _cloud_reasons(ctx: _Context) -> list[str]:
    reasons = _boundary_reason(ctx)
    prefix = ctx.edge.at(ctx.plan.split).latency_ms
    cloud_prefix = ctx.cloud.at(ctx.plan.split).latency_ms
    if prefix > cloud_prefix:
        reasons.append(
            f"the edge part takes {prefix:.3g} ms on {ctx.edge.device} where the cloud would "
            f"take {cloud_prefix:.3g} ms"
        )
    reasons.append("too few requests are expected to exit on the edge to make up for it")
    return reasons


def _warning(better: Option, split: Option, ctx: _Context) -> str:
    if better.name == "edge-only":
        why = "; ".join(_edge_reasons(ctx, split))
        advice = (
            "Deploy the whole model on the edge, or plan for a slower edge device, a faster "
            "link or a larger model where offloading pays (--edge-device, --link)."
        )
    else:
        why = "; ".join(_cloud_reasons(ctx))
        advice = (
            "Send the input straight to the cloud function, or let the planner weigh the link "
            "(--constraint expected-latency or expected-cost)."
        )
    return (
        f"the plan is dominated by {better.name}: {better.latency_ms:.3g} ms and "
        f"{_per_million(better.cost)} expected per request, against {split.latency_ms:.3g} ms "
        f"and {_per_million(split.cost)} for the split after {ctx.plan.split!r}. Why: {why}. "
        f"{advice}"
    )


def chance_warning(
    accuracy: float | None, classes: int, *, margin: float = CHANCE_MARGIN
) -> str | None:
    """A warning when the final classifier's accuracy is at chance (<= 1/classes + margin).

    Returns ``None`` when the accuracy is unknown or above chance.
    """
    if accuracy is None or classes < 2:
        return None
    chance = 1.0 / classes
    if accuracy > chance + margin:
        return None
    return (
        f"the final classifier scores {accuracy:.1%} on the test split, which is chance for "
        f"{classes} classes ({chance:.1%}): the model looks untrained. Exits cannot do better "
        "than their backbone; train it with --train-backbone yes (and enough --epochs)."
    )


def check_for_devices(
    plan: Plan,
    host_profile: ModelProfile,
    *,
    edge_device: str,
    cloud_device: str,
    link: str,
    input_bytes: int,
    exit_rates: Mapping[str, float] | None = None,
    offload_overhead_ms: float = 0.0,
    factors: Mapping[str, float] | None = None,
) -> PlanCheck:
    """:func:`check_plan` for named devices and link, as ``edgelesspart build`` knows them.

    The host profile is scaled to both devices: by ``factors`` (``{"edge": f, "cloud": f}``,
    the factors the planner used, recorded in ``plan.parameters["latency_sources"]``) where
    given, else by each device's own profile. The cloud is priced from its provider's table
    (Cloud Functions of the default generation at 2048 MB when the cloud device names no
    provider; ``gcf`` is priced as :func:`~edgelesspart.profiling.devices.pricing_provider`
    resolves it, as ``evaluate`` and ``package-cloud`` do).
    """
    from edgelesspart.profiling import devices, links
    from edgelesspart.profiling.pricing import load_prices, make_price_fn

    edge = devices.load_device(edge_device)
    cloud = devices.load_device(cloud_device)
    if cloud.provider and cloud.memory_mb:
        cost_fn = make_price_fn(
            load_prices(devices.pricing_provider(cloud.provider)), cloud.memory_mb
        )
    else:
        cost_fn = make_price_fn(load_prices(devices.pricing_provider("gcf")), 2048)
    factors = factors or {}

    def scaled(role: str, device: Any) -> ModelProfile:
        if role in factors:
            return host_profile.scaled(device.name, float(factors[role]))
        return devices.profile_for_device(host_profile, device)

    return check_plan(
        plan,
        scaled("edge", edge),
        scaled("cloud", cloud),
        link=links.load_link(link),
        cost_fn=cost_fn,
        input_bytes=input_bytes,
        edge_memory_bytes=edge.memory_bytes,
        exit_rates=exit_rates,
        offload_overhead_ms=offload_overhead_ms,
    )
