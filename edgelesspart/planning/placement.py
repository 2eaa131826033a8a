"""Exit placement inside one part, and the part geometry the planner shares.

A *part* is the layers after cut point ``start`` up to and including ``end`` (``"input"`` and
``"output"`` name the model's ends). An *internal* cut point is any profiled cut point except the
last entry (``"output"``, the whole model); splits and exits only sit at internal cut points.

Exit ``k`` of ``n`` (``n`` in 0..3) targets the ``k/(n+1)`` quantile of a distribution over the
part's relative depth (0 = part start, 1 = part end):

* ``linear``: the uniform distribution, ``t_k = k/(n+1)``;
* ``pareto``: a Pareto(alpha = log 5 / log 4, x_m = 1) distribution, the 80/20 shape, truncated
  at its 80th percentile (x = 4 exactly) and mapped linearly onto [0, 1], so exits cluster
  early in the part: ``t_k = ((1 - 0.8 k/(n+1)) ** (-1/alpha) - 1) / 3``.

Targets are snapped to candidates greedily (each target in increasing order takes the nearest
unused candidate; equal distances go to the shallower one). Derivation and worked example:
``docs/planner.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edgelesspart.errors import PlanError
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile
from edgelesspart.runtime.plan import MODEL_INPUT, MODEL_OUTPUT

PLACEMENTS = ("linear", "pareto")
DEPTHS = ("latency", "index")
MAX_EXITS_PER_PART = 3
#: Pareto shape of the 80/20 rule: the top 20 % holds 80 % when alpha = log 5 / log 4.
PARETO_ALPHA = math.log(5) / math.log(4)
#: Probability mass of the Pareto distribution that is mapped onto a part (its 80th percentile).
PARETO_MASS = 0.8
#: The Pareto(alpha, x_m=1) quantile at PARETO_MASS: exactly 4 for the 80/20 shape.
PARETO_UPPER = (1.0 - PARETO_MASS) ** (-1.0 / PARETO_ALPHA)
#: Absolute difference in relative depth below which two candidates are equally near a target.
SNAP_TOLERANCE = 1e-9


def internal_cut_points(profile: ModelProfile) -> tuple[CutPointProfile, ...]:
    """Every cut point except the last entry (the whole model, ``"output"``)."""
    return tuple(cp for cp in profile.cut_points[:-1] if cp.name != MODEL_OUTPUT)


def position(profile: ModelProfile, name: str) -> int:
    """Position of a cut point in ``profile.cut_points``; ``-1`` for the model input."""
    if name == MODEL_INPUT:
        return -1
    if name == MODEL_OUTPUT:
        return len(profile.cut_points) - 1
    for pos, cp in enumerate(profile.cut_points):
        if cp.name == name:
            return pos
    known = ", ".join(cp.name for cp in profile.cut_points)
    raise PlanError(
        f"Cut point {name!r} is not in the profile of {profile.model!r}; known: {known}."
    )


def latency_at(profile: ModelProfile, name: str) -> float:
    """Cumulative latency at a cut point; 0 at the model input."""
    pos = position(profile, name)
    return 0.0 if pos < 0 else profile.cut_points[pos].latency_ms


def check_pair(edge: ModelProfile, cloud: ModelProfile) -> None:
    """Raise :class:`PlanError` unless both profiles list the same, splittable cut points."""
    edge_names = [cp.name for cp in edge.cut_points]
    cloud_names = [cp.name for cp in cloud.cut_points]
    if edge_names != cloud_names:
        raise PlanError(
            f"The edge profile ({edge.device!r}) and the cloud profile ({cloud.device!r}) list "
            f"different cut points ({len(edge_names)} vs {len(cloud_names)}); scale both from the "
            "same host profile with devices.profile_for_device."
        )
    if not internal_cut_points(edge):
        raise PlanError(
            f"Model {edge.model!r} has no internal cut point, so it cannot be split; every "
            "path from input to output must pass through at least one single tensor."
        )


def check_choice(value: str, allowed: Sequence[str], what: str) -> None:
    """Raise :class:`PlanError` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise PlanError(f"Unknown {what} {value!r}; choose one of {', '.join(allowed)}.")


def check_count(n: Any, what: str = "exits per part") -> int:
    """Return ``n`` if it is an int in 0..3, else raise :class:`PlanError`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_EXITS_PER_PART:
        raise PlanError(
            f"{what} must be an integer in 0..{MAX_EXITS_PER_PART}, got {n!r}; the paper "
            f"places at most {MAX_EXITS_PER_PART} early exits per part."
        )
    return n


def exits_pair(exits_per_part: int | Sequence[int]) -> tuple[int, int]:
    """Normalise ``exits_per_part`` (one int for both parts, or ``(edge, cloud)``)."""
    if isinstance(exits_per_part, int) and not isinstance(exits_per_part, bool):
        return check_count(exits_per_part), check_count(exits_per_part)
    values = tuple(exits_per_part)
    if len(values) != 2:
        raise PlanError(f"exits_per_part must be an int or (edge, cloud), got {exits_per_part!r}.")
    return check_count(values[0], "edge exits"), check_count(values[1], "cloud exits")


def exit_targets(n: int, placement: str) -> tuple[float, ...]:
    """Target relative depths (0 = part start, 1 = part end) of ``n`` exits.

    ``linear``: ``t_k = k / (n + 1)``. ``pareto``: the ``k / (n + 1)`` quantiles of a
    Pareto(alpha = log 5 / log 4, x_m = 1) distribution truncated at its 80th percentile
    (x = 4), mapped linearly onto [0, 1]::

        t_k = ((1 - 0.8 * k / (n + 1)) ** (-1 / alpha) - 1) / 3

    e.g. n = 3 gives 0.0706, 0.1842, 0.4006 (linear: 0.25, 0.5, 0.75).
    """
    check_count(n)
    check_choice(placement, PLACEMENTS, "exit placement")
    levels = [k / (n + 1) for k in range(1, n + 1)]
    if placement == "linear":
        return tuple(levels)
    return tuple(
        ((1.0 - PARETO_MASS * p) ** (-1.0 / PARETO_ALPHA) - 1.0) / (PARETO_UPPER - 1.0)
        for p in levels
    )


def _relative_depths(
    profile: ModelProfile, start: int, end: int, positions: Sequence[int], depth: str
) -> list[float]:
    if depth == "latency":
        lat0 = 0.0 if start < 0 else profile.cut_points[start].latency_ms
        span = profile.cut_points[end].latency_ms - lat0
        if span > 0:
            return [(profile.cut_points[p].latency_ms - lat0) / span for p in positions]
    return [(p - start) / (end - start) for p in positions]


def _snap(targets: Sequence[float], depths: Sequence[float]) -> list[int]:
    """Greedy snapping: each target, in increasing order, takes the nearest unused candidate.

    Distances within ``SNAP_TOLERANCE`` of the nearest count as equal and go to the shallower
    candidate (so 1/3 and 2/3 are equally near 0.5 despite float rounding).
    """
    taken: list[int] = []
    for target in targets:
        free = [i for i in range(len(depths)) if i not in taken]
        if not free:
            break
        nearest = min(abs(depths[i] - target) for i in free)
        taken.append(next(i for i in free if abs(depths[i] - target) <= nearest + SNAP_TOLERANCE))
    return sorted(taken)


def place_exits(
    profile: ModelProfile,
    start: str,
    end: str,
    n: int,
    placement: str = "linear",
    *,
    depth: str = "latency",
) -> tuple[str, ...]:
    """Exit positions inside one part, in model order.

    Candidates are the internal cut points strictly after ``start`` up to and including ``end``
    (so an edge part may have an exit at its split; ``"output"`` is never a candidate). Each
    candidate's relative depth is ``(lat(c) - lat(start)) / (lat(end) - lat(start))``
    (``depth="latency"``, the default; falls back to index depth when the part takes 0 ms) or
    ``(pos(c) - pos(start)) / (pos(end) - pos(start))`` (``depth="index"``). The targets of
    :func:`exit_targets` are then snapped greedily (:func:`_snap`). With fewer candidates than
    ``n`` every candidate is returned; never duplicates.

    Raises:
        PlanError: ``n`` outside 0..3, unknown placement/depth/cut point, or ``end`` not after
            ``start``.
    """
    check_count(n)
    check_choice(placement, PLACEMENTS, "exit placement")
    check_choice(depth, DEPTHS, "depth")
    first, last = position(profile, start), position(profile, end)
    if last <= first:
        raise PlanError(f"A part must end after it starts; got start={start!r}, end={end!r}.")
    internal = len(internal_cut_points(profile))
    positions = [p for p in range(first + 1, last + 1) if p < internal]
    if n == 0 or not positions:
        return ()
    depths = _relative_depths(profile, first, last, positions, depth)
    chosen = _snap(exit_targets(n, placement), depths)
    return tuple(profile.cut_points[positions[i]].name for i in chosen)


def place_edge_exits(
    profile: ModelProfile,
    split: str,
    n: int,
    placement: str = "linear",
    *,
    depth: str = "latency",
    at_split: bool = False,
) -> tuple[str, ...]:
    """The exits of the part before ``split``; with ``at_split`` the last one sits at the split.

    An exit at the split is the deepest, so the most accurate, answer the edge can give, and
    every sample it answers saves the whole offload (transfer and remote compute), not only the
    rest of the backbone; the other ``n - 1`` exits are placed by :func:`place_exits` (targets
    ``k/n``). Without ``at_split`` this is :func:`place_exits` (targets ``k/(n+1)``).
    """
    if not at_split or n == 0:
        return place_exits(profile, MODEL_INPUT, split, n, placement, depth=depth)
    check_count(n)
    before = place_exits(profile, MODEL_INPUT, split, n - 1, placement, depth=depth)
    return (*(cut for cut in before if cut != split), split)
