"""The chosen SlimEdge plan is checked on the real model: a non-additive accuracy loss is caught."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pymoo")

from edgelesspart.slimedge.curves import CurveModel, ViewCurves  # noqa: E402
from edgelesspart.slimedge.optimize import Bound, DeviceSlot, SlimPlan, nsga2_plan  # noqa: E402
from edgelesspart.slimedge.verify import (  # noqa: E402
    PlanVerifier,
    verified_failure_plans,
    verified_nsga2_plan,
)

RATIOS = (0.0, 0.5)


@pytest.fixture(scope="module")
def redundant():
    """Two views carrying the same evidence: pruning either alone costs nothing, both costs all.

    Unpruned features are the one-hot label (+ noise); a view pruned at 0.5 yields zeros (its
    evidence gone). The mean-fusion head is the identity, so one informative view suffices and
    two empty ones leave a tie (class 0), about half right: the additive model cannot see it.
    """
    from edgelesspart.slimedge.model import build_fusion

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    signal = np.eye(2, dtype=np.float32)[y] * 2 + rng.normal(0, 0.1, (400, 2)).astype(np.float32)
    feats = {(v, 0.0): signal for v in range(2)}
    feats |= {(v, 0.5): np.zeros_like(signal) for v in range(2)}
    fusion = build_fusion(2, 2, features=2)
    fusion.get_layer("predictions").set_weights([np.eye(2, dtype=np.float32), np.zeros(2)])
    verifier = PlanVerifier(fusion, feats, y)
    base = verifier.accuracy((0.0, 0.0))
    curves = ViewCurves(
        ratios=RATIOS,
        accuracy=tuple(
            tuple(verifier.accuracy([r if w == v else 0.0 for w in range(2)]) for r in RATIOS)
            for v in range(2)
        ),
        latency_ms=(1.0, 0.3),
        params=(1e4, 3e3),
        memory_bytes=(1e6, 3e5),
        fusion_latency_ms=0.01,
        base_accuracy=base,
        importance=(0.0, 0.0),
        subsets={
            "11": base,
            "10": verifier.accuracy((0, 0), [0]),
            "01": verifier.accuracy((0, 0), [1]),
        },  # fmt: skip
    )
    # both devices slow: pruning both is what the additive model wants
    slots = [DeviceSlot("slow", 4.0, 1e7), DeviceSlot("slower", 4.5, 1e7)]
    return verifier, CurveModel(curves), slots, base


def test_verified_choice_meets_the_floor_the_additive_model_misses(redundant):
    verifier, model, slots, base = redundant
    floor = Bound(accuracy_floor=base - 0.02)
    # GIVEN the additive model: pruning both views is predicted free (each alone costs nothing)
    assert model.accuracy(np.array([[0.5, 0.5]]))[0] >= floor.accuracy_floor
    assert verifier.accuracy((0.5, 0.5)) < floor.accuracy_floor - 0.2
    plain = nsga2_plan(model, slots, floor)
    assert plain.accuracy >= floor.accuracy_floor and plain.ratios[0] > 0.4
    # WHEN the front is verified on the model
    chosen = verified_nsga2_plan(model, slots, floor, verifier)
    # THEN the choice really meets the floor, prunes the slowest device only, at a measured ratio
    assert chosen.feasible and chosen.method == "nsga2+verified"
    assert chosen.ratios == (0.0, 0.5)
    assert chosen.verified_accuracy == verifier.accuracy(chosen.ratios)
    assert chosen.verified_accuracy >= floor.accuracy_floor
    assert chosen.front  # the NSGA-II front is kept for the report
    assert SlimPlan.from_dict(chosen.to_dict()) == chosen


def test_verifier_snaps_down_and_respects_memory_and_slo(redundant):
    verifier, model, slots, base = redundant
    # ratios between measured ones are deployed at the measured one below (never pruned more)
    assert verifier.snap((0.49, 0.9)) == (0.0, 0.5)
    # GIVEN a slow device too small for its unpruned backbone
    tight = [DeviceSlot("slow", 4.0, 5e5), DeviceSlot("slower", 4.5, 1e7)]
    chosen = verified_nsga2_plan(model, tight, Bound(accuracy_floor=base - 0.02), verifier)
    assert chosen.ratios[0] == 0.5 and chosen.feasible
    # an SLO only the doubly pruned plan meets: the most accurate plan within it, verified
    slo = verified_nsga2_plan(model, slots, Bound(latency_slo_ms=1.5), verifier)
    assert slo.latency_ms <= 1.5 and slo.ratios == (0.5, 0.5)
    assert slo.verified_accuracy == pytest.approx(verifier.accuracy((0.5, 0.5)))
    # a floor nothing reaches: the most accurate fitting plan, marked infeasible
    none = verified_nsga2_plan(model, tight, Bound(accuracy_floor=1.01), verifier)
    assert not none.feasible and none.ratios[0] == 0.5
    # no plan fits memory even pruned at most: the most pruned plan, marked infeasible
    tiny = [DeviceSlot("slow", 4.0, 1e3), DeviceSlot("slower", 4.5, 1e7)]
    squeezed = verified_nsga2_plan(model, tiny, Bound(accuracy_floor=0.5), verifier)
    assert not squeezed.feasible and squeezed.ratios == (0.5, 0.5)


def test_failure_plans_are_verified_per_survivor_set(redundant):
    verifier, model, slots, _ = redundant
    plans = verified_failure_plans(model, slots, verifier, max_drop=0.02)
    assert set(plans) == {0, 1}
    for lost, plan in plans.items():
        alive = [1 - lost]
        assert plan.present == tuple(alive) and plan.ratios[lost] == 0.0
        # the lone survivor must stay unpruned: pruning it leaves no evidence at all
        assert plan.ratios[alive[0]] == 0.0 and plan.feasible
        assert plan.verified_accuracy == verifier.accuracy((0.0, 0.0), alive)
