"""Threshold sweep and baselines on hand-built traces (no model, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgelesspart.errors import ConfigError, InputError
from edgelesspart.evaluation.baselines import Backbone, backbone_from_trace, baselines
from edgelesspart.evaluation.sweep import (
    LatencyModel,
    StageMemory,
    concat_traces,
    exit_accuracy,
    exit_costs,
    parse_thresholds,
    sweep,
)

MODEL = dict(edge_factor=2.0, cloud_factor=0.5)


def linear_price(cloud_ms: float) -> float:
    return cloud_ms * 1e-6


def test_exit_costs_match_hand_computation(hand_trace, fake_link):
    # GIVEN edge x2, cloud x0.5 and a link where the 8000-byte boundary takes 18 ms
    trace, _ = hand_trace
    costs = exit_costs(trace, LatencyModel(**MODEL, link=fake_link))
    # THEN exit_1 = 2*2, exit_2 = 4 + 3*2, exit_3 = 10 + 18 + 5*0.5, final = 30.5 + 4*0.5
    assert costs.latency_ms.tolist() == pytest.approx([4.0, 10.0, 30.5, 32.5])
    assert costs.cloud_ms.tolist() == pytest.approx([0.0, 0.0, 2.5, 4.5])
    assert costs.offloaded.tolist() == [False, False, True, True]


def test_codec_ratio_and_cold_start_enter_the_offload_path(hand_trace, fake_link):
    # GIVEN a codec that halves the boundary and a 50% chance of a 100 ms cold start
    trace, _ = hand_trace
    model = LatencyModel(**MODEL, link=fake_link, codec_ratio=0.5, cold_start_ms=100.0,
                         cold_start_prob=0.5)
    costs = exit_costs(trace, model)
    # THEN the transfer is 10 + 4 ms and the cold start adds 50 ms once, only when offloaded
    assert costs.latency_ms.tolist() == pytest.approx([4.0, 10.0, 10 + 14 + 50 + 2.5, 78.5])
    assert costs.cloud_ms.tolist() == pytest.approx([0.0, 0.0, 2.5, 4.5])


def test_offload_overhead_is_charged_once_per_hop_and_never_on_the_edge(hand_trace, fake_link):
    # GIVEN a 3 ms fixed cost per offload, with the link and without one
    trace, _ = hand_trace
    with_link = exit_costs(trace, LatencyModel(**MODEL, link=fake_link, offload_overhead_ms=3.0))
    no_link = exit_costs(trace, LatencyModel(**MODEL, offload_overhead_ms=3.0))
    # THEN only the offloaded exits pay it: 30.5 + 3 and 32.5 + 3 (the hand figures above)
    assert with_link.latency_ms.tolist() == pytest.approx([4.0, 10.0, 33.5, 35.5])
    assert no_link.latency_ms.tolist() == pytest.approx([4.0, 10.0, 10 + 3 + 2.5, 17.5])
    with pytest.raises(ConfigError, match="offload_overhead_ms"):
        LatencyModel(offload_overhead_ms=-1.0)


def test_sweep_row_matches_hand_computation(hand_trace, fake_link):
    # GIVEN the hand trace; WHEN swept at 0.9
    trace, labels = hand_trace
    (row,) = sweep(trace, labels, [0.9], latency_model=LatencyModel(**MODEL, link=fake_link),
                   price_fn=linear_price, memory=StageMemory(100, 300))
    # THEN s0->exit_1, s1->exit_2, s2->exit_3, s3->final, s4->exit_2 (all right)
    assert row.exit_mix == pytest.approx({"exit_1": 0.2, "exit_2": 0.4, "exit_3": 0.2,
                                          "final": 0.2})
    assert row.accuracy == 1.0
    assert row.offload_rate == pytest.approx(0.4)
    assert row.latency_mean_ms == pytest.approx((4 + 10 + 30.5 + 32.5 + 10) / 5)
    assert row.latency_p50_ms == pytest.approx(10.0)
    assert row.latency_p95_ms == pytest.approx(32.5)
    # AND cost = mean over samples of the offloaded invocations' price, x 1M
    assert row.cloud_cost_per_million == pytest.approx((2.5 + 4.5) / 5)
    assert (row.edge_memory_bytes, row.cloud_memory_bytes) == (100, 300)
    assert row.expected_memory_bytes == pytest.approx(100 + 0.4 * 300)


def test_low_threshold_trusts_the_wrong_early_exit(hand_trace, fake_link):
    # GIVEN threshold 0.8: s4's exit_1 (0.85, wrong) now answers
    trace, labels = hand_trace
    (row,) = sweep(trace, labels, [0.8], latency_model=LatencyModel(**MODEL, link=fake_link),
                   price_fn=linear_price)
    assert row.accuracy == pytest.approx(0.8)
    assert row.exit_mix["exit_1"] == pytest.approx(0.4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), thresholds=st.lists(st.floats(0, 1.5), min_size=2,
                                                        max_size=8))
def test_invariants_on_random_traces(random_trace, seed, thresholds):
    # GIVEN a random trace and any thresholds, sorted
    trace, labels = random_trace(seed)
    values = sorted([0.0, *thresholds, 1.01])
    rows = sweep(trace, labels, values, latency_model=LatencyModel(), price_fn=linear_price)
    offload = [r.offload_rate for r in rows]
    # THEN the offload rate never decreases as the threshold grows
    assert all(a <= b + 1e-12 for a, b in zip(offload, offload[1:]))
    # AND at threshold 0 nothing is offloaded (the first edge exit answers everything)
    assert rows[0].offload_rate == 0.0 and rows[0].exit_mix["exit_1"] == 1.0
    # AND above 1 everything reaches the final classifier, with the full model's accuracy
    assert rows[-1].exit_mix["final"] == 1.0 and rows[-1].offload_rate == 1.0
    assert rows[-1].accuracy == pytest.approx(exit_accuracy(trace, labels)["final"])
    # AND the exit mix is a distribution
    assert all(sum(r.exit_mix.values()) == pytest.approx(1.0) for r in rows)


def test_sweep_rejects_mismatched_labels(hand_trace):
    trace, _ = hand_trace
    with pytest.raises(InputError, match=r"Got 3 labels for a trace of 5 samples"):
        sweep(trace, np.zeros(3), [0.5], latency_model=LatencyModel(), price_fn=linear_price)


@pytest.mark.parametrize("bad", [[float("nan")], [-0.1], []])
def test_sweep_rejects_bad_thresholds(hand_trace, bad):
    trace, labels = hand_trace
    with pytest.raises(ConfigError, match="(?i)threshold"):
        sweep(trace, labels, bad, latency_model=LatencyModel(), price_fn=linear_price)


def test_latency_model_validates_its_numbers():
    with pytest.raises(ConfigError, match=r"edge_factor must be a positive number, got 0"):
        LatencyModel(edge_factor=0)
    with pytest.raises(ConfigError, match=r"Cold start needs 0 <= prob <= 1"):
        LatencyModel(cold_start_prob=2.0)


def test_parse_thresholds_range_includes_stop():
    assert parse_thresholds("0.3:0.9:0.05") == pytest.approx(
        [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    )
    assert parse_thresholds("0.5,0.8, 1.1") == (0.5, 0.8, 1.1)


@pytest.mark.parametrize("text", ["0.9:0.3:0.1", "a:b:c", "0.3:0.9:0", "0.3:0.9"])
def test_parse_thresholds_explains_the_format(text):
    with pytest.raises(ConfigError, match=r"expected start:stop:step such as 0.3:0.9:0.05"):
        parse_thresholds(text)


def test_concat_traces_joins_batches(hand_trace, fake_link):
    # GIVEN the trace split in two batches
    trace, labels = hand_trace
    from dataclasses import replace

    first = replace(trace, probs={k: v[:2] for k, v in trace.probs.items()})
    second = replace(trace, probs={k: v[2:] for k, v in trace.probs.items()})
    joined = concat_traces([first, second])
    # THEN the sweep of the joined trace equals the sweep of the whole
    kw = dict(latency_model=LatencyModel(link=fake_link), price_fn=linear_price)
    assert sweep(joined, labels, [0.9], **kw) == sweep(trace, labels, [0.9], **kw)


def test_baselines_match_hand_computation(fake_link):
    # GIVEN a 14 ms backbone split after 5 ms, a 2000-byte input and an 8000-byte boundary
    backbone = Backbone(full_ms=14.0, split_ms=5.0, input_bytes=2000, boundary_bytes=8000,
                        full_memory_bytes=500)
    model = LatencyModel(**MODEL, link=fake_link)
    base = baselines(backbone, 0.9, latency_model=model, price_fn=linear_price,
                     memory=StageMemory(100, 400))
    # THEN edge-only runs all 14 ms at x2, offloads nothing, costs nothing
    assert base["edge-only"].latency_mean_ms == pytest.approx(28.0)
    assert (base["edge-only"].offload_rate, base["edge-only"].cloud_cost_per_million) == (0, 0)
    # AND cloud-only sends 2000 bytes (10 + 2 ms) and runs 14 ms at x0.5
    assert base["cloud-only"].latency_mean_ms == pytest.approx(12.0 + 7.0)
    assert base["cloud-only"].cloud_cost_per_million == pytest.approx(7.0)
    assert base["cloud-only"].cloud_memory_bytes == 500
    # AND the split without exits: 5 x2 + (10 + 8) + 9 x0.5
    assert base["split-no-exits"].latency_mean_ms == pytest.approx(10 + 18 + 4.5)
    assert base["split-no-exits"].cloud_cost_per_million == pytest.approx(4.5)
    assert all(b.accuracy == 0.9 for b in base.values())


def test_backbone_from_trace_sums_segments(hand_trace):
    trace, _ = hand_trace
    backbone = backbone_from_trace(trace, input_bytes=12, memory=StageMemory(1, 2))
    assert (backbone.full_ms, backbone.split_ms, backbone.boundary_bytes) == (14.0, 5.0, 8000)
    assert backbone.full_memory_bytes == 3 and backbone.source == "trace"


def test_baselines_refuse_an_edge_part_longer_than_the_model():
    bad = Backbone(full_ms=1.0, split_ms=2.0, input_bytes=1, boundary_bytes=1, full_memory_bytes=1)
    with pytest.raises(InputError, match=r"edge part \(2.0 ms\) cannot take longer"):
        baselines(bad, 1.0, latency_model=LatencyModel(), price_fn=linear_price,
                  memory=StageMemory())
