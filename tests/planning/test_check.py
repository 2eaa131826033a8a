"""Plan truth: the build warns when edge-only or cloud-only beats its split, or the model is at
chance. Pure (no TensorFlow): profiles are the default demo model's host profile, as numbers."""

from __future__ import annotations

import pytest

from edgelesspart.planning import planner
from edgelesspart.planning.check import (
    Option,
    PlanCheck,
    chance_warning,
    check_for_devices,
    check_plan,
)
from edgelesspart.profiling import devices
from edgelesspart.profiling.links import load_link
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile

# small_cnn on 32x32x3 digits, measured on the 2-vCPU host with LiteRT (name, ms, memory, boundary)
SMALL_CNN = [
    ("stem_conv", 0.008782, 146816, 131072),
    ("stem_bn", 0.017594, 266112, 131072),
    ("stem_relu", 0.023052, 266112, 131072),
    ("block1_add", 0.141182, 471936, 131072),
    ("block1_relu", 0.146821, 471936, 131072),
    ("block1_pool", 0.153508, 471936, 32768),
    ("block2_conv", 0.184311, 545664, 65536),
    ("block2_bn", 0.189234, 546688, 65536),
    ("block2_relu", 0.19288, 546688, 65536),
    ("block2_pool", 0.19707, 546688, 16384),
    ("block3_conv", 0.230393, 841600, 32768),
    ("block3_bn", 0.234118, 843648, 32768),
    ("block3_relu", 0.236898, 843648, 32768),
    ("block3_pool", 0.239954, 843648, 8192),
    ("avg_pool", 0.242081, 843648, 512),
    ("output", 0.244215, 848808, 40),
]
INPUT_BYTES = 32 * 32 * 3 * 4


def host_profile(scale: float = 1.0) -> ModelProfile:
    cps = tuple(
        CutPointProfile(name, i, ms * scale, mem, mem // 2, (boundary // 4,), boundary)
        for i, (name, ms, mem, boundary) in enumerate(SMALL_CNN)
    )
    return ModelProfile("small_cnn", "host", (32, 32, 3), cps, method="litert")


def plan_for(host: ModelProfile, constraint: str, edge: str = "rpi4", cloud: str = "gcf-2gb"):
    edge_device, cloud_device = devices.load_device(edge), devices.load_device(cloud)
    return planner.plan_split(
        devices.profile_for_device(host, edge_device),
        devices.profile_for_device(host, cloud_device),
        constraint=constraint,
        memory_fraction=0.7,
        placement="linear",
        exits_per_part=(2, 2),
        edge_device=edge_device,
        cloud_device=cloud_device,
        codec="raw",
    )


def test_latency_constraint_split_after_stem_relu_is_reported_as_dominated():
    # GIVEN the case: `build --constraint latency` on the demo model splits after
    # stem_relu, whose 128 KiB boundary is larger than the 12 KiB input
    host = host_profile()
    plan = plan_for(host, "latency")
    assert plan.split == "stem_relu"
    # WHEN the plan is checked on the build's devices and link
    check = check_for_devices(
        plan, host, edge_device="rpi4", cloud_device="gcf-2gb", link="wifi",
        input_bytes=INPUT_BYTES,
    )
    # THEN it is dominated, and the warning names the better option and why
    assert not check.ok and "edge-only" in check.dominated_by
    message = check.warnings[0]
    assert message.startswith("the plan is dominated by edge-only")
    assert "the boundary (128 KiB raw fp32) is larger than the input (12 KiB)" in message
    assert "Deploy the whole model on the edge" in message
    edge_only = next(o for o in check.alternatives if o.name == "edge-only")
    assert edge_only.latency_ms < check.split.latency_ms and edge_only.cost == 0.0


def test_cloud_only_is_named_when_the_model_does_not_fit_the_edge():
    # GIVEN the stem_relu plan, an edge too small for the whole model, and no early exits
    host = host_profile()
    plan = plan_for(host, "latency")
    edge = devices.profile_for_device(host, devices.load_device("rpi4"))
    cloud = devices.profile_for_device(host, devices.load_device("gcf-2gb"))
    no_exits = {name: 0.0 for name, *_ in SMALL_CNN}
    # WHEN it is checked (cost: one flat price per call, as 100 ms billing makes it)
    check = check_plan(
        plan, edge, cloud, link=load_link("wifi"), cost_fn=lambda ms: 1e-6,
        input_bytes=INPUT_BYTES, edge_memory_bytes=300_000, exit_rates=no_exits,
    )
    # THEN edge-only is infeasible and cloud-only dominates, with the boundary as the reason
    assert check.dominated_by == ("cloud-only",)
    assert "larger than the input (12 KiB)" in check.warnings[0]
    assert "Send the input straight to the cloud function" in check.warnings[0]
    assert not next(o for o in check.alternatives if o.name == "edge-only").feasible


def test_a_split_worth_it_gives_no_warning():
    # GIVEN a model 20x heavier on a Raspberry Pi, split by the memory rule, whose edge exits
    # answer 60% of the samples that reach them
    host = host_profile(scale=20.0)
    plan = plan_for(host, "memory")
    rates = {name: 0.6 for name, *_ in SMALL_CNN}
    # WHEN checked over Wi-Fi
    check = check_for_devices(
        plan, host, edge_device="rpi4", cloud_device="gcf-2gb", link="wifi",
        input_bytes=INPUT_BYTES, exit_rates=rates,
    )
    # THEN it sits between edge-only (slower, free) and cloud-only (faster, dearer)
    assert check.ok and check.warnings == ()
    by_name = {o.name: o for o in check.alternatives}
    assert by_name["edge-only"].latency_ms > check.split.latency_ms
    assert by_name["cloud-only"].cost > check.split.cost


def test_check_round_trips_through_dict():
    host = host_profile()
    check = check_for_devices(
        plan_for(host, "latency"), host, edge_device="rpi4", cloud_device="gcf-2gb",
        link="wifi", input_bytes=INPUT_BYTES,
    )
    assert PlanCheck.from_dict(check.to_dict()) == check
    assert Option.from_dict(check.split.to_dict()) == check.split


@pytest.mark.parametrize(
    ("accuracy", "classes", "warns"),
    [(0.10, 10, True), (0.14, 10, True), (0.16, 10, False), (0.55, 2, True), (0.9, 2, False),
     (None, 10, False)],
)
def test_chance_accuracy_names_train_backbone(accuracy, classes, warns):
    message = chance_warning(accuracy, classes)
    assert (message is not None) == warns
    if warns:
        assert "--train-backbone yes" in message and "chance" in message


def _build(tmp_path, capsys, *extra: str) -> str:
    from edgelesspart.cli import main

    argv = ["build", "--constraint", "latency", "--limit", "300", "--max-cut-points", "8",
            "--out", str(tmp_path / "b"), "--quiet", *extra]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    return out


@pytest.mark.slow
@pytest.mark.needs_tf
def test_build_cli_says_the_latency_split_is_dominated(tmp_path, capsys):
    # GIVEN the headline command, `build --constraint latency`, on the default model
    # (briefly trained), planned for a Raspberry Pi over Wi-Fi
    # WHEN it builds
    out = _build(tmp_path, capsys, "--epochs", "2")
    # THEN it says its plan is dominated, by which option and why (where the latency rule
    # splits depends on the edge factor measured on this host, see docs/demo.md)
    assert "plan: constraint=latency" in out, out
    assert "warning: the plan is dominated by " in out, out
    assert "Why: " in out


@pytest.mark.slow
@pytest.mark.needs_tf
def test_build_cli_warns_about_a_model_at_chance(tmp_path, capsys):
    # GIVEN an untrained backbone kept as it is
    out = _build(tmp_path, capsys, "--train-backbone", "no", "--epochs", "1", "--limit", "120")
    # THEN the build names the fix
    assert "warning: the final classifier scores" in out and "--train-backbone yes" in out, out
