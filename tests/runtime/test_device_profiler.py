"""Profiling kits measured on the device: ``profile-device`` with TensorFlow blocked.

The kit itself is written with TensorFlow (build side, ``needs_tf``); measuring it runs in a
fresh interpreter where importing tensorflow/keras raises, as on a Pi or Jetson lean install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgelesspart.errors import BundleError, ProfileError
from edgelesspart.runtime.device_profiler import (
    MeasuredProfile,
    device_identity,
    load_measured_profile,
    profile_kit,
)
from edgelesspart.runtime.kit import KIT_MANIFEST, load_kit

ROOT = Path(__file__).resolve().parents[2]
BLOCK_AND_PROFILE = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockHeavy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockHeavy())
    from edgelesspart.cli import main

    code = main(sys.argv[1:])
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    print("HEAVY=" + ",".join(heavy))
    raise SystemExit(code)
    """
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    """A profiling kit of the tiny test CNN at 4 candidate cut points (untrained weights)."""
    pytest.importorskip("tensorflow")
    from bundle_factory import tiny_model

    from edgelesspart._lazy import keras
    from edgelesspart.profiling.kit import write_kit

    out = tmp_path_factory.mktemp("kits") / "tiny"
    write_kit(tiny_model(keras()), out, model_name="tiny_cnn", max_cut_points=4)
    return out


@pytest.mark.needs_tf
def test_profile_device_round_trip_with_tensorflow_blocked(kit, tmp_path):
    # GIVEN a kit written by the build side
    out = tmp_path / "DEVICE.json"
    # WHEN profile-device runs in an interpreter that cannot import TensorFlow
    args = ["profile-device", str(kit), "--out", str(out), "--repeats", "5", "--name", "dev"]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_AND_PROFILE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    # THEN it succeeds without loading TensorFlow and writes one entry per kit cut point
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY=\n" in proc.stdout
    measured = load_measured_profile(out)
    manifest = load_kit(kit)
    assert [cp.name for cp in measured.cut_points] == [cp.name for cp in manifest.cut_points]
    assert measured.name == "dev" and measured.kit_id == manifest.kit_id
    latencies = [cp.latency_ms for cp in measured.cut_points]
    assert latencies == sorted(latencies) and latencies[0] > 0
    assert all(cp.latency_p95_ms >= cp.latency_ms for cp in measured.cut_points)
    assert latencies[-1] == pytest.approx(measured.full_model_ms, rel=1e-3)
    # the child's own peak (LiteRT + slices), not the high-water mark of this TF-laden parent
    assert 10 * 2**20 < measured.peak_rss_bytes < 400 * 2**20
    ident = measured.identity
    assert ident["cores"] >= 1 and ident["memory_bytes"] > 0 and ident["litert_version"]
    assert ident["cpu_model"] and ident["delegates"]
    assert MeasuredProfile.from_dict(json.loads(out.read_text())) == measured


@pytest.mark.needs_tf
def test_a_modified_slice_is_refused(kit, tmp_path):
    # GIVEN a copy of the kit with one slice truncated in transit
    import shutil

    copy = tmp_path / "kit"
    shutil.copytree(kit, copy)
    victim = copy / load_kit(copy).cut_points[1].slice
    victim.write_bytes(victim.read_bytes()[:-10])
    # WHEN it is profiled, THEN it is refused before anything runs, naming the file
    with pytest.raises(BundleError, match=r"stretch_1\.tflite.*does not match its sha256"):
        profile_kit(copy, repeats=3)


def test_a_kit_path_cannot_leave_the_kit(tmp_path):
    # GIVEN a kit.json whose slice points outside the directory
    entry = {
        "name": "output",
        "index": 0,
        "slice": "../evil.tflite",
        "memory_bytes": 1,
        "weight_bytes": 1,
        "boundary_shape": [2],
        "boundary_bytes": 8,
    }
    (tmp_path / "evil.tflite").write_bytes(b"x")
    manifest = {
        "version": 1,
        "kit_id": "k",
        "model": "m",
        "input_shape": [2],
        "cut_points": [entry],
        "whole": "../evil.tflite",
        "files": {"../evil.tflite": "0" * 64},
    }
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / KIT_MANIFEST).write_text(json.dumps(manifest))
    # WHEN it is loaded, THEN the escape is refused
    with pytest.raises(BundleError, match="outside the kit directory"):
        load_kit(kit)


@pytest.mark.parametrize(
    "broken",
    [{"files": ["slices/whole.tflite"]}, {"cut_points": [None]}, {"cut_points": 3}],
    ids=["files-as-list", "cut-point-not-an-object", "cut-points-not-a-list"],
)
def test_a_malformed_kit_json_is_a_bundle_error(tmp_path, broken):
    # GIVEN a kit.json with one field of the wrong JSON type
    manifest = {
        "version": 1,
        "kit_id": "k",
        "model": "m",
        "input_shape": [2],
        "cut_points": [],
        "whole": "slices/whole.tflite",
        "files": {},
        **broken,
    }
    (tmp_path / KIT_MANIFEST).write_text(json.dumps(manifest))
    # WHEN it is loaded, THEN the error names the kit file (not an AttributeError)
    with pytest.raises(BundleError, match="Malformed kit.json"):
        load_kit(tmp_path)


def test_not_a_kit_and_bad_settings_have_actionable_errors(tmp_path):
    with pytest.raises(BundleError, match="not a profiling kit.*--profiling-kit"):
        load_kit(tmp_path)
    with pytest.raises(ProfileError, match="repeats >= 3"):
        profile_kit(tmp_path, repeats=1)
    with pytest.raises(ProfileError, match="kind"):
        MeasuredProfile.from_dict({"name": "x"})


def test_device_identity_names_the_machine():
    ident = device_identity(("gpu",))
    assert ident["delegates"] == ["gpu"]
    assert ident["cores"] >= 1 and ident["machine"]
