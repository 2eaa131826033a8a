"""The chain-with-cloud-tail planner: N edge stages + a cloud part, costed like the two-part build
(latency, cold start, the Lambda payload limit, price)."""

from __future__ import annotations

import pytest

from edgelesspart.errors import PlanError
from edgelesspart.planning.chain import ChainCosts, min_bottleneck
from edgelesspart.planning.chain_cloud import plan_chain_with_cloud
from edgelesspart.profiling.devices import load_device
from edgelesspart.profiling.links import Link

from .test_chain import toy_profile

WAN = Link("wan", uplink_mbps=10.0, downlink_mbps=10.0, rtt_ms=20.0)
MB = 2**20


def _costs(raw_bytes, latencies=(10, 20, 40, 70, 90, 100), *, codecs=("raw",), encoded=None):
    edge = toy_profile(list(latencies), list(raw_bytes), encoded=encoded, device="rpi4")
    return ChainCosts((edge, edge), link=WAN, codecs=codecs)


def _cloud(latencies=(10, 20, 40, 70, 90, 100), factor=0.1):
    return toy_profile(list(latencies), [100] * len(latencies), device="cloud", factor=factor)


def test_plan_has_n_edge_stages_and_a_cloud_stage_with_its_costs():
    # GIVEN two edge nodes, a 10x faster cloud and small boundaries
    costs = _costs([40_000] * 6)
    # WHEN the chain with a cloud tail is planned for latency
    plan = plan_chain_with_cloud(costs, _cloud(), load_device("gcf-2gb"))
    # THEN it has two edge stages and a cloud stage that ends at the output
    tiers = [s.options.get("tier") for s in plan.stages]
    assert tiers == ["edge", "edge", "cloud"] and plan.stages[-1].end == "output"
    assert plan.stages[1].end == plan.stages[2].start  # the hand-off
    tail = plan.parameters["cloud_tail"]
    # AND the tail is costed: latency parts add up, the price is the table's, a cold start counts
    parts = tail["edge_ms"] + tail["link_ms"] + tail["cloud_ms"] + 20.0 + 0.01 * 1000.0
    assert tail["latency_ms"] == pytest.approx(parts)
    assert tail["cost_per_million"] == pytest.approx(tail["cost_per_request"] * 1e6)
    assert tail["cost_per_request"] > 0
    assert tail["provider"] == "gcf" and tail["payload_limit"] is None
    # AND the edge chain is the exact bottleneck optimum for a chain ending at the hand-off
    pos = [c["handoff"] for c in tail["candidates"]].index(tail["handoff"])
    assert tail["edge_bottleneck_ms"] == pytest.approx(min_bottleneck(costs, end=pos + 1)[0])


def test_latency_pushes_work_to_the_fast_cloud_and_cost_keeps_it_on_the_edge():
    # (Lambda bills per ms; GCF's 100 ms increments would price both hand-offs the same)
    costs = _costs([40_000] * 6)
    fast = plan_chain_with_cloud(costs, _cloud(), load_device("lambda-2gb"))
    cheap = plan_chain_with_cloud(
        costs, _cloud(), load_device("lambda-2gb"), objective="expected-cost"
    )
    # the earliest hand-off (2 edge stages need 1 inner cut) vs the latest one
    assert fast.parameters["cloud_tail"]["handoff"] == "c2"
    assert cheap.parameters["cloud_tail"]["handoff"] == "c5"
    assert (
        cheap.parameters["cloud_tail"]["cost_per_request"]
        < fast.parameters["cloud_tail"]["cost_per_request"]
    )


def test_lambda_payload_limit_refuses_big_hand_offs_and_says_why():
    # GIVEN boundaries of 8 MB except one of 1 MB at c4, on Lambda (6 MB request limit)
    costs = _costs([8 * MB, 8 * MB, 8 * MB, 1 * MB, 8 * MB, 100])
    plan = plan_chain_with_cloud(costs, _cloud(), load_device("lambda-2gb"))
    tail = plan.parameters["cloud_tail"]
    # THEN the only hand-off that fits is chosen, and the refused ones are listed with sizes
    assert tail["handoff"] == "c4" and tail["wire_bytes"] <= tail["payload_limit"]
    assert {r["handoff"] for r in tail["refused"]} == {"c2", "c3", "c5"}
    # AND with no hand-off that fits, the planner refuses with the smallest size and a fix
    too_big = _costs([8 * MB] * 5 + [100])
    with pytest.raises(PlanError, match="No hand-off to lambda-2gb fits .* compressing codec"):
        plan_chain_with_cloud(too_big, _cloud(), load_device("lambda-2gb"))


def test_unknown_objective_is_refused():
    with pytest.raises(PlanError, match="Unknown objective 'fastest'"):
        plan_chain_with_cloud(
            _costs([100] * 6), _cloud(), load_device("gcf-2gb"), objective="fastest"
        )
