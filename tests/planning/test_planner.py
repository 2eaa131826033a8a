"""Tests for the planner (edgelesspart.planning.planner, .placement, .objective) on synthetic
profiles.

Every expected answer is computed by hand from the toy profile below (see docs/planner.md).
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgelesspart.errors import PlanError
from edgelesspart.planning import planner
from edgelesspart.planning.placement import PARETO_UPPER
from edgelesspart.profiling.devices import DeviceProfile, load_device
from edgelesspart.profiling.links import Link
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile
from edgelesspart.runtime.plan import Plan, Stage

NAMES = ("c1", "c2", "c3", "c4", "c5", "output")
LATENCY = (10.0, 20.0, 40.0, 70.0, 90.0, 100.0)
MEMORY = (100, 250, 400, 600, 800, 1000)
WEIGHTS = (10, 50, 150, 300, 500, 700)
BOUNDARY = (8000, 4000, 4000, 2000, 1000, 40)


def make_profile(
    latency: tuple[float, ...] = LATENCY,
    memory: tuple[int, ...] = MEMORY,
    boundary: tuple[int, ...] = BOUNDARY,
    weights: tuple[int, ...] | None = None,
) -> ModelProfile:
    """A profile with one entry per latency value; the last one is named ``output``."""
    names = [f"c{i + 1}" for i in range(len(latency) - 1)] + ["output"]
    weights = weights if weights is not None else tuple(m // 2 for m in memory)
    cps = tuple(
        CutPointProfile(n, i, lat, mem, w, (1,), b)
        for i, (n, lat, mem, w, b) in enumerate(zip(names, latency, memory, weights, boundary))
    )
    return ModelProfile("toy", "host", (8, 8, 1), cps)


@pytest.fixture
def host() -> ModelProfile:
    """The toy profile: c1..c5 at 10, 20, 40, 70, 90 ms; the full model takes 100 ms."""
    return make_profile(weights=WEIGHTS)


@pytest.fixture
def edge(host: ModelProfile) -> ModelProfile:
    """The toy model on an edge device 2x slower than the host."""
    return host.scaled("slow-edge", 2.0)


@pytest.fixture
def cloud(host: ModelProfile) -> ModelProfile:
    """The toy model on a cloud device 2x faster than the host (full model: 50 ms)."""
    return host.scaled("fast-cloud", 0.5)


# ----------------------------------------------------------------------------------- split rules


def test_latency_rule_picks_deepest_prefix_within_cloud_time(edge, cloud):
    # GIVEN edge latencies 20, 40, 80, ... ms and the full model at 50 ms in the cloud
    # WHEN the latency rule splits
    split = planner.split_by_latency(edge, cloud)
    # THEN the split is c2 (40 ms <= 50 ms < 80 ms at c3)
    assert split == "c2"


def test_latency_rule_never_returns_output(host):
    # GIVEN an edge so fast that the whole model (50 ms) fits the cloud's 100 ms
    fast_edge = host.scaled("fast-edge", 0.5)
    # WHEN the latency rule splits
    # THEN it keeps one split and stops at the last internal cut point
    assert planner.split_by_latency(fast_edge, host) == "c5"


def test_latency_rule_without_feasible_split_explains_numbers(edge, host):
    # GIVEN a cloud that runs the whole model in 10 ms while c1 takes 20 ms on the edge
    fast_cloud = host.scaled("fast-cloud", 0.1)
    # WHEN the latency rule splits
    # THEN the error gives both latencies and the way out
    with pytest.raises(
        PlanError,
        match=r"first cut point 'c1' already takes 20 ms on 'slow-edge', more than the full "
        r"model's 10 ms on 'fast-cloud'.*memory constraint",
    ):
        planner.split_by_latency(edge, fast_cloud)


@pytest.mark.parametrize(("fraction", "split"), [(0.7, "c4"), (0.4, "c3"), (0.99, "c5")])
def test_memory_rule_picks_deepest_prefix_within_fraction(host, fraction, split):
    # GIVEN prefix memories 100, 250, 400, 600, 800 of a 1000-byte model
    # WHEN the memory rule splits at the fraction (the budget is inclusive)
    # THEN the deepest prefix within fraction x 1000 bytes is chosen
    assert planner.split_by_memory(host, fraction) == split


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1, "0.7", True])
def test_memory_rule_rejects_bad_fraction(host, fraction):
    # GIVEN a fraction outside (0, 1) or not a number
    # WHEN the memory rule splits
    # THEN the error names the received value
    with pytest.raises(PlanError, match="memory_fraction must be"):
        planner.split_by_memory(host, fraction)


def test_memory_rule_too_small_fraction_says_minimum(host):
    # GIVEN a 5% budget (50 bytes) below the first prefix (100 bytes)
    # WHEN the memory rule splits
    # THEN the error says the smallest fraction that works
    with pytest.raises(PlanError, match="Raise memory_fraction to at least 0.100"):
        planner.split_by_memory(host, 0.05)


def test_memory_rule_refuses_split_over_device_budget(host):
    # GIVEN a device with a 450-byte budget and a 70% fraction that picks c4 (600 bytes)
    device = DeviceProfile("tiny-board", "edge", memory_bytes=450, speed_factor=1.0)
    # WHEN the memory rule splits for that device
    # THEN it refuses and names the deepest cut point that fits
    with pytest.raises(PlanError, match=r"'tiny-board' has a budget.*deepest cut point .* 'c3'"):
        planner.split_by_memory(host, 0.7, device)
    assert planner.split_by_memory(host, 0.4, device) == "c3"


def test_profiles_with_different_cut_points_are_rejected(host):
    # GIVEN an edge profile and a cloud profile of another model
    other = make_profile(latency=(1.0, 2.0, 3.0), memory=(1, 2, 3), boundary=(1, 1, 1))
    # WHEN the latency rule compares them
    # THEN the mismatch is reported
    with pytest.raises(PlanError, match="different cut points"):
        planner.split_by_latency(host, other)


def test_model_without_internal_cut_point_cannot_split():
    # GIVEN a profile whose only entry is the output
    single = make_profile(latency=(5.0,), memory=(10,), boundary=(4,))
    # WHEN either rule splits
    # THEN the error says why
    with pytest.raises(PlanError, match="no internal cut point"):
        planner.split_by_memory(single, 0.5)
    with pytest.raises(PlanError, match="no internal cut point"):
        planner.split_by_latency(single, single)


# ---------------------------------------------------------------------------------- exit targets


def test_exit_targets_linear_and_pareto():
    # GIVEN the two placement rules
    # WHEN targets for 1..3 exits are computed
    # THEN linear spaces them evenly and pareto follows the truncated 80/20 quantiles
    assert planner.exit_targets(3, "linear") == (0.25, 0.5, 0.75)
    assert planner.exit_targets(1, "pareto") == pytest.approx((0.184236,), abs=1e-6)
    assert planner.exit_targets(2, "pareto") == pytest.approx((0.102080, 0.309326), abs=1e-6)
    assert planner.exit_targets(3, "pareto") == pytest.approx(
        (0.070640, 0.184236, 0.400581), abs=1e-6
    )
    assert PARETO_UPPER == pytest.approx(4.0)
    assert planner.exit_targets(0, "pareto") == ()


@pytest.mark.parametrize(
    ("placement", "n", "expected"),
    [
        ("linear", 1, ("c3",)),
        ("linear", 2, ("c2", "c3")),
        ("linear", 3, ("c2", "c3", "c4")),
        ("pareto", 1, ("c1",)),
        ("pareto", 2, ("c1", "c2")),
        ("pareto", 3, ("c1", "c2", "c3")),
    ],
)
def test_place_exits_in_edge_part(host, placement, n, expected):
    # GIVEN the edge part input..c4 whose candidates sit at latency depths 1/7, 2/7, 4/7, 1
    # WHEN n exits are placed
    # THEN they snap to the hand-computed cut points (the split c4 itself may hold an exit)
    assert planner.place_exits(host, "input", "c4", n, placement) == expected


def test_place_exits_dedupes_when_part_is_short(host):
    # GIVEN the cloud part c4..output, whose only candidate is c5 ("output" never is)
    # WHEN three exits are asked
    # THEN one exit is returned, never duplicates; an empty part returns none
    assert planner.place_exits(host, "c4", "output", 3, "linear") == ("c5",)
    assert planner.place_exits(host, "c5", "output", 2, "pareto") == ()


def test_place_exits_index_depth_breaks_ties_to_shallower(host):
    # GIVEN the part input..c3 by index depth: candidates at 1/3, 2/3, 1
    # WHEN one exit targets 0.5 (equally near 1/3 and 2/3)
    # THEN the shallower candidate wins
    assert planner.place_exits(host, "input", "c3", 1, "linear", depth="index") == ("c1",)
    assert planner.place_exits(host, "input", "c4", 3, "linear", depth="index") == (
        "c1",
        "c2",
        "c3",
    )


def test_place_exits_rejects_bad_arguments(host):
    # GIVEN too many exits, an unknown rule, an unknown cut point and a reversed part
    # WHEN exits are placed
    # THEN each error names the problem
    with pytest.raises(PlanError, match=r"integer in 0\.\.3, got 4"):
        planner.place_exits(host, "input", "c4", 4, "linear")
    with pytest.raises(PlanError, match="Unknown exit placement 'zipf'"):
        planner.place_exits(host, "input", "c4", 1, "zipf")
    with pytest.raises(PlanError, match="Cut point 'c9' is not in the profile"):
        planner.place_exits(host, "input", "c9", 1, "linear")
    with pytest.raises(PlanError, match="must end after it starts"):
        planner.place_exits(host, "c4", "c2", 1, "linear")
    with pytest.raises(PlanError, match="edge exits must be an integer"):
        planner.exits_pair((4, 0))


# ----------------------------------------------------------------------------------------- plans


def test_plan_split_memory_fills_stages(host):
    # GIVEN the toy model with 70% of memory on the edge and 2 exits per part
    # WHEN the plan is made
    plan = planner.plan_split(host, host, constraint="memory", exits_per_part=2)
    # THEN the edge runs input..c4 with linear exits, the cloud c4..output with its one candidate
    edge_stage, cloud_stage = plan.stages
    assert (edge_stage.name, edge_stage.start, edge_stage.end) == ("edge", "input", "c4")
    assert edge_stage.exits == ("c2", "c3")
    assert (cloud_stage.name, cloud_stage.start, cloud_stage.end) == ("cloud", "c4", "output")
    assert cloud_stage.exits == ("c5",)
    assert (edge_stage.predicted_latency_ms, edge_stage.predicted_memory_bytes) == (70.0, 600)
    # cloud: 100 - 70 ms; memory bound = total 1000 - weights up to c4 (300)
    assert (cloud_stage.predicted_latency_ms, cloud_stage.predicted_memory_bytes) == (30.0, 700)
    assert plan.boundary_bytes == (2000,)
    assert plan.cut_points == NAMES[:-1]
    assert plan.parameters["memory_fraction"] == 0.7
    assert "'c4'" in plan.rationale and "0.7" in plan.rationale


def test_plan_json_round_trip(edge, cloud):
    # GIVEN a latency plan with pareto exits and named devices
    rpi, gcf = load_device("rpi4"), load_device("gcf-2gb")
    plan = planner.plan_split(
        edge,
        cloud,
        constraint="latency",
        placement="pareto",
        exits_per_part=(1, 3),
        edge_device=rpi,
        cloud_device=gcf,
    )
    # WHEN it goes through JSON text and back
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    # THEN nothing is lost, and the devices are named in the stages
    assert again == plan
    assert (plan.stages[0].device, plan.stages[1].device) == ("rpi4", "gcf-2gb")
    # edge part: c1 at depth 0.5 is nearest 0.184; cloud part: c3, c4, c5 at 0.25, 0.625, 0.875
    assert plan.split == "c2"
    assert plan.stages[0].exits == ("c1",)
    assert plan.stages[1].exits == ("c3", "c4", "c5")


def test_plan_split_rejects_unknown_constraint(host):
    # GIVEN an unknown constraint name
    # WHEN a plan is made
    # THEN the error lists the valid constraints
    with pytest.raises(PlanError, match="Unknown constraint 'speed'; choose one of latency"):
        planner.plan_split(host, host, constraint="speed")


def test_plan_pipeline_minimises_bottleneck(host):
    # GIVEN the toy model (cumulative 10, 20, 40, 70, 90, 100 ms) on three nodes
    # WHEN a DEFER-style pipeline is planned
    plan = planner.plan_pipeline(host, 3, devices=["n0", "n1", "n2"])
    # THEN cuts at c3 and c4 give stages of 40, 30, 30 ms (no split does better than 40 ms)
    assert [s.name for s in plan.stages] == ["edge-0", "edge-1", "edge-2"]
    assert [(s.start, s.end) for s in plan.stages] == [
        ("input", "c3"),
        ("c3", "c4"),
        ("c4", "output"),
    ]
    assert [s.predicted_latency_ms for s in plan.stages] == [40.0, 30.0, 30.0]
    assert plan.boundary_bytes == (4000, 2000)
    assert Plan.from_dict(plan.to_dict()) == plan
    with pytest.raises(PlanError, match="n_stages must be an integer in 1..6"):
        planner.plan_pipeline(host, 7)


# ------------------------------------------------------------------------------- objective mode


@pytest.fixture
def two_exit_plan() -> Plan:
    """Split at c3, one edge exit at c2 and one cloud exit at c4."""
    return Plan(
        constraint="memory",
        placement="linear",
        stages=(
            Stage("edge", "slow-edge", "input", "c3", ("c2",)),
            Stage("cloud", "fast-cloud", "c3", "output", ("c4",)),
        ),
    )


def test_expected_latency_two_exit_example(two_exit_plan, edge, cloud):
    # GIVEN rates 0.5 at c2 and 0.6 at c4, 1 ms per exit, and 4000 bytes over 8 Mbit/s + 10 ms
    rates = {"c2": 0.5, "c4": 0.6}
    link = Link("test", uplink_mbps=8.0, downlink_mbps=8.0, rtt_ms=10.0)
    # WHEN the expected latency is computed
    value = planner.expected_latency(two_exit_plan, edge, cloud, rates, link, 1.0)
    # THEN 0.5 x (40 + 1) + 0.3 x (81 + 14 + 15 + 1) + 0.2 x (81 + 14 + 30 + 1) = 79 ms
    assert value == pytest.approx(79.0)


def test_expected_cost_two_exit_example(two_exit_plan, edge, cloud):
    # GIVEN the same plan and a price of 1e-6 per call + 1e-8 per cloud ms
    rates = {"c2": 0.5, "c4": 0.6}
    # WHEN the expected cost is computed
    value = planner.expected_cost(
        two_exit_plan, edge, cloud, rates, lambda ms: 1e-6 + ms * 1e-8, 1.0
    )
    # THEN 0.3 x cost(16 ms) + 0.2 x cost(31 ms) = 6.1e-7 (edge answers cost nothing)
    assert value == pytest.approx(0.3 * 1.16e-6 + 0.2 * 1.31e-6)


def test_simple_cost_fn_prices_lambda_example():
    # GIVEN Lambda x86 prices at 2048 MB (REFERENCE.md 2.1) and GCF-style 100 ms billing
    lam = planner.simple_cost_fn(2e-7, 1.66667e-5, 2048)
    gcf_like = planner.simple_cost_fn(4e-7, 2.5e-6, 2048, billing_increment_ms=100)
    # WHEN a 150 ms cloud part is priced
    # THEN Lambda costs $5.2 per 1M calls and the 100 ms steps bill 200 ms
    assert lam(150.0) * 1e6 == pytest.approx(5.2, rel=1e-4)
    assert gcf_like(150.0) == pytest.approx(4e-7 + 0.2 * 2 * 2.5e-6)
    with pytest.raises(PlanError, match="Prices must be >= 0"):
        planner.simple_cost_fn(-1.0, 1.0, 128)


def test_default_exit_rates_grow_with_depth(host):
    # GIVEN the toy profile
    # WHEN the prior exit rates are built
    rates = planner.default_exit_rates(host)
    # THEN each is 0.9 x the relative latency depth, and output has none
    assert rates == pytest.approx({"c1": 0.09, "c2": 0.18, "c3": 0.36, "c4": 0.63, "c5": 0.81})


def test_objective_errors_are_explained(two_exit_plan, edge, cloud):
    # GIVEN missing inputs of the objective mode
    # WHEN objective plans are asked without a link, without prices, or with a bad rate
    # THEN each error says what to pass
    with pytest.raises(PlanError, match="needs a link"):
        planner.plan_objective(edge, cloud, objective="expected-latency")
    with pytest.raises(PlanError, match="needs cost_fn or a cloud device"):
        planner.plan_objective(edge, cloud, objective="expected-cost")
    with pytest.raises(PlanError, match=r"Exit rate of 'c2' must be within \[0, 1\]"):
        planner.expected_latency(two_exit_plan, edge, cloud, {"c2": 1.5}, Link("l", 1, 1, 0))
    with pytest.raises(PlanError, match="No exit rate for cut point 'c4'"):
        planner.expected_latency(two_exit_plan, edge, cloud, {"c2": 0.5}, Link("l", 1, 1, 0))
    with pytest.raises(PlanError, match="Unknown objective 'throughput'"):
        planner.plan_objective(edge, cloud, objective="throughput", link=Link("l", 1, 1, 0))


def test_plan_objective_respects_memory_and_payload_limits(edge, cloud):
    # GIVEN a board that holds at most 450 bytes and a payload limit of 4000 bytes
    board = DeviceProfile("board", "edge", memory_bytes=450, speed_factor=2.0)
    link = Link("lab", 100.0, 100.0, 1.0)
    # WHEN the expected-latency plan is searched
    plan = planner.plan_objective(
        edge,
        cloud,
        objective="expected-latency",
        link=link,
        edge_device=board,
        max_boundary_bytes=4000,
    )
    # THEN only c1..c3 fit the board and of those only c2/c3 fit the payload
    assert plan.split in {"c2", "c3"}
    assert plan.parameters["feasible_splits"] == 2
    with pytest.raises(PlanError, match="No split fits"):
        planner.plan_objective(
            edge, cloud, objective="expected-latency", link=link, max_boundary_bytes=10
        )


def test_expected_cost_defaults_to_bundled_prices(edge, cloud):
    # GIVEN the GCF 2 GB tier and no cost function
    gcf = load_device("gcf-2gb")
    # WHEN the expected-cost plan is searched
    plan = planner.plan_objective(
        edge, cloud, objective="expected-cost", cloud_device=gcf, exits_per_part=(2, 2)
    )
    # THEN the value equals the expected cost under the GCF 1st-gen price function
    from edgelesspart.profiling.pricing import load_prices, make_price_fn

    price = make_price_fn(load_prices("gcf"), 2048)
    expected = planner.expected_cost(plan, edge, cloud, None, price)
    assert plan.parameters["objective_value"] == pytest.approx(expected)
    assert plan.constraint == "expected-cost"
    assert "$" in plan.rationale


@st.composite
def objective_cases(draw: st.DrawFn) -> dict:
    """A random toy model (2..6 entries), device factors, exit rates, link and overhead."""
    size = draw(st.integers(min_value=2, max_value=6))
    steps = draw(st.lists(st.floats(0.5, 50.0), min_size=size, max_size=size))
    latency = tuple(math.fsum(steps[: i + 1]) for i in range(size))
    boundary = tuple(draw(st.lists(st.integers(1, 200_000), min_size=size, max_size=size)))
    host = make_profile(latency, tuple(range(10, 10 * size + 1, 10)), boundary)
    rates = draw(st.lists(st.floats(0.0, 1.0), min_size=size - 1, max_size=size - 1))
    return {
        "edge": host.scaled("edge", draw(st.floats(0.1, 10.0))),
        "cloud": host.scaled("cloud", draw(st.floats(0.1, 10.0))),
        "rates": {f"c{i + 1}": r for i, r in enumerate(rates)},
        "link": Link("l", draw(st.floats(0.5, 100.0)), 10.0, draw(st.floats(0.0, 100.0))),
        "overhead": draw(st.floats(0.0, 5.0)),
        "limits": (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
    }


def _step_price(cloud_ms: float) -> float:
    """A billing-like price: 4e-7 per call plus 1e-6 per started 20 ms."""
    return 4e-7 + max(1, math.ceil(cloud_ms / 20.0 - 1e-9)) * 1e-6


@settings(max_examples=60, deadline=None)
@given(case=objective_cases(), objective=st.sampled_from(["expected-latency", "expected-cost"]))
def test_exhaustive_plan_objective_equals_brute_force(case, objective):
    # GIVEN a random profile pair, exit rates, link, overhead and per-part exit limits
    kwargs = {
        "objective": objective,
        "link": case["link"],
        "exit_rates": case["rates"],
        "exits_per_part": case["limits"],
        "exit_overhead_ms": case["overhead"],
        "cost_fn": _step_price,
    }
    # WHEN the dynamic-programming search and the brute-force enumeration run
    plan = planner.plan_objective(case["edge"], case["cloud"], search="exhaustive", **kwargs)
    best = planner.brute_force_optimum(case["edge"], case["cloud"], **kwargs)
    heuristic = planner.plan_objective(case["edge"], case["cloud"], **kwargs)
    # THEN they reach the same optimum, the plan's stored value is its real expected value,
    # and the placement rule can only be as good or worse
    value = plan.parameters["objective_value"]
    assert value == pytest.approx(best.value, rel=1e-9, abs=1e-15)
    if objective == "expected-latency":
        recomputed = planner.expected_latency(
            plan, case["edge"], case["cloud"], case["rates"], case["link"], case["overhead"]
        )
    else:
        recomputed = planner.expected_cost(
            plan, case["edge"], case["cloud"], case["rates"], _step_price, case["overhead"]
        )
    assert recomputed == pytest.approx(value, rel=1e-9, abs=1e-15)
    assert all(len(s.exits) <= lim for s, lim in zip(plan.stages, case["limits"]))
    assert heuristic.parameters["objective_value"] >= best.value * (1 - 1e-9) - 1e-15


@settings(max_examples=40, deadline=None)
@given(case=objective_cases(), placement=st.sampled_from(["linear", "pareto"]))
def test_placement_search_is_best_placement_plan(case, placement):
    # GIVEN a random case and a placement rule
    kwargs = {"exit_rates": case["rates"], "exit_overhead_ms": case["overhead"]}
    # WHEN plan_objective searches splits with that rule
    plan = planner.plan_objective(
        case["edge"],
        case["cloud"],
        objective="expected-latency",
        link=case["link"],
        placement=placement,
        exits_per_part=case["limits"],
        **kwargs,
    )
    # THEN no split with the same rule gives a lower expected latency, and exits stay in parts
    for split in [cp.name for cp in case["edge"].cut_points[:-1]]:
        exits = (
            planner.place_exits(case["edge"], "input", split, case["limits"][0], placement),
            planner.place_exits(case["cloud"], split, "output", case["limits"][1], placement),
        )
        other = Plan(
            "x",
            placement,
            (
                Stage("edge", "e", "input", split, exits[0]),
                Stage("cloud", "c", split, "output", exits[1]),
            ),
        )
        value = planner.expected_latency(
            other, case["edge"], case["cloud"], case["rates"], case["link"], case["overhead"]
        )
        assert plan.parameters["objective_value"] <= value * (1 + 1e-9) + 1e-12
    edge_stage, cloud_stage = plan.stages
    names = [cp.name for cp in case["edge"].cut_points]
    assert all(names.index(e) <= names.index(edge_stage.end) for e in edge_stage.exits)
    assert all(names.index(e) > names.index(cloud_stage.start) for e in cloud_stage.exits)
    assert "output" not in plan.exits
