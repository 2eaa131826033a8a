"""build, evaluate and the plan check price a bundle on the same device latencies (issue 22)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgelesspart.evaluation.pipeline import EvaluationConfig, build_latency_model, device_factor
from edgelesspart.profiling import devices
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile


def _host_profile() -> ModelProfile:
    cps = tuple(
        CutPointProfile(
            name=name,
            index=i,
            latency_ms=0.1 * (i + 1),
            memory_bytes=1 << 16,
            weight_bytes=4096,
            boundary_shape=(8, 8, 4),
            boundary_bytes=1024,
        )
        for i, name in enumerate(("input", "stem_relu", "block1_relu", "output"))
    )
    return ModelProfile("small_cnn", "host", (32, 32, 3), cps, source="test")


def _manifest(edge_profile: ModelProfile, cloud_profile: ModelProfile) -> SimpleNamespace:
    """What build_latency_model reads of a manifest: the plan's devices and recorded sources."""
    stages = (
        SimpleNamespace(name="edge", device="rpi4", predicted_memory_bytes=1),
        SimpleNamespace(name="cloud", device="gcf-2gb", predicted_memory_bytes=1),
    )
    plan = SimpleNamespace(
        stages=stages,
        parameters={"latency_sources": devices.latency_sources(edge_profile, cloud_profile)},
    )
    return SimpleNamespace(model={"name": "small_cnn"}, plan=plan, codec={})


def test_evaluate_uses_the_factor_the_build_planned_with() -> None:
    # GIVEN a plan scaled as the build scales it: rpi4 by its published latency over this
    # host's measured reference latency (here a host 1.7x faster than the stored legacy figure)
    host = _host_profile()
    rpi4 = devices.load_device("rpi4")
    ref = sorted(rpi4.measured_ms)[0]
    legacy, _ = devices.latency_factor_with_reason(rpi4, "small_cnn")

    def this_host(model: str) -> tuple[float, str]:
        return rpi4.measured_ms[model] / (legacy * 1.7), "measured now"

    edge = devices.profile_for_device(host, rpi4, this_host)
    cloud = devices.profile_for_device(host, devices.load_device("gcf-2gb"), this_host)
    build_factor = edge.extra["latency_factor"]
    assert build_factor == pytest.approx(legacy * 1.7)
    assert ref  # the device has a published reference
    manifest = _manifest(edge, cloud)
    # WHEN evaluate builds its latency model for the plan's own devices
    model, info, _ = build_latency_model(manifest, EvaluationConfig())
    # THEN it charges the build's factor (not the legacy stored one), and says where it came from
    assert model.edge_factor == pytest.approx(build_factor)
    assert model.cloud_factor == pytest.approx(cloud.extra["latency_factor"])
    assert "recorded in the plan" in info["edge_factor_reason"]
    # AND the edge-only latency both report is the same number
    assert host.total.latency_ms * model.edge_factor == pytest.approx(edge.total.latency_ms)
    # AND another edge device asked for explicitly keeps its own factor
    other, _, _ = build_latency_model(manifest, EvaluationConfig(edge_device="jetson-orin-nano"))
    assert other.edge_factor == pytest.approx(device_factor("jetson-orin-nano", "small_cnn")[0])
