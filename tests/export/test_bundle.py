"""The exported bundle: LiteRT segments match their Keras twins, and the chain is the model."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from edgelesspart.errors import BundleError  # noqa: E402
from edgelesspart.export.bundle import plan_segments  # noqa: E402
from edgelesspart.runtime.manifest import load_manifest  # noqa: E402

pytestmark = pytest.mark.needs_tf


@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    return load_manifest(tiny_bundle)


@pytest.fixture(scope="module")
def probe(manifest):
    return np.random.default_rng(0).random((3, *manifest.input.tensor.shape), dtype=np.float32)


def run_tflite(path, x):
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return runner(x=x)


def test_bundle_layout(tiny_bundle, manifest):
    # THEN every segment has both formats, the exit code is kept, and all files are hashed
    assert (tiny_bundle / "exits" / "generated_exit.py").read_text().startswith(("import", '"""'))
    for seg in manifest.segments:
        assert set(seg.files) == {"tflite", "keras"}
        for rel in seg.files.values():
            assert (tiny_bundle / rel).is_file() and rel in manifest.files
    assert [s.name for s in manifest.segments] == ["edge_0", "edge_1", "cloud_0", "cloud_1"]
    assert [e.name for e in manifest.exits] == ["exit_1", "exit_2", "exit_3", "final"]
    assert manifest.segments[1].exit == "exit_2" and manifest.segments[1].end == manifest.plan.split


def test_tflite_segments_reproduce_keras_segments(tiny_bundle, manifest, probe):
    x = probe
    for seg in manifest.segments:
        model = keras.saving.load_model(tiny_bundle / seg.files["keras"], safe_mode=True)
        want = {k: np.asarray(v) for k, v in model(x, training=False).items()}
        got = run_tflite(tiny_bundle / seg.files["tflite"], x)
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-4, rtol=1e-4)
        if seg.exit:
            np.testing.assert_allclose(got["probs"].sum(axis=1), 1.0, atol=1e-4)
        x = want.get("boundary")


def test_segment_chain_ends_in_final_probabilities(tiny_bundle, manifest, probe):
    x = probe
    for seg in manifest.segments:
        out = run_tflite(tiny_bundle / seg.files["tflite"], x)
        assert out["probs"].shape == (3, len(manifest.classes)) if seg.exit else True
        x = out.get("boundary")
    assert x is None and out["probs"].shape == (3, 10)


def test_plan_segments_put_exits_inside_their_stage(manifest):
    from edgelesspart.export.bundle import ExportRequest

    request = ExportRequest(
        backbone=None,
        exit_tensors={},
        exit_cuts={e.name: e.cut_point for e in manifest.exits if e.name != "final"},
        plan=manifest.plan,
        classes=manifest.classes,
        preprocessing={},
        exit_code="",
    )
    rows = plan_segments(request)
    assert [(r[1], r[3], r[4]) for r in rows] == [
        ("edge", "pool1", "exit_1"),
        ("edge", "block2_relu", "exit_2"),
        ("cloud", "block3_relu", "exit_3"),
        ("cloud", "output", "final"),
    ]


def test_export_refuses_existing_directory_and_writes_nothing_on_error(tiny_bundle, tmp_path):
    from edgelesspart.export.bundle import ExportRequest, export_bundle

    manifest = load_manifest(tiny_bundle)
    request = ExportRequest(
        backbone=None,
        exit_tensors={},
        exit_cuts={},
        plan=manifest.plan,
        classes=manifest.classes,
        preprocessing={},
        exit_code="",
    )
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(request, tiny_bundle, probe=np.zeros((1, 32, 32, 3), np.float32))
    out = tmp_path / "never"
    with pytest.raises(BundleError, match="lists exits .* that have no exit head"):
        export_bundle(request, out, probe=np.zeros((1, 32, 32, 3), np.float32))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_manifest_records_training_and_dataset(manifest):
    assert manifest.training["accuracy"]["test"]["final"] > 0.5
    assert manifest.extra["dataset"]["spec"] == "digits"
    assert json.loads(json.dumps(manifest.to_dict()))["bundle_id"] == manifest.bundle_id
