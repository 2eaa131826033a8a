"""Tests for edgelesspart.build's planning step (make_plan) on a synthetic host profile."""

from __future__ import annotations

import pytest

from edgelesspart.build import BuildConfig, make_plan
from edgelesspart.errors import ConfigError
from edgelesspart.planning import planner
from edgelesspart.profiling import devices, links
from edgelesspart.profiling.kit import host_reference_ms
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile

LATENCY = (0.2, 0.5, 0.9, 1.4, 2.2, 2.6, 3.0)
BOUNDARY = (64000, 32000, 32000, 16000, 8000, 2000, 40)


def host_profile() -> ModelProfile:
    """Seven cut points (the last is ``output``) with shrinking boundary tensors."""
    names = [f"c{i + 1}" for i in range(len(LATENCY) - 1)] + ["output"]
    cps = tuple(
        CutPointProfile(n, i, lat, 1000 * (i + 1), 400 * (i + 1), (1,), b)
        for i, (n, lat, b) in enumerate(zip(names, LATENCY, BOUNDARY))
    )
    return ModelProfile("toy", "host", (8, 8, 1), cps)


def test_objective_build_plans_the_brute_force_optimum_by_default():
    config = BuildConfig(constraint="expected-latency", exits_per_part=(2, 2))
    plan, summary = make_plan(config, host_profile(), "toy")
    edge_device = devices.load_device(config.edge_device)
    cloud_device = devices.load_device(config.cloud_device)
    optimum = planner.brute_force_optimum(
        devices.profile_for_device(host_profile(), edge_device, host_reference_ms),
        devices.profile_for_device(host_profile(), cloud_device, host_reference_ms),
        objective="expected-latency",
        link=links.load_link(config.link),
        exits_per_part=(2, 2),
        edge_device=edge_device,
        cloud_device=cloud_device,
    )
    assert plan.parameters["search"] == "exhaustive"
    assert plan.split == optimum.split
    assert plan.parameters["objective_value"] == pytest.approx(optimum.value, rel=1e-9)
    assert summary["edge_device"] == "rpi4"


def test_placement_search_keeps_the_spacing_rule_and_is_never_better_than_exhaustive():
    exhaustive, _ = make_plan(BuildConfig(constraint="expected-latency"), host_profile(), "toy")
    spaced, _ = make_plan(
        BuildConfig(constraint="expected-latency", search="placement", placement="pareto"),
        host_profile(),
        "toy",
    )
    assert spaced.parameters["search"] == "placement"
    assert spaced.placement == "pareto"
    assert spaced.parameters["objective_value"] >= exhaustive.parameters["objective_value"]


def test_unknown_search_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="exhaustive .* placement"):
        BuildConfig(search="greedy")


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"exit_head": "resnet"}, "Unknown exit head 'resnet'.*sdn, paper, conv"),
        ({"exit_training": "fancy"}, "Unknown exit training 'fancy'.*frozen, distill, joint"),
        ({"confidence": "margin"}, "Unknown confidence measure 'margin'"),
        ({"max_accuracy_drop": -1}, "max_accuracy_drop must be .* >= 0"),
        ({"max_final_drop": "a lot"}, "max_final_drop must be .* >= 0"),
        ({"temperature_scaling": "maybe"}, "temperature_scaling must be yes or no"),
    ],
)
def test_exit_options_are_checked_with_the_choices(option, match):
    with pytest.raises(ConfigError, match=match):
        BuildConfig(**option)


def test_exit_defaults_are_the_product_defaults_and_yaml_keys_mirror_flags():
    config = BuildConfig.from_mapping({"exit-head": "paper", "max-accuracy-drop": 2})
    assert (config.exit_head, config.max_accuracy_drop) == ("paper", 2)
    default = BuildConfig()
    assert (default.exit_head, default.exit_training, default.confidence) == (
        "sdn", "distill", "max-softmax",
    )  # fmt: skip
    assert default.max_accuracy_drop == 1.0 and default.max_final_drop == 1.0


@pytest.mark.needs_tf
@pytest.mark.slow
def test_build_records_the_serving_choice_and_prints_its_expectation(tmp_path, capsys):
    from edgelesspart.cli import main
    from edgelesspart.runtime.manifest import load_manifest

    out = tmp_path / "bundle"
    # WHEN a quick default build runs (sdn heads, distillation, threshold within 1 point)
    code = main(["build", "--constraint", "memory", "--limit", "120", "--epochs", "1",
                 "--max-cut-points", "6", "--out", str(out), "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    # THEN the manifest records temperatures for every exit and the validated threshold
    manifest = load_manifest(out)
    serving = manifest.serving
    in_graph = serving["temperatures_in_graph"]
    assert set(serving["temperatures"]) | set(in_graph) == {e.name for e in manifest.exits}
    # AND every temperature is in its exit head (the sdn heads and the zoo's classifier end in
    # a softmax): the runtime has none left to apply
    assert not serving["temperatures"] or set(serving["temperatures"].values()) == {1.0}
    assert in_graph and all(t != 1.0 for t in in_graph.values())
    assert serving["confidence"] == "max-softmax" and serving["chosen_on"] == "validation"
    assert 0.0 <= serving["threshold"] <= 1.01
    val = serving["validation"]
    assert val["accuracy"] >= val["final_accuracy"] - 0.01 - 1e-9
    assert {"edge_share", "accuracy", "cost_per_million"} <= set(serving["expected"])
    # AND the build says what it expects, and which head and training it used
    assert f"serving: threshold {serving['threshold']:g}" in printed
    assert "edge share" in printed and "per 1M requests" in printed
    assert manifest.training["exit_training"]["mode"] == "distill"
    assert "SDN-style" in (out / "exits" / "generated_exit.py").read_text()
