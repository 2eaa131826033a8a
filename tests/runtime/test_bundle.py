"""Bundle.load: manifest and hash validation, per-stage loading, partial (cloud) packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgelesspart.errors import BundleError
from edgelesspart.runtime.bundle import Bundle
from edgelesspart.runtime.manifest import load_manifest


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_load_gives_manifest_facts_and_a_runner_per_segment(tiny_bundle):
    # WHEN the whole bundle is loaded
    bundle = Bundle.load(tiny_bundle, pool_size=2)
    manifest = load_manifest(tiny_bundle)
    # THEN its facts come from the manifest
    assert bundle.bundle_id == manifest.bundle_id
    assert bundle.classes == manifest.classes and len(bundle.classes) == 10
    assert bundle.input_spec.tensor.shape == (32, 32, 3)
    assert bundle.stages == ("edge", "cloud")
    assert [s.name for s in bundle.segments("edge")] == ["edge_0", "edge_1"]
    assert [s.name for s in bundle.segments("cloud")] == ["cloud_0", "cloud_1"]
    # AND every segment has a runner
    for seg in manifest.segments:
        assert bundle.runner(seg.name).spec == seg
        assert bundle.runner(seg.name).pool_size == 2


def test_cloud_only_load_creates_only_cloud_runners(tiny_bundle):
    bundle = Bundle.load(tiny_bundle, stages=["cloud"])
    assert bundle.stages == ("cloud",)
    assert bundle.runner("cloud_0").spec.stage == "cloud"
    with pytest.raises(BundleError, match=r"Segment 'edge_0' is not loaded.*stages \['cloud'\]"):
        bundle.runner("edge_0")
    # the manifest is still whole: the edge's segment list can be read
    assert len(bundle.segments("edge")) == 2


def test_unknown_stage_is_refused(tiny_bundle):
    with pytest.raises(BundleError, match=r"Unknown stage\(s\) \['fog'\]; .*\['edge', 'cloud'\]"):
        Bundle.load(tiny_bundle, stages=["fog"])
    bundle = Bundle.load(tiny_bundle, stages=["edge"])
    with pytest.raises(BundleError, match="Unknown stage 'fog'"):
        bundle.segments("fog")


def test_tampered_file_is_refused_unless_verification_is_off(bundle_copy):
    # GIVEN a bundle whose Keras file for a cloud segment was modified
    target = bundle_copy / "segments" / "cloud_0.keras"
    target.write_bytes(target.read_bytes() + b"x")
    # WHEN / THEN loading refuses it with a clear message
    with pytest.raises(BundleError, match="'segments/cloud_0.keras' does not match its hash"):
        Bundle.load(bundle_copy)
    # AND an edge-only load refuses it too (a present file must be intact, even if unused)
    with pytest.raises(BundleError, match="does not match its hash"):
        Bundle.load(bundle_copy, stages=["edge"])
    # AND verify=False loads (the runtime reads only .tflite files)
    assert Bundle.load(bundle_copy, verify=False).stages == ("edge", "cloud")


def test_cloud_package_without_edge_files_loads_its_stage(bundle_copy):
    # GIVEN a cloud package: the edge segment files were left out
    for name in ("edge_0", "edge_1"):
        for ext in ("tflite", "keras"):
            (bundle_copy / "segments" / f"{name}.{ext}").unlink()
    # WHEN the cloud stage is loaded THEN it works
    assert Bundle.load(bundle_copy, stages=["cloud"]).stages == ("cloud",)
    # AND loading the edge (or everything) says which file is missing
    with pytest.raises(BundleError, match="'segments/edge_0.*' listed in manifest.json is missing"):
        Bundle.load(bundle_copy, stages=["edge"])
    with pytest.raises(BundleError, match="listed in manifest.json is missing"):
        Bundle.load(bundle_copy)


def test_inconsistent_segment_chain_is_refused(bundle_copy):
    def edit(data):
        data["segments"][1]["input"]["shape"] = [8, 8, 8]

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(
        BundleError, match=r"'edge_1' takes shape \(8, 8, 8\) but receives \(16, 16, 8\)"
    ):
        Bundle.load(bundle_copy)


def test_segment_without_tflite_file_is_refused(bundle_copy):
    def edit(data):
        del data["segments"][2]["files"]["tflite"]

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match="Segment 'cloud_0' has no 'tflite' file"):
        Bundle.load(bundle_copy, stages=["cloud"])


def test_path_escape_in_manifest_is_refused(bundle_copy):
    def edit(data):
        data["files"]["../outside.txt"] = "0" * 64

    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match="leaves the bundle; refused"):
        Bundle.load(bundle_copy)


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(BundleError, match="does not exist or is not a directory"):
        Bundle.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="No manifest.json .*: not a bundle"):
        Bundle.load(tmp_path)
