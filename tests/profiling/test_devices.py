"""Tests for device profiles (edgelesspart.profiling.devices): bundled files, factors, profile
scaling."""

from __future__ import annotations

import json

import pytest

from edgelesspart.errors import ProfileError
from edgelesspart.profiling.devices import (
    DeviceProfile,
    latency_factor,
    latency_factor_with_reason,
    list_devices,
    load_device,
    profile_for_device,
)
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile

BUNDLED = {"host", "jetson-orin-nano", "rpi4", "gcf-2gb", "lambda-2gb"}


@pytest.fixture
def host_profile() -> ModelProfile:
    """A 3-cut-point resnet50 profile measured on the host."""
    cps = tuple(
        CutPointProfile(name, i, lat, mem, mem // 2, (4,), 16)
        for i, (name, lat, mem) in enumerate(
            [("a", 10.0, 100), ("b", 30.0, 300), ("output", 60.0, 500)]
        )
    )
    return ModelProfile("resnet50", "host", (32, 32, 3), cps, method="litert", source="here")


def test_bundled_devices_are_listed_and_load():
    # GIVEN the bundled device files
    # WHEN they are listed and loaded
    names = list_devices()
    loaded = {name: load_device(name) for name in names}
    # THEN the five seeded devices are there, each with a citation and a positive budget
    assert BUNDLED <= set(names)
    assert "links" not in names
    for name, device in loaded.items():
        assert device.name == name
        assert device.memory_bytes > 0
        assert device.source and device.notes


def test_seeded_factors_follow_the_reference_numbers():
    # GIVEN the seeded edge and cloud devices
    rpi, orin = load_device("rpi4"), load_device("jetson-orin-nano")
    gcf, lam = load_device("gcf-2gb"), load_device("lambda-2gb")
    # WHEN factors are asked for ResNet50 (measured) and an unmeasured model
    # THEN ResNet50 uses the published ratios and other models the generic speed factor
    assert latency_factor_with_reason(rpi, "resnet50") == pytest.approx(
        (556 / 60, "stored-reference")
    )
    assert latency_factor_with_reason(orin, "ResNet50") == pytest.approx(
        (4.8 / 60, "stored-reference")
    )
    assert latency_factor_with_reason(rpi, "small_cnn") == (9.3, "speed_factor")
    assert latency_factor(load_device("host"), "anything") == 1.0
    assert (gcf.provider, gcf.memory_mb, gcf.ghz, gcf.speed_factor) == ("gcf", 2048, 2.4, 1.0)
    assert (lam.provider, lam.memory_mb, lam.vcpu) == ("lambda", 2048, 1.16)


def test_unknown_device_error_lists_bundled_names():
    # GIVEN a typo in a device name
    # WHEN it is loaded
    # THEN the error names the input and the bundled devices
    with pytest.raises(ProfileError, match=r"Unknown device 'rpi3'.*jetson-orin-nano.*rpi4"):
        load_device("rpi3")


def test_device_json_file_round_trips(tmp_path):
    # GIVEN a custom device written as JSON
    device = DeviceProfile(
        name="orin-cpu",
        kind="edge",
        memory_bytes=2**30,
        speed_factor=2.2,
        measured_ms={"resnet50": 131.0},
        host_reference_ms={"resnet50": 60.0},
        source="[N]",
    )
    path = tmp_path / "orin-cpu.json"
    path.write_text(json.dumps(device.to_dict()), encoding="utf-8")
    # WHEN it is loaded by path
    loaded = load_device(path)
    # THEN it equals the original
    assert loaded == device
    assert DeviceProfile.from_dict(device.to_dict()) == device


def test_malformed_device_files_are_rejected(tmp_path):
    # GIVEN device documents with a bad kind, a missing field and a negative factor
    bad_kind = {"name": "x", "kind": "phone", "memory_bytes": 1}
    missing = {"name": "x", "kind": "edge"}
    negative = {"name": "x", "kind": "edge", "memory_bytes": 1, "speed_factor": -1}
    # WHEN they are parsed
    # THEN each raises ProfileError naming the problem
    with pytest.raises(ProfileError, match="kind 'phone'"):
        DeviceProfile.from_dict(bad_kind)
    with pytest.raises(ProfileError, match="memory_bytes"):
        DeviceProfile.from_dict(missing)
    with pytest.raises(ProfileError, match="speed_factor > 0"):
        DeviceProfile.from_dict(negative)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ProfileError, match="Cannot read device file"):
        load_device(broken)


def test_device_without_factor_for_model_raises():
    # GIVEN a device with only a ResNet50 measurement and no generic factor
    device = DeviceProfile(
        "x", "edge", 1, None, {"resnet50": 100.0}, {"resnet50": 50.0}, source="s"
    )
    # WHEN another model is scaled
    # THEN the error says what is missing and how to fix it
    assert latency_factor(device, "resnet50") == 2.0
    with pytest.raises(ProfileError, match="no latency for model 'mobilenetv2'.*speed_factor"):
        latency_factor(device, "mobilenetv2")


def test_profile_for_device_scales_latency_not_memory(host_profile):
    # GIVEN a host profile of resnet50 and the Raspberry Pi
    rpi = load_device("rpi4")
    # WHEN it is scaled to the Pi
    scaled = profile_for_device(host_profile, rpi)
    # THEN latencies grow by 556/60, memory and boundaries stay, and the reason is recorded
    factor = 556 / 60
    assert [cp.latency_ms for cp in scaled.cut_points] == pytest.approx(
        [10 * factor, 30 * factor, 60 * factor]
    )
    assert [cp.memory_bytes for cp in scaled.cut_points] == [100, 300, 500]
    assert scaled.device == "rpi4"
    assert scaled.extra["latency_factor_reason"] == "stored-reference"
    assert scaled.extra["scaled_from"] == "host"
    assert ModelProfile.from_dict(scaled.to_dict()) == scaled
