"""The chain planner: exact bottleneck DP over cut points and link codecs, vs brute force."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgelesspart.errors import PlanError
from edgelesspart.planning import planner
from edgelesspart.planning.chain import (
    FRAME_HEADER_BYTES,
    ChainCosts,
    chain_stage_costs,
    equal_layer_cuts,
    min_bottleneck,
    plan_chain,
)
from edgelesspart.profiling.links import Link
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile
from edgelesspart.runtime.plan import Plan

LAN = Link("lan100", uplink_mbps=100.0, downlink_mbps=100.0, rtt_ms=0.0)


def toy_profile(latencies, raw_bytes, *, encoded=None, device="host", factor=1.0) -> ModelProfile:
    """Cut points c1..cK at cumulative ``latencies`` (the last is the whole model)."""
    cps = []
    for i, (lat, nbytes) in enumerate(zip(latencies, raw_bytes)):
        last = i == len(latencies) - 1
        cps.append(
            CutPointProfile(
                name="output" if last else f"c{i + 1}",
                index=i,
                latency_ms=lat * factor,
                memory_bytes=1000 * (i + 1),
                weight_bytes=100 * (i + 1),
                boundary_shape=(nbytes // 4,),
                boundary_bytes=nbytes,
                encoded_bytes=dict((encoded or {}).get(i, {})),
            )
        )
    return ModelProfile(
        "toy", device, (8,), tuple(cps), extra={"latency_factor": factor}, method="litert"
    )


def brute_force(costs: ChainCosts) -> float:
    """The best bottleneck over every partition and every codec per link."""
    n, last = len(costs.profiles), costs.last
    best = float("inf")
    for cuts in itertools.combinations(range(last), n - 1):
        for codecs in itertools.product(costs.codecs, repeat=n - 1):
            stages = chain_stage_costs(costs, list(zip(cuts, codecs)))
            best = min(best, max(s.pace_ms for s in stages))
    return best


def test_dp_balances_compute_without_a_link():
    # GIVEN cumulative 10, 20, 40, 70, 90, 100 ms and free transfers
    profile = toy_profile([10, 20, 40, 70, 90, 100], [100] * 6)
    costs = ChainCosts((profile,) * 3)
    # WHEN three nodes are planned
    bottleneck, cuts = min_bottleneck(costs)
    # THEN the stages take 40, 30, 30 ms (cuts after c3 and c4)
    assert bottleneck == pytest.approx(40.0)
    assert [p for p, _ in cuts] == [2, 3]


def test_link_moves_the_cut_away_from_a_big_tensor():
    # GIVEN equal compute halves but a 1.25 MB tensor at c2 (100 ms on 100 Mbit/s)
    profile = toy_profile([25, 50, 75, 100], [1000, 1_250_000, 1000, 40])
    costs = ChainCosts((profile,) * 2, link=LAN, result_bytes=40)
    plan = plan_chain(costs)
    # THEN the planner avoids c2 (100 ms on the wire); c1 leaves node 2 with 75 ms of compute
    assert plan.stages[0].end == "c1"
    cost = plan.stages[0].options["cost"]
    assert cost["transfer_ms"] == pytest.approx(1000 * 8 / 100e6 * 1000)
    assert plan.parameters["bottleneck_ms"] == pytest.approx(75.0)
    # AND without overlap (send after compute) node 2 also pays for sending the result
    serial = plan_chain(ChainCosts((profile,) * 2, link=LAN, result_bytes=40, overlap_link=False))
    assert serial.parameters["bottleneck_ms"] == pytest.approx(75 + 40 * 8 / 100e6 * 1000)
    assert Plan.from_dict(plan.to_dict()) == plan


def test_codec_per_link_is_chosen_when_it_pays():
    # GIVEN a big boundary that zfp+lz4 shrinks 10x (measured bytes in the profile)
    encoded = {1: {"raw": 1_250_000, "zfp+lz4": 125_000}}
    profile = toy_profile([25, 50, 75, 100], [1000, 1_250_000, 1000, 40], encoded=encoded)
    codec_ms = {"c2": {"raw": (0.0, 0.0), "zfp+lz4": (2.0, 1.0)}}
    costs = ChainCosts((profile,) * 2, link=LAN, codecs=("raw", "zfp+lz4"), codec_ms=codec_ms)
    plan = plan_chain(costs, layer_positions={"c1": 1, "c2": 2, "c3": 3, "output": 4})
    # THEN cutting at c2 with zfp+lz4 (node 1: 50 + 2 ms of CPU while 10 ms on the wire; node 2:
    # 1 + 50 ms) beats every raw split (c2 raw: 100 ms on the wire; c1 or c3: 75 ms of compute)
    assert plan.stages[0].end == "c2"
    assert plan.stages[0].options["codec_out"] == "zfp+lz4"
    assert plan.parameters["bottleneck_ms"] == pytest.approx(52.0)
    # AND DEFER's equal-layer split (c2, best single codec) is reported with the same costs
    assert plan.parameters["equal_layer"]["cuts"] == ["c2"]
    assert plan.parameters["codec_times"] == "measured"


def test_no_compression_where_the_link_has_slack():
    # GIVEN a boundary that takes 8 ms raw on the wire while each node computes 50 ms
    encoded = {1: {"raw": 100_000, "int8+zstd": 20_000}}
    profile = toy_profile([25, 50, 75, 100], [1000, 100_000, 1000, 40], encoded=encoded)
    codec_ms = {"c2": {"raw": (0.0, 0.0), "int8+zstd": (3.0, 2.0)}}
    costs = ChainCosts((profile,) * 2, link=LAN, codecs=("int8+zstd", "raw"), codec_ms=codec_ms)
    plan = plan_chain(costs)
    # THEN raw is kept (50 ms): compressing would cost node 1 3 ms more (53 ms) for nothing
    assert plan.stages[0].end == "c2"
    assert plan.stages[0].options["codec_out"] == "raw"
    assert plan.parameters["bottleneck_ms"] == pytest.approx(50.0)


def test_equal_bottlenecks_prefer_less_processor_time():
    # GIVEN node 2 computes 60 ms whatever node 1 sends, and a compressor with a free decode
    encoded = {0: {"raw": 100_000, "int8+zstd": 20_000}}
    profile = toy_profile([40, 100], [100_000, 40], encoded=encoded)
    codec_ms = {"c1": {"raw": (0.0, 0.0), "int8+zstd": (3.0, 0.0)}}
    costs = ChainCosts((profile,) * 2, link=LAN, codecs=("int8+zstd", "raw"), codec_ms=codec_ms)
    plan = plan_chain(costs)
    # THEN both codecs give a 60 ms bottleneck, and the one with less processor time in all
    # (raw: 40 + 60 ms, against 43 + 60 ms) is chosen although int8+zstd is listed first
    assert plan.parameters["bottleneck_ms"] == pytest.approx(60.0)
    assert plan.parameters["link_codecs"] == ["raw"]


def test_heterogeneous_nodes_get_unequal_layer_shares():
    # GIVEN a fast node (1x) then a slow node (3x) over a linear model
    host = [10.0 * (i + 1) for i in range(10)]
    fast = toy_profile(host, [100] * 10, device="fast", factor=1.0)
    slow = toy_profile(host, [100] * 10, device="slow", factor=3.0)
    plan = plan_chain(ChainCosts((fast, slow)))
    # THEN the fast node takes most layers: 80 ms vs 3 x 20 ms (c7 would leave 3 x 30 ms)
    assert plan.stages[0].end == "c8"
    assert [s.device for s in plan.stages] == ["fast", "slow"]
    assert plan.parameters["bottleneck_ms"] == pytest.approx(80.0)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.floats(0.5, 50.0), min_size=3, max_size=7),
    sizes=st.lists(st.integers(4, 2_000_000), min_size=7, max_size=7),
    n=st.integers(1, 3),
    factors=st.lists(st.floats(1.0, 4.0), min_size=3, max_size=3),
)
def test_dp_equals_brute_force(steps, sizes, n, factors):
    # GIVEN random compute steps, tensor sizes, node speeds and two codecs
    lat = list(itertools.accumulate(steps))
    encoded = {i: {"raw": sizes[i], "int8+zstd": max(1, sizes[i] // 5)} for i in range(len(lat))}
    profiles = tuple(
        toy_profile(lat, sizes[: len(lat)], encoded=encoded, device=f"n{k}", factor=factors[k])
        for k in range(n)
    )
    costs = ChainCosts(profiles, link=LAN, codecs=("raw", "int8+zstd"))
    # THEN the DP's bottleneck is the brute-force optimum
    assert min_bottleneck(costs)[0] == pytest.approx(brute_force(costs))


def test_first_node_pays_for_decoding_the_input():
    profile = toy_profile([10, 20, 30, 40], [100] * 4)
    costs = ChainCosts((profile,) * 2, input_decode_ms=5.0)
    stages = chain_stage_costs(costs, [(1, "raw")])
    assert stages[0].decode_ms == pytest.approx(5.0)
    assert stages[0].cpu_ms == pytest.approx(25.0)


def test_equal_layer_cuts_follow_layer_counts():
    profile = toy_profile([1, 2, 3, 4, 5, 6], [4] * 6)
    layers = {"c1": 10, "c2": 20, "c3": 50, "c4": 60, "c5": 90, "output": 100}
    assert equal_layer_cuts(profile, 2, layers) == (2,)  # c3, at 50 of 100 layers
    assert equal_layer_cuts(profile, 4, layers) == (1, 2, 3)  # 75: c4 and c5 tie, shallower


def test_too_many_nodes_is_an_actionable_error():
    profile = toy_profile([1, 2, 3], [4] * 3)
    assert min_bottleneck(ChainCosts((profile,) * 3))[0] == pytest.approx(1.0)
    with pytest.raises(PlanError, match="4 nodes need at least 3 internal cut points.*has 2"):
        min_bottleneck(ChainCosts((profile,) * 4))


def test_planner_plan_pipeline_delegates_to_the_chain_planner():
    profile = toy_profile([10, 20, 40, 70, 90, 100], [400] * 6)
    plan = planner.plan_pipeline(profile, 2, devices=["a", "b"], link=LAN)
    assert [s.name for s in plan.stages] == ["edge-0", "edge-1"]
    assert plan.parameters["link"]["name"] == "lan100"


def test_result_bytes_are_measured_or_marked_as_estimated():
    # GIVEN a 10-class output (40 bytes of float32 per sample)
    profile = toy_profile([25, 50, 75, 100], [1000, 1000, 1000, 40])
    # WHEN the build measured the result frame, the last stage sends exactly that
    measured = plan_chain(ChainCosts((profile,) * 2, link=LAN, result_bytes=312))
    last = measured.stages[-1].options["cost"]
    assert last["out_bytes"] == 312 and last["bytes_measured"] is True
    assert measured.parameters["result_bytes"] == 312
    assert measured.parameters["result_bytes_measured"] is True
    # AND without a measurement it is the output tensor plus a header estimate, marked so
    estimated = plan_chain(ChainCosts((profile,) * 2, link=LAN))
    last = estimated.stages[-1].options["cost"]
    assert last["out_bytes"] == 40 + FRAME_HEADER_BYTES and last["bytes_measured"] is False
    assert estimated.parameters["result_bytes_measured"] is False


def test_profiling_noise_within_the_tolerance_does_not_change_the_plan():
    # GIVEN 9 equal layers on 2 nodes: cutting after layer 4 or after layer 5 gives the same
    # bottleneck (5 layers), so timing noise alone decides the exact optimum
    import numpy as np

    rng = np.random.default_rng(0)
    step = 1.05**80.5 / 5  # the tied bottleneck sits mid-way in a 5 % step
    exact_cuts, planned = set(), set()
    for _ in range(20):
        steps = step * (1 + rng.uniform(-0.01, 0.01, size=9))  # +-1 % noise, like two builds
        profile = toy_profile(list(np.cumsum(steps)), [400] * 9)
        costs = ChainCosts((profile,) * 2)
        exact_cuts.add(plan_chain(costs, tolerance=0.0).stages[0].end)
        plan = plan_chain(costs)
        planned.add(plan.stages[0].end)
    # THEN the exact optimum flips between the two cuts, the planned one never does: within
    # the 5 % tolerance it takes the shallower cut, and records the tolerance it used
    assert exact_cuts == {"c4", "c5"}
    assert planned == {"c4"}
    assert plan.parameters["tolerance"] == 0.05
    assert plan.parameters["bottleneck_ms"] <= plan.parameters["exact_bottleneck_ms"] * 1.05


def test_a_tolerance_outside_0_1_is_refused():
    profile = toy_profile([10, 20, 30], [4] * 3)
    with pytest.raises(PlanError, match="tolerance must be in"):
        plan_chain(ChainCosts((profile,) * 2), tolerance=1.5)
