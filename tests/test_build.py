"""Tests for edgelesspart.build's planning step (make_plan) on a synthetic host profile."""

from __future__ import annotations

import pytest

from edgelesspart import devices, links, planner
from edgelesspart.build import BuildConfig, make_plan
from edgelesspart.errors import ConfigError
from edgelesspart.profile import CutPointProfile, ModelProfile

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
        devices.profile_for_device(host_profile(), edge_device),
        devices.profile_for_device(host_profile(), cloud_device),
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
