"""Manifest schema, JSON round trip, hash verification and path safety (no TensorFlow)."""

from __future__ import annotations

import json
import shutil

import pytest

from edgelesspart.errors import BundleError, PlanError
from edgelesspart.runtime.manifest import (
    Manifest,
    load_manifest,
    safe_path,
    write_manifest,
)
from edgelesspart.runtime.plan import Plan, Stage


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest


def test_write_then_load_is_identical(bundle_copy):
    manifest = load_manifest(bundle_copy)
    write_manifest(bundle_copy, manifest)
    assert load_manifest(bundle_copy) == manifest


def test_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(BundleError, match="No manifest.json in .*edgelesspart build"):
        load_manifest(tmp_path)


def test_corrupted_manifest_json_is_rejected(bundle_copy):
    (bundle_copy / "manifest.json").write_text('{"schema_version": 1, "bundle_id": ')
    with pytest.raises(BundleError, match="is not valid JSON"):
        load_manifest(bundle_copy)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(schema_version=99), "Unsupported manifest schema_version 99"),
        (lambda d: d.pop("segments"), "missing or bad field 'segments'"),
        (lambda d: d["plan"].update(stages=[]), "bad plan: A plan needs at least one stage"),
        (lambda d: d["segments"][0].update(stage="mars"), "unknown stage 'mars'"),
        (lambda d: d["files"].pop(d["segments"][0]["files"]["tflite"]), "has no hash"),
        (lambda d: d["segments"].pop(), "must end in the final classifier"),
    ],
)
def test_malformed_manifest_is_rejected_with_reason(bundle_copy, change, message):
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_manifest(bundle_copy)


def test_tampered_file_is_refused(bundle_copy):
    manifest = load_manifest(bundle_copy)
    victim = bundle_copy / manifest.segments[0].files["tflite"]
    victim.write_bytes(victim.read_bytes()[:-8] + b"tampered")
    with pytest.raises(BundleError, match="does not match its hash"):
        load_manifest(bundle_copy)
    load_manifest(bundle_copy, verify=False)  # explicit opt-out still parses


def test_missing_file_is_refused(bundle_copy):
    manifest = load_manifest(bundle_copy)
    (bundle_copy / manifest.segments[-1].files["keras"]).unlink()
    with pytest.raises(BundleError, match="is missing"):
        load_manifest(bundle_copy)


@pytest.mark.parametrize("bad", ["../outside.tflite", "/etc/passwd", "a/../../b", ""])
def test_path_traversal_is_refused(tmp_path, bad):
    with pytest.raises(BundleError, match="refused"):
        safe_path(tmp_path, bad)


def test_traversal_inside_manifest_is_refused(bundle_copy):
    def escape(d):
        d["files"]["../../etc/passwd"] = "0" * 64

    edit_manifest(bundle_copy, escape)
    with pytest.raises(BundleError, match="leaves the bundle"):
        load_manifest(bundle_copy)


def test_plan_round_trip_and_contiguity():
    plan = Plan(
        "memory",
        "pareto",
        (Stage("edge", "rpi4", "input", "c3", ("c1",)), Stage("cloud", "gcf-2gb", "c3", "output")),
        cut_points=("c1", "c2", "c3"),
        boundary_bytes=(1024,),
    )
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    assert plan.split == "c3" and plan.exits == ("c1",)
    with pytest.raises(PlanError, match="must be contiguous"):
        Plan("memory", "linear", (Stage("e", "d", "input", "c1"), Stage("c", "d", "c2", "output")))
    with pytest.raises(PlanError, match="must end at the model output"):
        Plan("memory", "linear", (Stage("e", "d", "input", "c1"),))
