"""A build plans with a measured device profile, or scales by a host reference measured now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgelesspart.build import BuildConfig, make_plan
from edgelesspart.errors import ProfileError
from edgelesspart.profiling import devices
from edgelesspart.profiling import kit as profiling_kit
from edgelesspart.profiling.kit import host_reference_ms
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile
from edgelesspart.runtime.device_profiler import MeasuredCutPoint, MeasuredProfile

NAMES = ("c1", "c2", "c3", "output")
HOST_MS = (1.0, 2.0, 3.0, 4.0)
DEVICE_MS = (5.0, 30.0, 31.0, 90.0)  # not a multiple of the host: no single factor fits


def host_profile(model: str = "toy") -> ModelProfile:
    """Four cut points on the host, boundaries shrinking."""
    cps = tuple(
        CutPointProfile(n, i, ms, 1000 * (i + 1), 500 * (i + 1), (4,), 4000 // (i + 1))
        for i, (n, ms) in enumerate(zip(NAMES, HOST_MS))
    )
    return ModelProfile(model, "host", (8, 8, 3), cps, method="litert")


def measured(model: str = "toy", names: tuple[str, ...] = NAMES) -> MeasuredProfile:
    """What profile-device writes for the same model on a slower board."""
    cps = tuple(
        MeasuredCutPoint(n, i, ms, ms * 1.2, ms * 1.1, 2**20 * (i + 1))
        for i, (n, ms) in enumerate(zip(names, DEVICE_MS))
    )
    identity = {"cpu_model": "Cortex-A72", "cores": 4, "litert_version": "2.3.0"}
    return MeasuredProfile(
        "pi-lab-3",
        identity,
        model,
        (8, 8, 3),
        "kit123",
        cps,
        90.0,
        80 * 2**20,
        2**30,
        settings={"repeats": 30, "memory_fraction": 0.5},
    )


@pytest.fixture
def device_file(tmp_path):
    path = measured().save(tmp_path / "DEVICE.json")
    return str(path)


def test_build_plans_with_the_measured_latencies_directly(device_file):
    # GIVEN a DEVICE.json measured with profile-device
    config = BuildConfig(constraint="memory", edge_device=device_file, exits_per_part=(1, 1))
    # WHEN the build plans
    plan, summary = make_plan(config, host_profile(), "toy")
    # THEN the edge stage is on the measured device, predicted with its own number at the split
    edge = plan.stages[0]
    assert edge.device == str(Path(device_file).resolve())  # loadable again by name
    assert edge.predicted_latency_ms == pytest.approx(DEVICE_MS[NAMES.index(plan.split)])
    # AND the plan says where its latencies came from: measured, no factor
    source = plan.parameters["latency_sources"]["edge"]
    assert source["source"] == "measured-profile" and source["factor"] == 1.0
    assert source["kit_id"] == "kit123"
    assert source["summary"].startswith("pi-lab-3: measured on the device")
    assert summary["latency_sources"] == plan.parameters["latency_sources"]
    json.dumps(plan.to_dict())  # the plan stays JSON-ready
    reloaded = devices.load_device(edge.device)  # what evaluate does with the plan's devices
    assert reloaded.measured is not None
    assert devices.latency_factor_with_reason(reloaded, "toy") == (1.0, "measured-profile")


def test_measured_profile_replaces_latency_only(device_file):
    profile = devices.profile_for_device(host_profile(), devices.load_device(device_file))
    assert [cp.latency_ms for cp in profile.cut_points] == list(DEVICE_MS)
    assert [cp.memory_bytes for cp in profile.cut_points] == [
        cp.memory_bytes for cp in host_profile().cut_points
    ]
    assert profile.extra["latency_p95_ms"]["output"] == pytest.approx(108.0)


def test_measured_profile_of_another_model_or_cut_points_is_refused():
    other = devices.device_from_measurement(measured(model="resnet50"))
    with pytest.raises(ProfileError, match="of model 'resnet50'.*plans 'toy'"):
        devices.profile_for_device(host_profile(), other)
    fewer = devices.device_from_measurement(measured(names=("c1", "c3", "x", "output")))
    with pytest.raises(ProfileError, match=r"no latency at cut points \['c2'\].*max-cut-points"):
        devices.profile_for_device(host_profile(), fewer)


def test_scaled_device_uses_this_hosts_reference_measured_at_build_time(tmp_path):
    # GIVEN a host whose ResNet50 reference measures 139 ms (injected measurement, empty cache)
    calls = []

    def measure(model: str) -> float:
        calls.append(model)
        return 139.0

    cache = tmp_path / "ref.json"

    def reference(model: str) -> tuple[float, str]:
        return host_reference_ms(model, cache=cache, measure=measure)

    # WHEN a model without a Pi figure is scaled to rpi4 twice
    rpi = devices.load_device("rpi4")
    first = devices.profile_for_device(host_profile(), rpi, reference)
    second = devices.profile_for_device(host_profile(), rpi, reference)
    # THEN the factor is the Pi's published ResNet50 time over this host's, measured once
    assert calls == ["resnet50"]
    factor = rpi.measured_ms["resnet50"] / 139.0
    assert first.total.latency_ms == pytest.approx(HOST_MS[-1] * factor)
    assert first.extra["latency_source"] == "scaled (host-reference)"
    assert "at build time" in first.extra["host_reference_how"]
    assert "cached" in second.extra["host_reference_how"]
    line = devices.describe_latency_source(first)
    assert "published resnet50" in line and "139.0 ms" in line


@pytest.mark.parametrize("bad", ['"fast"', "null", "-3", "true", '{"ms": "x"}'])
def test_a_bad_cache_entry_is_measured_again(tmp_path, bad):
    # GIVEN a cache file whose entry (or whole content) is not a positive number of ms
    cache = tmp_path / "ref.json"
    key = profiling_kit._cache_key("resnet50")
    cache.write_text(bad if bad.startswith("{") else f'{{"{key}": {{"ms": {bad}}}}}')
    # WHEN the reference is asked for, THEN it is measured (not a crash), and cached whole
    ms, how = host_reference_ms("resnet50", cache=cache, measure=lambda m: 42.0)
    assert ms == 42.0 and "at build time" in how
    assert json.loads(cache.read_text())[key]["ms"] == 42.0
    assert [p.name for p in tmp_path.iterdir()] == ["ref.json"]


def test_cloud_tier_without_figures_keeps_its_speed_factor():
    def never(model: str) -> tuple[float, str]:
        raise AssertionError("no reference is needed for a speed-factor device")

    gcf = devices.profile_for_device(host_profile(), devices.load_device("gcf-2gb"), never)
    assert gcf.extra["latency_factor_reason"] == "speed_factor"
