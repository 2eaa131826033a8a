"""NSGA-II choice of pruning ratios per device: against exhaustive search, baselines, failures."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("pymoo")

from edgelesspart.errors import PlanError, PruningError  # noqa: E402
from edgelesspart.slimedge.curves import CurveModel, ViewCurves  # noqa: E402
from edgelesspart.slimedge.optimize import (  # noqa: E402
    Bound,
    DeviceSlot,
    SlimPlan,
    exhaustive_plan,
    failure_planner,
    failure_plans,
    nsga2_plan,
    pick,
    replan,
    uniform_plan,
    unpruned_plan,
)

RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)


def synthetic_curves(importance=(0.06, 0.03, 0.01), base=0.95) -> ViewCurves:
    """Curves shaped like measured ones: accuracy drop grows with ratio and view importance."""
    r = np.array(RATIOS)
    accuracy = tuple(tuple(base - 0.6 * imp * r**2) for imp in importance)
    subsets = {}
    for flags in itertools.product((0, 1), repeat=len(importance)):
        if any(flags):
            missing = sum(i for i, f in zip(importance, flags) if not f)
            subsets["".join(map(str, flags))] = base - missing
    return ViewCurves(
        ratios=RATIOS,
        accuracy=accuracy,
        latency_ms=(1.0, 0.62, 0.33, 0.14, 0.08),
        params=(1e5, 5.6e4, 2.5e4, 6.3e3, 1e3),
        memory_bytes=(1e6, 5.8e5, 2.7e5, 8e4, 3e4),
        fusion_latency_ms=0.01,
        base_accuracy=base,
        importance=tuple(importance),
        subsets=subsets,
    )


SLOTS = (
    DeviceSlot("rpi4", 9.3, 2e6),
    DeviceSlot("jetson-orin-nano", 0.1, 2e6),
    DeviceSlot("rpi5", 2.2, 4e5),  # memory forces this one to prune >= ~0.4
)


def test_nsga2_matches_exhaustive_search_on_a_small_grid():
    model = CurveModel(synthetic_curves())
    bound = Bound(accuracy_floor=0.95 - 0.02)
    best = exhaustive_plan(model, SLOTS, bound, step=0.05)
    found = nsga2_plan(model, SLOTS, bound, seed=1)
    assert best.feasible and found.feasible
    assert found.accuracy >= 0.93 - 1e-9
    # NSGA-II searches continuous ratios, the grid only multiples of 0.05: it may do slightly
    # better, and must not do more than 3% worse
    assert found.latency_ms <= best.latency_ms * 1.03
    assert found.ratios[2] >= 0.35  # the memory constraint of the 400 kB device holds
    assert found.front and all(a2 >= a1 for (a1, _), (a2, _) in zip(found.front, found.front[1:]))


def test_slow_devices_are_pruned_more_than_fast_ones_and_beat_uniform():
    model = CurveModel(synthetic_curves(importance=(0.02, 0.02, 0.02)))
    bound = Bound(accuracy_floor=0.93)
    plan = nsga2_plan(model, SLOTS, bound)
    uniform = uniform_plan(model, SLOTS, bound)
    unpruned = unpruned_plan(model, SLOTS, bound)
    assert plan.ratios[0] > plan.ratios[1]  # the RPi 4 (9.3x) prunes more than the Orin (0.1x)
    assert plan.latency_ms < uniform.latency_ms < unpruned.latency_ms
    assert not unpruned.feasible  # 1 MB backbone does not fit the 400 kB device


def test_latency_slo_picks_the_most_accurate_point_within_it():
    acc = np.array([0.90, 0.94, 0.95])
    lat = np.array([1.0, 2.0, 5.0])
    assert pick(acc, lat, Bound(latency_slo_ms=2.5)) == 1
    assert pick(acc, lat, Bound(accuracy_floor=0.93)) == 1
    assert pick(acc, lat, Bound(latency_slo_ms=0.5)) == 0  # none meets it: the fastest
    with pytest.raises(PlanError, match="exactly one bound"):
        Bound()


def test_failure_plans_cover_every_single_loss_and_protect_survivors():
    model = CurveModel(synthetic_curves())
    plans = failure_plans(model, SLOTS)
    assert sorted(plans) == [0, 1, 2]
    for lost, plan in plans.items():
        assert lost not in plan.present and plan.ratios[lost] == 0.0
        survivors = unpruned_plan(model, SLOTS, present=plan.present)
        assert plan.accuracy >= survivors.accuracy - 0.02 - 1e-9
    # losing the most important view costs the most accuracy
    assert plans[0].accuracy < plans[2].accuracy
    again = replan(model, SLOTS, [1, 2])
    assert again.present == (1, 2)


def test_plan_and_curves_round_trip_through_json():
    curves = synthetic_curves()
    assert ViewCurves.from_dict(curves.to_dict()) == curves
    plan = nsga2_plan(CurveModel(curves), SLOTS, Bound(accuracy_floor=0.9))
    again = SlimPlan.from_dict(plan.to_dict())
    assert again.ratios == tuple(round(r, 4) for r in plan.ratios)
    assert again.devices == plan.devices
    with pytest.raises(PruningError, match="ratios starting at 0"):
        ViewCurves.from_dict({**curves.to_dict(), "ratios": [0.1, 0.2, 0.3, 0.4, 0.5]})
    with pytest.raises(PlanError, match="one device per view"):
        nsga2_plan(CurveModel(curves), SLOTS[:2], Bound(accuracy_floor=0.9))


def test_failure_planner_looks_up_single_failures_and_replans_several():
    model = CurveModel(synthetic_curves())
    plans = failure_plans(model, SLOTS)
    planner = failure_planner(model, SLOTS, plans)
    assert planner([0, 2]) == plans[1].ratios
    both = planner([1])  # two devices lost: NSGA-II for the one survivor
    assert both[0] == both[2] == 0.0 and 0.0 <= both[1] <= 0.9
