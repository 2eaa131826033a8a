"""The learned bottleneck as one more way across the link (edgelesspart.planning.bottleneck and the
planner's ``crossings`` argument): chosen only where it wins, within the accuracy bound.

Synthetic profiles and measurements only (no TensorFlow). The toy model's cut point c1 has a
400 kB raw boundary that int8+zstd carries in 60 kB; the bottleneck sends 2 kB and costs 3 ms on
the edge and 2 ms in the cloud per offload.
"""

from __future__ import annotations

import pytest

from edgelesspart.errors import ConfigError
from edgelesspart.planning import planner
from edgelesspart.planning.bottleneck import (
    BottleneckOption,
    Crossing,
    choose_bottleneck,
    crossing_ms,
)
from edgelesspart.planning.objective import expected_latency
from edgelesspart.profiling.devices import load_device
from edgelesspart.profiling.links import Link
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile

SLOW = Link("3g", 1.1, 1.1, 100.0)
FAST = Link("lan", 10_000.0, 10_000.0, 0.5)
GENERIC = Crossing("int8+zstd", "int8+zstd", 60_000, 61_000, 0.5, 0.5, 0.0)


def option(
    label: str = "bn4s2", loss: float = 0.5, nbytes: float = 2_000, **kw
) -> BottleneckOption:
    """A measured bottleneck option (host ms: encoder 2, decoder 1.5, codec 0.5 each way)."""
    values = dict(
        label=label, channels=4, stride=2, codec="int8", code_shape=(8, 8, 4),
        boundary_raw_bytes=400_000, bytes_per_sample=nbytes, max_bytes_per_sample=nbytes + 10,
        accuracy=0.95, accuracy_delta_pp=-loss, broken_pp=loss, encode_ms=0.5, decode_ms=0.5,
        encoder_ms=2.0, decoder_ms=1.5, samples=200,
    )  # fmt: skip
    values.update(kw)
    return BottleneckOption(**values)


def toy_profile() -> ModelProfile:
    """Three internal cut points at 10/20/30 ms of a 100 ms model."""
    cps = (
        CutPointProfile("c1", 0, 10.0, 100, 50, (1,), 400_000, 0, {"int8+zstd": 60_000}),
        CutPointProfile("c2", 1, 20.0, 200, 100, (1,), 800_000, 0, {"int8+zstd": 120_000}),
        CutPointProfile("c3", 2, 30.0, 600, 300, (1,), 200_000, 0, {"int8+zstd": 30_000}),
        CutPointProfile("output", 3, 100.0, 1000, 500, (1,), 40),
    )
    return ModelProfile("toy", "host", (8, 8, 1), cps)


def test_auto_takes_the_bottleneck_on_a_slow_link_and_not_on_a_fast_one():
    # GIVEN a bottleneck 30x smaller than int8+zstd but 4.5 ms slower to compute
    opts = [option()]
    # WHEN the link is 3G THEN it wins: 60 kB at 1.1 Mbit/s is ~436 ms, 2 kB ~15 ms
    slow = choose_bottleneck(opts, GENERIC, choice="auto", max_loss_pp=1.0, link=SLOW)
    assert slow.used is not None and slow.used.name == "bn4s2+int8"
    assert slow.times_ms["bn4s2+int8"] < slow.times_ms["int8+zstd"]
    assert "crosses 3g" in slow.reason
    # WHEN the link is a 10 Gbit/s LAN THEN the encoder/decoder time outweighs the bytes saved
    fast = choose_bottleneck(opts, GENERIC, choice="auto", max_loss_pp=1.0, link=FAST)
    assert fast.used is None and "at least as fast" in fast.reason
    # AND slower devices make the bottleneck's compute count more (x300 edge factor)
    slow_edge = choose_bottleneck(
        opts, GENERIC, choice="auto", max_loss_pp=1.0, link=SLOW, edge_factor=300.0
    )
    assert slow_edge.used is None


def test_auto_respects_the_accuracy_bound_and_the_payload_limit():
    lossy = option(loss=1.5)
    decision = choose_bottleneck([lossy], GENERIC, choice="auto", max_loss_pp=1.0, link=SLOW)
    assert decision.used is None and "loses at most 1 pp" in decision.reason
    # the most compressed option within the bound wins, not the smallest overall
    tiny_lossy = option("bn1s2", loss=3.0, nbytes=600, channels=1)
    ok = option("bn4s2", loss=0.5, nbytes=2_000)
    chosen = choose_bottleneck(
        [tiny_lossy, ok], GENERIC, choice="auto", max_loss_pp=1.0, link=SLOW
    ).used
    assert chosen is not None and chosen.label == "bn4s2"
    # an option whose largest payload is over the limit is never used
    over = choose_bottleneck([ok], GENERIC, choice="auto", max_loss_pp=1.0, link=SLOW,
                             max_bytes=1_000)  # fmt: skip
    assert over.used is None


def test_the_loss_measure_decides_whether_fixes_count():
    # GIVEN a bottleneck that breaks 5 % of the unmodified model's right answers but fixes more
    # (net +0.5 points, as after cloud fine-tuning on labels)
    churn = option(loss=5.0, accuracy_delta_pp=0.5)
    assert churn.loss("broken") == 5.0 and churn.loss("accuracy") == -0.5
    # THEN the default rule (broken) declines it and the net accuracy rule takes it
    strict = choose_bottleneck([churn], GENERIC, choice="auto", max_loss_pp=1.0, link=SLOW)
    assert strict.used is None
    net = choose_bottleneck(
        [churn], GENERIC, choice="auto", max_loss_pp=1.0, link=SLOW, loss="accuracy"
    )
    assert net.used is churn and "of accuracy" in net.reason
    assert churn.crossing("accuracy").loss_pp == -0.5
    with pytest.raises(ConfigError, match="Unknown bottleneck loss 'agreement'"):
        churn.loss("agreement")


def test_a_fixed_channel_count_is_kept_as_asked_with_a_warning():
    lossy = option(loss=2.0)
    decision = choose_bottleneck([lossy], GENERIC, choice=4, max_loss_pp=1.0, link=FAST)
    assert decision.used is lossy and "more than the 1 pp bound" in decision.warning
    with pytest.raises(ConfigError, match="fits the payload limit"):
        choose_bottleneck([lossy], GENERIC, choice=4, max_loss_pp=1.0, link=FAST, max_bytes=10)


def test_crossing_time_counts_base64_on_lambda():
    c = option().crossing()
    lam = load_device("lambda-2gb")
    plain = crossing_ms(c, SLOW, None)
    assert plain == pytest.approx(2.5 + SLOW.transfer_ms(2_000) + 2.0)
    assert crossing_ms(c, SLOW, lam) > plain  # 4/3 of the bytes plus the JSON wrapper


def test_objective_planner_uses_the_crossing_only_where_it_wins():
    edge = toy_profile()
    cross = {"c1": option().crossing()}
    common = dict(objective="expected-latency", exits_per_part=0, search="placement")
    # GIVEN a 3G link WHEN planning with a bottleneck measured at c1
    without = planner.plan_objective(edge, edge, link=SLOW, codec="int8+zstd", **common)
    with_bn = planner.plan_objective(edge, edge, link=SLOW, codec="int8+zstd", crossings=cross,
                                     **common)  # fmt: skip
    # THEN the plan splits at c1 with the bottleneck's bytes and its lower expected latency
    assert with_bn.split == "c1" and with_bn.parameters["bottleneck"] == "bn4s2+int8"
    assert with_bn.parameters["boundary_encoded_bytes"] == 2_000
    assert with_bn.parameters["objective_value"] < without.parameters["objective_value"]
    # AND expected_latency of the plan (what evaluate and the plan check use) charges the same
    # bytes and the encoder/decoder ms
    again = expected_latency(with_bn, edge, edge, None, SLOW)
    assert again == pytest.approx(with_bn.parameters["objective_value"])
    # WHEN the link is fast THEN the codec is kept: the crossing's ms cost more than bytes save
    fast = planner.plan_objective(edge, edge, link=FAST, codec="int8+zstd", crossings=cross,
                                  **common)  # fmt: skip
    assert fast.parameters.get("bottleneck") is None
    assert fast.parameters["codec"] == "int8+zstd"


def test_split_rules_use_the_crossing_only_where_it_wins():
    edge = toy_profile()
    cross = {"c1": option().crossing()}
    rule = dict(constraint="memory", memory_fraction=0.15, exits_per_part=0, codec="int8+zstd")
    slow = planner.plan_split(edge, edge, crossings=cross, link=SLOW, **rule)
    assert slow.split == "c1" and slow.parameters["bottleneck"] == "bn4s2+int8"
    assert slow.parameters["crossing_edge_ms"] == pytest.approx(2.5)
    fast = planner.plan_split(edge, edge, crossings=cross, link=FAST, **rule)
    assert fast.parameters["bottleneck"] is None
    assert fast.parameters["bottleneck_considered"] == "bn4s2+int8"
    # no link: the split rules cannot price a crossing, so the codec stays
    assert planner.plan_split(edge, edge, crossings=cross, **rule).parameters["bottleneck"] is None


def test_a_bottleneck_rescues_a_split_over_the_lambda_limit():
    # GIVEN c1 whose every codec is over the 6 MB Lambda limit
    mb = 1_000_000
    cps = list(toy_profile().cut_points)
    cps[0] = CutPointProfile("c1", 0, 10.0, 100, 50, (1,), 9 * mb, 0, {"lz4": 8 * mb})
    edge = ModelProfile("toy", "host", (8, 8, 1), tuple(cps))
    lam = load_device("lambda-2gb")
    rule = dict(constraint="memory", memory_fraction=0.15, exits_per_part=0, cloud_device=lam)
    with pytest.raises(Exception, match="refused"):
        planner.plan_split(edge, edge, **rule)
    # WHEN a bottleneck that fits is measured there THEN the split is planned with it
    plan = planner.plan_split(edge, edge, crossings={"c1": option().crossing()}, **rule)
    assert plan.split == "c1" and plan.parameters["bottleneck"] == "bn4s2+int8"
    assert plan.parameters["boundary_wire_bytes"] < 6 * 1024 * 1024


def test_the_chain_planner_uses_a_bottleneck_on_a_slow_link_between_stages():
    from edgelesspart.planning.chain import ChainCosts, plan_chain

    edge = toy_profile()
    cross = {"c1": option().crossing()}
    # GIVEN two nodes over a 3G link and a bottleneck measured at c1
    slow = ChainCosts((edge, edge), link=SLOW, codecs=("int8+zstd",), crossings=cross)
    plan = plan_chain(slow)
    # THEN the link between the stages carries the bottleneck's 2 kB, not int8+zstd's 60 kB
    assert plan.parameters["link_codecs"] == ["bn4s2+int8"]
    first = plan.stages[0].options["cost"]
    assert first["out_bytes"] == 2_000 and first["encode_ms"] == pytest.approx(2.5)
    assert plan.parameters["bottlenecks"] == ["bn4s2+int8"]
    # AND on a fast link the slowest stage is compute, so the cheaper codec is kept
    fast = plan_chain(ChainCosts((edge, edge), link=FAST, codecs=("int8+zstd",), crossings=cross))
    assert fast.parameters["link_codecs"] != ["bn4s2+int8"]
