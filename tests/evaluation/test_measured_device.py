"""``evaluate`` and the build's serving choice use a measured device's own latencies (issue 16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgelesspart.cli import main
from edgelesspart.errors import ProfileError
from edgelesspart.evaluation.pipeline import EvaluationConfig, build_latency_model, trace_split
from edgelesspart.evaluation.sweep import exit_costs
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile
from edgelesspart.runtime.device_profiler import MeasuredCutPoint, MeasuredProfile
from edgelesspart.runtime.manifest import load_manifest, sha256_file

SLOWER = 10.0  # the synthetic board is 10x this host at every cut point


def write_device(bundle: Path, path: Path, *, slower: float = SLOWER, model: str = "") -> Path:
    """A DEVICE.json as profile-device writes it, with ``slower`` x the bundle's host latencies."""
    host = ModelProfile.load(bundle / "profile.json")
    cps = tuple(
        MeasuredCutPoint(cp.name, i, cp.latency_ms * slower, cp.latency_ms * slower * 1.2,
                         cp.latency_ms * slower, 2**20 * (i + 1))
        for i, cp in enumerate(host.cut_points)
    )  # fmt: skip
    measured = MeasuredProfile(
        "slow-board", {"cpu_model": "Cortex-A53", "cores": 4, "litert_version": "2.3.0"},
        model or host.model, tuple(host.input_shape), "kit-test", cps,
        host.total.latency_ms * slower, 50 * 2**20, 2**30,
        settings={"repeats": 30, "memory_fraction": 0.5},
    )  # fmt: skip
    return measured.save(path)


CUTS = ("conv1", "pool1", "block2_add", "block2_relu", "pool2", "block3_conv", "block3_relu",
        "gap", "output")  # fmt: skip


@pytest.fixture
def profiled_bundle(tiny_bundle, tmp_path) -> Path:
    """A copy of the tiny bundle with a host ``profile.json`` (the build writes one)."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy, ignore=shutil.ignore_patterns("evaluation.*"))
    cps = tuple(
        CutPointProfile(name, i, 0.02 * (i + 1), 4096 * (i + 1), 0, (256,), 1024)
        for i, name in enumerate(CUTS)
    )
    ModelProfile("tiny_cnn", "host", (32, 32, 3), cps, method="litert").save(copy / "profile.json")
    data = json.loads((copy / "manifest.json").read_text())
    data["files"]["profile.json"] = sha256_file(copy / "profile.json")
    (copy / "manifest.json").write_text(json.dumps(data))
    return copy


@pytest.fixture
def device_file(profiled_bundle, tmp_path) -> Path:
    return write_device(profiled_bundle, tmp_path / "DEVICE.json")


def test_edge_segments_follow_the_measured_latencies_not_factor_one(profiled_bundle, device_file):
    # GIVEN the tiny bundle, its host profile and a board measured 10x slower at every cut point
    bundle = profiled_bundle
    manifest = load_manifest(bundle)
    host = ModelProfile.load(bundle / "profile.json")
    measured, info, _ = build_latency_model(
        manifest, EvaluationConfig(edge_device=str(device_file)), bundle
    )
    scaled, _, _ = build_latency_model(manifest, EvaluationConfig(edge_device="host"), bundle)
    # WHEN one trace is costed with both latency models
    from edgelesspart.model.datasets import load_dataset
    from edgelesspart.runtime.bundle import Bundle

    x = load_dataset("digits", seed=0).x_test[:8]
    trace = trace_split(Bundle.load(bundle), x, batch_size=8, label="t", show=False)
    on_board, on_host = exit_costs(trace, measured), exit_costs(trace, scaled)
    # THEN an edge segment costs the measured difference of its cut points plus the rest of its
    # traced time (exit head) at the measured 10x, never the host's factor 1
    host_cum = {"input": 0.0, **{cp.name: cp.latency_ms for cp in host.cut_points}}
    edge_segments = manifest.stage_segments(manifest.stage_names[0])
    elapsed = 0.0
    for seg in edge_segments:
        stretch = host_cum[seg.end] - host_cum[seg.start]
        rest = max(0.0, trace.segment_ms[seg.name] - stretch)
        elapsed += SLOWER * stretch + SLOWER * rest
        if seg.exit is not None:
            i = trace.exits.index(seg.exit)
            assert on_board.latency_ms[i] == pytest.approx(elapsed, rel=1e-6)
            assert on_board.latency_ms[i] >= SLOWER * on_host.latency_ms[i] * (1 - 1e-6)
    assert info["edge_factor_reason"] == "measured-profile"
    assert info["edge_latency_source"].startswith("measured-profile")
    # AND the cloud side is unchanged: a cloud exit differs only by the edge part's difference
    edge_gap = elapsed - sum(trace.segment_ms[s.name] for s in edge_segments)
    cloud = [i for i, e in enumerate(trace.exits) if trace.exit_stage[e] != trace.exit_stage[
        trace.exits[0]]]  # fmt: skip
    assert cloud
    for i in cloud:
        assert on_board.latency_ms[i] - on_host.latency_ms[i] == pytest.approx(edge_gap, rel=1e-6)
        assert on_board.cloud_ms[i] == pytest.approx(on_host.cloud_ms[i])


def test_evaluate_with_a_measured_edge_device(profiled_bundle, device_file, tmp_path):
    # GIVEN the 10x board's DEVICE.json; WHEN evaluate is given it with --edge-device
    out_host, out_board = tmp_path / "host", tmp_path / "board"
    common = ["--quiet", "--no-plots", "--thresholds", "0,1.01", "--link", "loopback"]
    assert main(["evaluate", str(profiled_bundle), "--edge-device", "host", "--out",
                 str(out_host), *common]) == 0  # fmt: skip
    assert main(["evaluate", str(profiled_bundle), "--edge-device", str(device_file), "--out",
                 str(out_board), *common]) == 0  # fmt: skip
    host = json.loads((out_host / "evaluation.json").read_text())
    board = json.loads((out_board / "evaluation.json").read_text())
    profile = ModelProfile.load(profiled_bundle / "profile.json")
    # THEN the edge-only baseline is the measured full model (10x the host's), not factor 1
    edge_only = board["baselines"]["edge-only"]["latency_mean_ms"]
    assert edge_only == pytest.approx(SLOWER * profile.total.latency_ms, rel=1e-6)
    assert host["baselines"]["edge-only"]["latency_mean_ms"] == pytest.approx(
        profile.total.latency_ms, rel=1e-6
    )
    # AND threshold 0 (everything answers at the first edge exit) is predicted far slower
    t0_board, t0_host = board["results"][0], host["results"][0]
    assert t0_board["offload_rate"] == t0_host["offload_rate"] == 0.0
    assert t0_board["latency_mean_ms"] > 5 * t0_host["latency_mean_ms"]
    assert board["settings"]["edge_latency_source"].startswith("measured-profile")
    assert host["settings"]["edge_latency_source"] == "scaled (speed_factor)"


def test_the_plans_measured_device_is_used_by_the_serving_choice(profiled_bundle, device_file):
    # GIVEN a copy of the bundle whose plan names the measured DEVICE.json as its edge device
    copy = profiled_bundle
    data = json.loads((copy / "manifest.json").read_text())
    data["plan"]["stages"][0]["device"] = str(device_file)
    (copy / "manifest.json").write_text(json.dumps(data))
    manifest = load_manifest(copy)
    # WHEN the build's serving step sets up its latency model
    from edgelesspart.evaluation.serving import _sweep_setup

    kwargs, _ = _sweep_setup(manifest, "wifi", "gcf", copy)
    model = kwargs["latency_model"]
    # THEN it holds the measured latency of every edge segment and the measured full model
    edge = {s.name for s in manifest.stage_segments(manifest.stage_names[0])}
    assert set(model.measured_segments) == edge
    host = ModelProfile.load(copy / "profile.json")
    assert model.edge_cumulative_ms["output"] == pytest.approx(SLOWER * host.total.latency_ms)
    assert not model.cloud_cumulative_ms
    # AND a build profile without the plan's cut points is refused with a fix
    write_device(copy, device_file, model="another_model")
    with pytest.raises(ProfileError, match="another_model"):
        _sweep_setup(manifest, "wifi", "gcf", copy)


def test_scaled_devices_keep_the_factor_path(tiny_bundle):
    # GIVEN a bundled device without a measurement (stored reference, as before)
    manifest = load_manifest(tiny_bundle)
    model, info, _ = build_latency_model(manifest, EvaluationConfig(edge_device="rpi4"))
    # THEN no segment is measured and the factor is the device's
    assert not model.measured_segments and not model.edge_cumulative_ms
    assert model.edge_factor > 1 and np.isfinite(model.edge_factor)
    assert info["edge_latency_source"] == f"scaled ({info['edge_factor_reason']})"
