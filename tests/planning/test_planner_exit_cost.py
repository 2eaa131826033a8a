"""Exit-head cost in the objective planner: heads are charged per cut point and device."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_planner import make_profile, objective_cases

from edgelesspart.errors import PlanError
from edgelesspart.exits.cost import HeadCost, device_head_ms
from edgelesspart.planning import planner
from edgelesspart.planning.objective import Objective
from edgelesspart.profiling.links import Link

RATES = {"c1": 0.6, "c2": 0.6, "c3": 0.6, "c4": 0.6, "c5": 0.6}
LINK = Link("slow", 1.0, 50.0, 100.0)


def _plan(heads=None, **kwargs):
    host = make_profile()
    return planner.plan_objective(
        host.scaled("edge", 2.0), host.scaled("cloud", 0.5), objective="expected-latency",
        link=LINK, exit_rates=RATES, search="exhaustive", exits_per_part=(2, 2),
        exit_head_ms=heads, **kwargs,
    )  # fmt: skip


def test_an_expensive_head_is_not_placed_where_it_does_not_pay():
    # GIVEN the optimal plan when heads are free
    free = _plan()
    edge_exits = free.stages[0].exits
    assert edge_exits and free.parameters["exit_head_ms"] == "not charged"
    # WHEN the head at the first chosen edge exit costs more than the whole model
    costly = _plan(({edge_exits[0]: 1000.0}, {}))
    # THEN the planner no longer puts an exit there, and the plan says heads were charged
    assert edge_exits[0] not in costly.stages[0].exits
    assert costly.parameters["exit_head_ms"] == "charged per cut point"
    assert costly.parameters["objective_value"] >= free.parameters["objective_value"]


def test_head_cost_is_charged_on_top_of_the_fixed_overhead():
    objective = Objective("expected-latency", RATES, link=LINK, exit_overhead_ms=0.5,
                          edge_exit_ms={"c1": 2.0}, cloud_exit_ms={"c1": 0.25})  # fmt: skip
    assert objective.exit_ms("c1", cloud=False) == 2.5
    assert objective.exit_ms("c1", cloud=True) == 0.75
    assert objective.exit_ms("c2", cloud=False) == 0.5
    with pytest.raises(PlanError, match="edge_exit_ms must map cut points to ms >= 0"):
        Objective("expected-latency", RATES, link=LINK, edge_exit_ms={"c1": -1.0})


@settings(max_examples=40, deadline=None)
@given(
    case=objective_cases(),
    objective=st.sampled_from(["expected-latency", "expected-cost"]),
    head=st.lists(st.floats(0.0, 30.0), min_size=12, max_size=12),
)
def test_exhaustive_search_with_head_costs_equals_brute_force(case, objective, head):
    # GIVEN random per-cut head costs on each device (cloud cost with a step price)
    names = list(case["rates"])
    heads = (dict(zip(names, head[:6])), dict(zip(names, head[6:])))

    def price(ms: float) -> float:
        return 4e-7 + max(1, math.ceil(ms / 20.0 - 1e-9)) * 1e-6

    kwargs = {
        "objective": objective, "link": case["link"], "exit_rates": case["rates"],
        "exits_per_part": case["limits"], "exit_overhead_ms": case["overhead"],
        "cost_fn": price, "exit_head_ms": heads,
    }  # fmt: skip
    # WHEN dynamic programming and enumeration search THEN they agree
    plan = planner.plan_objective(case["edge"], case["cloud"], search="exhaustive", **kwargs)
    best = planner.brute_force_optimum(case["edge"], case["cloud"], **kwargs)
    assert plan.parameters["objective_value"] == pytest.approx(best.value, rel=1e-9, abs=1e-15)


def test_device_head_ms_uses_the_backbones_ms_per_mac():
    costs = {"c1": HeadCost(params=10, macs=1_000), "c2": HeadCost(params=20, macs=4_000)}
    assert device_head_ms(costs, backbone_macs=100_000, full_model_ms=50.0) == {
        "c1": 0.5, "c2": 2.0,
    }  # fmt: skip
    assert device_head_ms(costs, 0, 50.0) == {"c1": 0.0, "c2": 0.0}
    assert HeadCost.from_dict(costs["c2"].to_dict()) == costs["c2"]
    assert costs["c2"].param_bytes == 80


@pytest.mark.needs_tf
def test_head_costs_count_the_rendered_heads_parameters_and_macs():
    from edgelesspart._lazy import keras
    from edgelesspart.exits.cost import head_costs, model_macs
    from edgelesspart.exits.heads import load_exit_definition

    k = keras()
    inputs = k.Input((8, 8, 3))
    x = k.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = k.layers.ReLU(name="relu")(x)
    outputs = k.layers.Dense(5, activation="softmax", name="head")(k.layers.Flatten()(x))
    model = k.Model(inputs, outputs)
    # the backbone: conv 8*8*4 outputs x 27 MACs, relu 256, flatten 256, dense 256*5
    assert model_macs(model) == 8 * 8 * 4 * 27 + 256 + 256 + 256 * 5
    paper = head_costs(model, load_exit_definition(head="paper", pooling="avg"), ["relu"], 5)
    # the paper head: global average pooling (counted as its 4 outputs) then Dense 4 -> 5
    assert paper["relu"] == HeadCost(params=4 * 5 + 5, macs=4 + 4 * 5)
    sdn = head_costs(model, load_exit_definition(head="sdn"), ["input", "relu", "output"], 5)
    assert list(sdn) == ["relu"]  # input/output are not exit positions
    # sdn on 8x8x4: max+avg pool to 4x4 (concat 8 ch), 1x1 conv to 64, BN, Dense 1024 -> 5
    assert sdn["relu"].params == 8 * 64 + 4 * 64 + 1024 * 5 + 5


@pytest.mark.needs_tf
def test_a_cut_point_the_head_cannot_be_built_on_gets_no_cost(tmp_path):
    from edgelesspart._lazy import keras
    from edgelesspart.exits.cost import head_costs
    from edgelesspart.exits.heads import load_exit_definition

    k = keras()
    inputs = k.Input((8, 8, 3))
    x = k.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    flat = k.layers.Flatten(name="flat")(x)
    model = k.Model(inputs, k.layers.Dense(5, activation="softmax", name="head")(flat))
    spec = tmp_path / "conv.yaml"
    spec.write_text("layers:\n  - {layer: Conv2D, filters: 4, kernel_size: 3}\n")
    costs = head_costs(model, load_exit_definition(spec=spec), ["conv", "flat"], 5)
    assert list(costs) == ["conv"]  # a Conv2D spec cannot read the rank-2 'flat' tensor
