"""Check a planned deployment on the real multi-view model before it is chosen.

The optimiser predicts the fused accuracy additively from per-view curves (one view pruned at a
time); pruning several views at once can cost more than the sum (the simulation found real
drops up to 3.6 points on plans predicted within 2). :class:`PlanVerifier` closes the gap: it
holds, for one split (validation when choosing; never the test split), every measured pruned
backbone's features and the fusion head, so the real fused accuracy of any plan is one head
evaluation. :meth:`PlanVerifier.choose` snaps the candidates to the measured ratios the runtime
deploys (the largest measured ratio not above the planned one, as ``nearest_ratio`` does),
drops those whose snapped backbones do not fit memory, and walks them from fastest to slowest
until one really meets the floor with confidence (the ``z``-sigma upper bound of its paired
accuracy drop is within the allowed drop); when no NSGA-II point does, it walks the grid of
measured ratios the same way. The chosen plan carries the ratios actually deployed, their
predicted latency and the verified accuracy.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from edgelesspart.errors import PlanError
from edgelesspart.slimedge.model import fusion_input
from edgelesspart.slimedge.optimize import Bound, Evaluator, SlimPlan

#: a plan passes when the one-sided upper confidence bound of its accuracy drop (paired, per
#: sample, against the unpruned plan on the same views) is within the allowed drop: the choice is
#: the fastest of many candidates near the floor on a few hundred validation samples, so a plan
#: that only just passes on its mean tends to be a lucky one. 1.645 = 95 % one-sided.
DEFAULT_Z = 1.645
#: the measured-ratio grid is walked only up to this many combinations (5 ratios, 4 views: 625)
MAX_GRID = 4096


class PlanVerifier:
    """Real fused accuracy of pruning plans on one split.

    Args:
        fusion: the fusion head (Keras).
        features: ``(view, ratio) -> (N, F)`` features of that view's backbone pruned at that
            measured ratio on the split's samples.
        y: the split's labels.
    """

    def __init__(
        self, fusion: Any, features: Mapping[tuple[int, float], np.ndarray], y: np.ndarray
    ) -> None:
        from edgelesspart.slimedge.model import MultiViewModel

        self.n_views = 1 + max(v for v, _ in features)
        self.features = dict(features)
        self.y = np.asarray(y)
        self.levels = {
            v: sorted(r for w, r in features if w == v) for v in range(self.n_views)
        }  # fmt: skip
        if any(not levels or levels[0] != 0.0 for levels in self.levels.values()):
            raise PlanError("The verifier needs every view's unpruned backbone (ratio 0).")
        self._probe = MultiViewModel([None] * self.n_views, fusion)
        self._cache: dict[tuple[float, ...], np.ndarray] = {}

    @classmethod
    def from_backbones(
        cls, fusion: Any, pruned: Mapping[tuple[int, float], Any], views: Sequence[np.ndarray],
        y: np.ndarray,
    ) -> PlanVerifier:  # fmt: skip
        """Run every pruned backbone ``(view, ratio) -> model`` once over ``views``."""
        from edgelesspart.slimedge.model import _predict

        feats = {key: _predict(bb, views[key[0]], 256) for key, bb in pruned.items()}
        return cls(fusion, feats, y)

    def snap(self, ratios: Sequence[float]) -> tuple[float, ...]:
        """Per view, the largest measured ratio not above the planned one (never prunes more)."""
        out = []
        for v, ratio in enumerate(ratios):
            below = [r for r in self.levels[v] if r <= ratio + 1e-9]
            out.append(below[-1])
        return tuple(out)

    def correct(self, ratios: Sequence[float], present: Sequence[int] | None = None) -> np.ndarray:
        """Per sample, whether the snapped plan with ``present`` views answers right."""
        snapped = self.snap(ratios)
        present = set(range(self.n_views) if present is None else present)
        key = tuple(r if v in present else -1.0 for v, r in enumerate(snapped))
        if key not in self._cache:
            feats = [self.features[(v, max(r, 0.0))] for v, r in enumerate(key)]
            mask = np.broadcast_to(
                np.array([1.0 if v in present else 0.0 for v in range(self.n_views)], np.float32),
                (len(self.y), self.n_views),
            )
            probs = self._probe.fusion(fusion_input(feats, mask), training=False)
            self._cache[key] = np.asarray(probs).argmax(axis=-1) == self.y
        return self._cache[key]

    def accuracy(self, ratios: Sequence[float], present: Sequence[int] | None = None) -> float:
        """Real fused accuracy of the snapped ``ratios`` with ``present`` views (default all)."""
        return float(self.correct(ratios, present).mean())

    def drop_bound(self, ratios: Sequence[float], present: Sequence[int], z: float) -> float:
        """Upper confidence bound (``z`` standard errors) of the accuracy lost against the
        unpruned plan on the same ``present`` views (paired per sample)."""
        diff = self.correct([0.0] * self.n_views, present).astype(float) - self.correct(
            ratios, present
        )
        spread = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        return float(diff.mean()) + z * spread / np.sqrt(len(diff))

    def grid(self, present: Sequence[int]) -> list[tuple[float, ...]]:
        """Every combination of measured ratios over ``present`` (lost views at 0)."""
        levels = [self.levels[v] for v in present]
        if int(np.prod([len(x) for x in levels])) > MAX_GRID:
            return []
        rows = []
        for combo in itertools.product(*levels):
            full = [0.0] * self.n_views
            for v, r in zip(present, combo):
                full[v] = r
            rows.append(tuple(full))
        return rows

    def choose(
        self,
        evaluator: Evaluator,
        bound: Bound,
        candidates: Iterable[Sequence[float]],
        *,
        z: float = DEFAULT_Z,
        method: str = "nsga2+verified",
        seconds: float = 0.0,
        front: tuple[tuple[float, float], ...] = (),
    ) -> SlimPlan:
        """Floor: the fastest candidate (then grid point) whose snapped plan fits memory and
        really clears the floor (the drop's ``z``-sigma bound); the most accurate fitting one
        when none does (``feasible`` False). SLO: the most accurate verified plan within the SLO."""
        start = time.perf_counter()
        present = evaluator.present
        slo = bound.latency_slo_ms is not None
        tried: dict[tuple[float, ...], tuple[float, float]] = {}
        for stage in (list(candidates), self.grid(present)):
            rows = {self.snap(_full(c, present, self.n_views)) for c in stage} - set(tried)
            for snapped in _fastest_first(evaluator, rows):
                lat = float(evaluator.latency_ms(np.array([[snapped[v] for v in present]]))[0])
                if slo and lat > bound.latency_slo_ms + 1e-12:
                    break  # fastest first: the rest miss the SLO too
                acc = self.accuracy(snapped, present)
                tried[snapped] = (acc, lat)
                if not slo and self._passes(snapped, present, bound.accuracy_floor, z):
                    return self._plan(evaluator, snapped, acc, True, method, seconds, start, front)
        if not tried:  # nothing fits (or meets the SLO): the most pruned plan, infeasible
            most = tuple(self.levels[v][-1] if v in present else 0.0 for v in range(self.n_views))
            acc = self.accuracy(most, present)
            return self._plan(evaluator, most, acc, False, method, seconds, start, front)
        best = max(tried, key=lambda k: (tried[k][0], -tried[k][1]))
        ok = slo  # within the SLO, the most accurate verified plan; a missed floor is infeasible
        return self._plan(evaluator, best, tried[best][0], ok, method, seconds, start, front)

    def _passes(self, snapped: tuple, present: Sequence[int], floor: float, z: float) -> bool:
        allowed = self.accuracy([0.0] * self.n_views, present) - floor
        return self.accuracy(snapped, present) >= floor - 1e-12 and (
            self.drop_bound(snapped, present, z) <= allowed + 1e-12
        )

    def _plan(self, evaluator, snapped, acc, ok, method, seconds, start, front) -> SlimPlan:
        row = np.array([snapped[v] for v in evaluator.present])
        plan = evaluator.plan(row, method, None, seconds + time.perf_counter() - start, front)
        return SlimPlan(**{**plan.__dict__, "feasible": ok, "verified_accuracy": acc})


def _full(ratios: Sequence[float], present: Sequence[int], n_views: int) -> list[float]:
    """Accept ratios over all views or over the present views only."""
    if len(ratios) == n_views:
        return [float(r) if v in set(present) else 0.0 for v, r in enumerate(ratios)]
    full = [0.0] * n_views
    for v, r in zip(present, ratios):
        full[v] = float(r)
    return full


def _fastest_first(evaluator: Evaluator, rows: set[tuple[float, ...]]) -> list[tuple]:
    """Snapped plans whose backbones fit memory, by predicted latency (fastest first)."""
    if not rows:
        return []
    ordered = sorted(rows)
    x = np.array([[row[v] for v in evaluator.present] for row in ordered])
    fits = (evaluator.memory_excess(x) <= 1e-9).all(axis=1)
    lat = evaluator.latency_ms(x)
    keep = [i for i in np.argsort(lat, kind="stable") if fits[i]]
    return [ordered[i] for i in keep]


def verified_nsga2_plan(
    model: Any,
    slots: Sequence[Any],
    bound: Bound,
    verifier: PlanVerifier,
    *,
    present: Sequence[int] | None = None,
    z: float = DEFAULT_Z,
    seed: int = 0,
) -> SlimPlan:
    """NSGA-II, then :meth:`PlanVerifier.choose` over its front (all points, fastest first)."""
    from edgelesspart.slimedge.optimize import nsga2_front

    present = list(range(len(slots))) if present is None else list(present)
    evaluator = Evaluator(model, slots, present)
    start = time.perf_counter()
    xs, front = nsga2_front(model, slots, bound, present=present, seed=seed)
    return verifier.choose(
        evaluator, bound, xs, z=z, seconds=time.perf_counter() - start, front=front
    )


def verified_failure_plans(
    model: Any,
    slots: Sequence[Any],
    verifier: PlanVerifier,
    *,
    max_drop: float = 0.02,
    z: float = DEFAULT_Z,
    seed: int = 0,
) -> dict[int, SlimPlan]:
    """Like :func:`~edgelesspart.slimedge.optimize.failure_plans`, each plan verified: its floor
    is the survivors' real unpruned accuracy minus ``max_drop``."""
    plans = {}
    for lost in range(len(slots)):
        alive = [v for v in range(len(slots)) if v != lost]
        floor = Bound(accuracy_floor=verifier.accuracy([0.0] * len(slots), alive) - max_drop)
        plans[lost] = verified_nsga2_plan(
            model, slots, floor, verifier, present=alive, z=z, seed=seed
        )
    return plans
