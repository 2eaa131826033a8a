"""Device-aware choice of one pruning ratio per view/device with pymoo's NSGA-II.

Variables: the pruning ratio of each surviving device's backbone (device ``v`` runs view ``v``).
Objectives (both minimised): minus the predicted fused accuracy (view curves, importance-aware,
see :class:`~edgelesspart.slimedge.curves.CurveModel`) and the slowest device's backbone latency
on its own device profile (host LiteRT curve x the device's latency factor). Hard constraints:
each device's backbone memory fits its memory budget. One point is picked from the Pareto front
by the user's bound: an accuracy floor (the fastest point at or above it) or a latency SLO (the
most accurate point within it). :func:`uniform_plan` and :func:`unpruned_plan` are the
baselines; :func:`exhaustive_plan` searches a grid (tests compare NSGA-II with it).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart._lazy import optional
from edgelesspart.errors import PlanError
from edgelesspart.slimedge.curves import CurveModel

SLIMEDGE_HINT = "pip install 'edgelesspart[slimedge]'"
PLAN_VERSION = 1
#: NSGA-II size: ~0.3-0.5 s on this (loaded) host for 4 devices; re-planning must take < 1 s.
#: 30 generations stopped 1.8x short of the grid optimum on a 4-device case, 100 beat the grid.
POP_SIZE = 32
GENERATIONS = 100


@dataclass(frozen=True)
class DeviceSlot:
    """A device that runs one view's backbone.

    Attributes:
        name: device name (``rpi4``, ...).
        factor: latency multiplier relative to this host (>1 = slower).
        memory_bytes: memory the backbone may use on the device.
    """

    name: str
    factor: float
    memory_bytes: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "factor": self.factor, "memory_bytes": self.memory_bytes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceSlot:
        """Inverse of :meth:`to_dict`."""
        return cls(data["name"], float(data["factor"]), float(data["memory_bytes"]))


@dataclass(frozen=True)
class Bound:
    """The user's bound: an accuracy floor (0..1) or a latency SLO (ms), exactly one."""

    accuracy_floor: float | None = None
    latency_slo_ms: float | None = None

    def __post_init__(self) -> None:
        if (self.accuracy_floor is None) == (self.latency_slo_ms is None):
            raise PlanError("Give exactly one bound: an accuracy floor or a latency SLO.")


@dataclass(frozen=True)
class SlimPlan:
    """A chosen pruning ratio per device.

    Attributes:
        devices: device names, one per view.
        present: views whose devices are alive (planned for).
        ratios: pruning ratio per view (0 for a lost view).
        accuracy: predicted fused accuracy.
        latency_ms: predicted slowest-device backbone latency plus the fusion head.
        feasible: memory constraints hold and the bound is met.
        method: ``nsga2``, ``uniform``, ``unpruned`` or ``exhaustive``.
        seconds: time spent planning.
        front: Pareto front as ``(accuracy, latency_ms)`` pairs (NSGA-II only).
        verified_accuracy: the plan's real fused accuracy on the validation split, when it was
            checked on the model (:mod:`~edgelesspart.slimedge.verify`); ``None`` otherwise.
    """

    devices: tuple[str, ...]
    present: tuple[int, ...]
    ratios: tuple[float, ...]
    accuracy: float
    latency_ms: float
    feasible: bool
    method: str
    seconds: float = 0.0
    front: tuple[tuple[float, float], ...] = field(default=(), repr=False)
    verified_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "version": PLAN_VERSION,
            "devices": list(self.devices),
            "present": list(self.present),
            "ratios": [round(r, 4) for r in self.ratios],
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
            "feasible": self.feasible,
            "method": self.method,
            "seconds": self.seconds,
            "front": [list(p) for p in self.front],
            "verified_accuracy": self.verified_accuracy,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlimPlan:
        """Inverse of :meth:`to_dict`."""
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"SlimEdge plan version {data.get('version')!r} is not supported.")
        return cls(
            devices=tuple(data["devices"]),
            present=tuple(data["present"]),
            ratios=tuple(float(r) for r in data["ratios"]),
            accuracy=float(data["accuracy"]),
            latency_ms=float(data["latency_ms"]),
            feasible=bool(data["feasible"]),
            method=data["method"],
            seconds=float(data.get("seconds", 0.0)),
            front=tuple(tuple(p) for p in data.get("front", [])),
            verified_accuracy=data.get("verified_accuracy"),
        )


class Evaluator:
    """Objectives and constraints of ratio vectors for one set of devices and survivors."""

    def __init__(
        self, model: CurveModel, slots: Sequence[DeviceSlot], present: Sequence[int]
    ) -> None:
        if len(slots) != model.curves.n_views:
            raise PlanError(
                f"{len(slots)} devices for {model.curves.n_views} views: give one device per view."
            )
        if not present:
            raise PlanError("No device is alive: nothing to plan.")
        self.model = model
        self.slots = list(slots)
        self.present = sorted(present)
        self.factors = np.array([slots[v].factor for v in self.present])
        self.memory = np.array([slots[v].memory_bytes for v in self.present])

    def full(self, x: np.ndarray) -> np.ndarray:
        """``(P, n_present)`` ratios -> ``(P, V)`` with lost views at 0."""
        out = np.zeros((x.shape[0], self.model.curves.n_views))
        out[:, self.present] = x
        return out

    def accuracy(self, x: np.ndarray) -> np.ndarray:
        """Predicted fused accuracy per row."""
        return self.model.accuracy(self.full(x), self.present)

    def latency_ms(self, x: np.ndarray) -> np.ndarray:
        """Slowest device's backbone latency plus the fusion head, per row."""
        per_device = self.model.latency_ms(x) * self.factors
        return per_device.max(axis=-1) + self.model.curves.fusion_latency_ms

    def memory_excess(self, x: np.ndarray) -> np.ndarray:
        """Per device ``memory / budget - 1`` (feasible when <= 0)."""
        return self.model.memory_bytes(x) / self.memory - 1.0

    def plan(
        self, x: np.ndarray, method: str, bound: Bound | None, seconds: float = 0.0, front=()
    ) -> SlimPlan:
        """A :class:`SlimPlan` for one ratio vector over the present views."""
        row = np.asarray(x, dtype=float).reshape(1, -1)
        acc, lat = float(self.accuracy(row)[0]), float(self.latency_ms(row)[0])
        ok = bool((self.memory_excess(row) <= 1e-9).all()) and _meets(acc, lat, bound)
        return SlimPlan(
            devices=tuple(s.name for s in self.slots),
            present=tuple(self.present),
            ratios=tuple(float(r) for r in self.full(row)[0]),
            accuracy=acc,
            latency_ms=lat,
            feasible=ok,
            method=method,
            seconds=seconds,
            front=tuple(front),
        )


def _meets(accuracy: float, latency_ms: float, bound: Bound | None) -> bool:
    if bound is None:
        return True
    if bound.accuracy_floor is not None:
        return accuracy >= bound.accuracy_floor - 1e-12
    return latency_ms <= bound.latency_slo_ms + 1e-12


def pick(acc: np.ndarray, lat: np.ndarray, bound: Bound) -> int:
    """Index of the chosen point: fastest above the floor / most accurate within the SLO.

    When no point meets the bound, the one closest to it (most accurate / fastest).
    """
    if bound.accuracy_floor is not None:
        ok = np.flatnonzero(acc >= bound.accuracy_floor - 1e-12)
        return int(ok[np.argmin(lat[ok])]) if len(ok) else int(np.argmax(acc))
    ok = np.flatnonzero(lat <= bound.latency_slo_ms + 1e-12)
    return int(ok[np.argmax(acc[ok])]) if len(ok) else int(np.argmin(lat))


def _problem_class() -> Any:
    core = optional("pymoo.core.problem", SLIMEDGE_HINT)

    class SlimProblem(core.Problem):
        def __init__(self, evaluator: Evaluator, upper: float, bound: Bound) -> None:
            n = len(evaluator.present)
            super().__init__(n_var=n, n_obj=2, n_ieq_constr=n + 1, xl=0.0, xu=upper)
            self.evaluator = evaluator
            self.bound = bound

        def _evaluate(self, x: np.ndarray, out: dict, *args: Any, **kwargs: Any) -> None:
            e, b = self.evaluator, self.bound
            acc, lat = e.accuracy(x), e.latency_ms(x)
            out["F"] = np.column_stack([-acc, lat])
            # the bound is a constraint too, so the search concentrates where the choice is made
            if b.accuracy_floor is not None:
                bound = b.accuracy_floor - acc
            else:
                bound = lat / b.latency_slo_ms - 1.0
            out["G"] = np.column_stack([e.memory_excess(x), bound])

    return SlimProblem


def _initial_population(n: int, upper: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform ratios (0..upper) plus random vectors, so both extremes are in the first front."""
    uniform = np.repeat(np.linspace(0.0, upper, max(2, size // 4))[:, None], n, axis=1)
    rest = rng.uniform(0.0, upper, (size - len(uniform), n))
    return np.vstack([uniform, rest])


def nsga2_front(
    model: CurveModel,
    slots: Sequence[DeviceSlot],
    bound: Bound,
    *,
    present: Sequence[int] | None = None,
    pop_size: int = POP_SIZE,
    generations: int = GENERATIONS,
    seed: int = 0,
) -> tuple[np.ndarray, tuple[tuple[float, float], ...]]:
    """Run NSGA-II over the present devices' ratios.

    Returns:
        The front's ratio vectors ``(P, n_present)`` (fastest first; the least-violating point
        alone when nothing is feasible) and the front as ``(accuracy, latency_ms)`` pairs.
    """
    algorithms = optional("pymoo.algorithms.moo.nsga2", SLIMEDGE_HINT)
    minimize = optional("pymoo.optimize", SLIMEDGE_HINT).minimize
    present = list(range(len(slots))) if present is None else list(present)
    evaluator = Evaluator(model, slots, present)
    upper = model.curves.max_ratio
    rng = np.random.default_rng(seed)
    sampling = _initial_population(len(present), upper, pop_size, rng)
    algorithm = algorithms.NSGA2(pop_size=pop_size, sampling=sampling, eliminate_duplicates=False)
    problem = _problem_class()(evaluator, upper, bound)
    result = minimize(problem, algorithm, ("n_gen", generations), seed=seed, verbose=False)
    if result.X is None:  # no feasible point: the least-violating one is the best we have
        pop = result.pop
        return pop.get("X")[[int(np.argmin(pop.get("CV").ravel()))]], ()
    xs = np.atleast_2d(result.X)
    acc, lat = evaluator.accuracy(xs), evaluator.latency_ms(xs)
    order = np.argsort(lat)
    return xs[order], tuple((float(acc[i]), float(lat[i])) for i in order)


def nsga2_plan(
    model: CurveModel,
    slots: Sequence[DeviceSlot],
    bound: Bound,
    *,
    present: Sequence[int] | None = None,
    pop_size: int = POP_SIZE,
    generations: int = GENERATIONS,
    seed: int = 0,
) -> SlimPlan:
    """Run NSGA-II over the present devices' ratios and pick a front point by ``bound``
    (predicted accuracy; :func:`edgelesspart.slimedge.verify.verified_nsga2_plan` checks the
    front on the real model instead)."""
    start = time.perf_counter()
    present = list(range(len(slots))) if present is None else list(present)
    evaluator = Evaluator(model, slots, present)
    xs, front = nsga2_front(
        model, slots, bound, present=present, pop_size=pop_size, generations=generations,
        seed=seed,
    )  # fmt: skip
    if not front:
        return evaluator.plan(xs[0], "nsga2", bound, time.perf_counter() - start)
    acc, lat = evaluator.accuracy(xs), evaluator.latency_ms(xs)
    choice = xs[pick(acc, lat, bound)]
    return evaluator.plan(choice, "nsga2", bound, time.perf_counter() - start, front)


def uniform_plan(
    model: CurveModel,
    slots: Sequence[DeviceSlot],
    bound: Bound,
    *,
    present: Sequence[int] | None = None,
    steps: int = 91,
) -> SlimPlan:
    """Baseline: the same ratio on every device, the best on a grid meeting memory and bound."""
    start = time.perf_counter()
    present = list(range(len(slots))) if present is None else list(present)
    evaluator = Evaluator(model, slots, present)
    grid = np.repeat(np.linspace(0.0, model.curves.max_ratio, steps)[:, None], len(present), axis=1)
    return _best_on_grid(evaluator, grid, "uniform", bound, start)


def unpruned_plan(
    model: CurveModel,
    slots: Sequence[DeviceSlot],
    bound: Bound | None = None,
    *,
    present: Sequence[int] | None = None,
) -> SlimPlan:
    """Baseline: nothing pruned (infeasible when a backbone does not fit its device)."""
    present = list(range(len(slots))) if present is None else list(present)
    evaluator = Evaluator(model, slots, present)
    return evaluator.plan(np.zeros(len(present)), "unpruned", bound)


def exhaustive_plan(
    model: CurveModel,
    slots: Sequence[DeviceSlot],
    bound: Bound,
    *,
    present: Sequence[int] | None = None,
    step: float = 0.05,
) -> SlimPlan:
    """Every combination of ratios on a grid (``step``); exponential, for small checks only."""
    start = time.perf_counter()
    present = list(range(len(slots))) if present is None else list(present)
    evaluator = Evaluator(model, slots, present)
    levels = np.arange(0.0, model.curves.max_ratio + 1e-9, step)
    grid = np.array(list(itertools.product(levels, repeat=len(present))))
    return _best_on_grid(evaluator, grid, "exhaustive", bound, start)


def _best_on_grid(
    evaluator: Evaluator, grid: np.ndarray, method: str, bound: Bound | None, start: float
) -> SlimPlan:
    """The plan ``pick`` chooses among the grid rows that fit memory (else the last row)."""
    fits = (evaluator.memory_excess(grid) <= 1e-9).all(axis=1)
    if not fits.any():
        return evaluator.plan(grid[-1], method, bound, time.perf_counter() - start)
    candidates = grid[fits]
    acc, lat = evaluator.accuracy(candidates), evaluator.latency_ms(candidates)
    return evaluator.plan(
        candidates[pick(acc, lat, bound)], method, bound, time.perf_counter() - start
    )


def failure_plans(
    model: CurveModel,
    slots: Sequence[DeviceSlot],
    *,
    max_drop: float = 0.02,
    seed: int = 0,
) -> dict[int, SlimPlan]:
    """Precomputed plans for every single device failure: lost view -> plan for the survivors.

    Each plan's floor is the survivors' unpruned accuracy minus ``max_drop``.
    """
    plans = {}
    for lost in range(len(slots)):
        alive = [v for v in range(len(slots)) if v != lost]
        plans[lost] = replan(model, slots, alive, max_drop=max_drop, seed=seed)
    return plans


def replan(
    model: CurveModel,
    slots: Sequence[DeviceSlot],
    alive: Sequence[int],
    *,
    max_drop: float = 0.02,
    seed: int = 0,
) -> SlimPlan:
    """Plan for the survivors: the fastest within ``max_drop`` of their unpruned accuracy."""
    unpruned = unpruned_plan(model, slots, present=alive)
    floor = Bound(accuracy_floor=unpruned.accuracy - max_drop)
    return nsga2_plan(model, slots, floor, present=alive, seed=seed)


def failure_planner(
    model: CurveModel,
    slots: Sequence[DeviceSlot],
    precomputed: dict[int, SlimPlan],
    *,
    max_drop: float = 0.02,
    seed: int = 0,
) -> Any:
    """``alive views -> ratio per view`` for the Ray service: the precomputed plan of a single
    failure when there is one (a dictionary lookup), otherwise NSGA-II for the survivors."""
    n = len(slots)

    def plan(alive: list[int]) -> tuple[float, ...]:
        lost = [v for v in range(n) if v not in set(alive)]
        if len(lost) == 1 and lost[0] in precomputed:
            return precomputed[lost[0]].ratios
        return replan(model, slots, alive, max_drop=max_drop, seed=seed).ratios

    return plan
