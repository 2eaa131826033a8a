"""``edgelesspart evaluate`` end to end on the real tiny bundle, and the pipeline's helpers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgelesspart.cli import main
from edgelesspart.errors import BundleError
from edgelesspart.evaluation.pipeline import codec_size_ratio, load_backbone
from edgelesspart.evaluation.sweep import StageMemory
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile


def test_evaluate_help_is_light():
    # WHEN the command module is imported and its --help rendered in a fresh interpreter
    code = (
        "import sys, contextlib, io\n"
        "import edgelesspart.evaluation, edgelesspart.evaluation.pipeline\n"
        "from edgelesspart.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: main(['evaluate', '--help'])\n"
        "    except SystemExit: pass\n"
        "assert '--max-accuracy-drop' in buf.getvalue() and '--calibrate' in buf.getvalue()\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # THEN it (and the evaluation package) works without importing TensorFlow, Keras, matplotlib
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_evaluate_end_to_end(tiny_bundle, tmp_path, capsys):
    # GIVEN the tiny bundle (exits exit_1, exit_2 on the edge; exit_3 and final in the cloud)
    before = sorted(p.name for p in Path(tiny_bundle).iterdir())
    # WHEN it is evaluated with calibration and threshold selection
    rc = main([
        "evaluate", str(tiny_bundle), "--out", str(tmp_path), "--quiet",
        "--thresholds", "0,0.3,0.5,0.7,0.9,1.01", "--calibrate", "--max-accuracy-drop", "2",
        "--provider", "lambda", "--link", "lte", "--cold-start-ms", "500",
        "--cold-start-prob", "0.1",
    ])
    # THEN it succeeds and writes the JSON, CSV and PNG outside the shared bundle
    assert rc == 0
    assert {p.name for p in tmp_path.iterdir()} == {
        "evaluation.json", "evaluation.csv", "evaluation.png"
    }
    assert sorted(p.name for p in Path(tiny_bundle).iterdir()) == before
    data = json.loads((tmp_path / "evaluation.json").read_text())
    rows = data["results"]
    offload = [r["offload_rate"] for r in rows]
    # AND the invariants hold on real data
    assert all(a <= b for a, b in zip(offload, offload[1:]))
    assert rows[0]["offload_rate"] == 0.0
    assert rows[-1]["exit_mix"]["final"] == 1.0
    assert rows[-1]["accuracy"] == pytest.approx(data["full_accuracy"])
    assert data["full_accuracy"] == pytest.approx(data["exit_accuracy"]["final"])
    assert data["full_accuracy"] > 0.5
    # AND calibration, selection, pricing and baselines are recorded
    assert set(data["calibration"]["temperatures"]) == {"exit_1", "exit_2", "exit_3", "final"}
    assert data["selection"]["threshold"] in [r["threshold"] for r in rows]
    assert data["selection"]["test"]["accuracy"] > 0
    assert data["pricing"]["name"] == "aws-lambda"
    assert set(data["baselines"]) == {"edge-only", "cloud-only", "split-no-exits"}
    assert data["baselines"]["edge-only"]["cloud_cost_per_million"] == 0.0
    assert rows[-1]["cloud_cost_per_million"] > 0.2  # at least the request price on every call
    # AND the table is printed
    out = capsys.readouterr().out
    assert "split-no-exits" in out and "chosen threshold" in out


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_sweep_answers_like_the_served_executor(tiny_bundle, threshold):
    # GIVEN the bundle's real executors and 64 test images
    import numpy as np

    from edgelesspart.evaluation.sweep import answering_exit, confidences
    from edgelesspart.model.datasets import load_dataset
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    x = load_dataset("digits", seed=0).x_test[:64]
    bundle = Bundle.load(tiny_bundle)
    edge = ProgressiveExecutor(bundle, "edge")
    # WHEN the served path runs edge then cloud at the threshold
    first = edge.run(x, threshold)
    served = [a.exit if a else None for a in first.answers]
    if len(first.pending):
        second = ProgressiveExecutor(bundle, "cloud").run(first.boundary, threshold)
        for row, answer in zip(first.pending, second.answers):
            served[row] = answer.exit
    # THEN the sweep, computed from one trace, picks the same exit for every sample
    trace = edge.trace(x)
    conf, _ = confidences(trace)
    swept = [trace.exits[i] for i in answering_exit(conf, threshold)]
    assert swept == served
    assert len(set(served)) > 1 and np.all(conf <= 1.0 + 1e-6)


def test_evaluate_explains_a_bundle_without_dataset_record(tiny_bundle, tmp_path, capsys):
    # GIVEN a copy of the bundle whose manifest lost extra["dataset"]
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy, ignore=shutil.ignore_patterns("evaluation.*"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["extra"].pop("dataset", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    # WHEN it is evaluated
    rc = main(["evaluate", str(copy), "--quiet", "--no-plots"])
    # THEN a one-line error says why and how to fix it
    assert rc == 2
    err = capsys.readouterr().err
    assert "no extra['dataset'] entry" in err and "edgelesspart build" in err


def test_evaluate_rejects_an_unknown_link(tiny_bundle, capsys):
    rc = main(["evaluate", str(tiny_bundle), "--link", "carrier-pigeon", "--quiet"])
    assert rc == 2
    assert "Unknown link 'carrier-pigeon'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("codec", "ratio"),
    [({"name": "raw"}, 1.0), ({"name": "lz4", "size_ratio": 0.25}, 0.25),
     ({"name": "zfp", "compression_ratio": 4.0}, 0.25), ({"name": "x", "ratio": 2.0}, 0.5)],
)
def test_codec_size_ratio_reads_the_manifest_entry(codec, ratio):
    assert codec_size_ratio(codec) == pytest.approx(ratio)


def test_codec_size_ratio_refuses_nonsense():
    with pytest.raises(BundleError, match="bad size ratio"):
        codec_size_ratio({"name": "lz4", "size_ratio": -1})


def _cut(name: str, index: int, ms: float, mem: int, boundary: int) -> CutPointProfile:
    return CutPointProfile(name, index, ms, mem, 0, (boundary // 4,), boundary)


def test_backbone_comes_from_the_bundle_profile_when_present(tmp_path):
    # GIVEN a bundle directory with a host profile.json split at "b"
    profile = ModelProfile(
        model="m", device="host", input_shape=(4,),
        cut_points=(_cut("a", 0, 1.0, 10, 400), _cut("b", 1, 3.0, 20, 800),
                    _cut("output", 2, 7.0, 50, 40)),
    )
    profile.save(tmp_path / "profile.json")
    manifest = SimpleNamespace(
        files={"profile.json": "x"}, plan=SimpleNamespace(split="b"),
        input=SimpleNamespace(tensor=SimpleNamespace(nbytes=16)),
    )
    bundle = SimpleNamespace(path=tmp_path, manifest=manifest)
    # WHEN the backbone is loaded
    backbone = load_backbone(bundle, trace=None, memory=StageMemory(1, 2))
    # THEN its timings are the profile's (no exit heads included)
    assert (backbone.full_ms, backbone.split_ms, backbone.boundary_bytes) == (7.0, 3.0, 800)
    assert (backbone.full_memory_bytes, backbone.input_bytes) == (50, 16)
    assert backbone.source == "profile"


def test_max_accuracy_drop_is_in_points_as_in_build(tiny_bundle, tmp_path, capsys):
    # GIVEN a drop given as a fraction-looking value beyond 100 points
    # WHEN evaluate is asked for it THEN it is refused with a message naming the unit
    rc = main(["evaluate", str(tiny_bundle), "--out", str(tmp_path), "--quiet",
               "--max-accuracy-drop", "150"])
    assert rc != 0
    assert "percentage points" in capsys.readouterr().err
