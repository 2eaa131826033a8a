"""``edgelesspart build --nodes/--pipeline`` and ``inspect`` on a real (small) N-stage build."""

from __future__ import annotations

import pytest

from edgelesspart.cli import main
from edgelesspart.runtime.manifest import load_manifest

pytestmark = [pytest.mark.needs_tf, pytest.mark.slow]


def test_build_pipeline_writes_an_n_stage_bundle_and_inspect_shows_it(tmp_path, capsys):
    # GIVEN a heterogeneous 3-node chain of the small CNN on digits (1 quick epoch), one exit
    # per stage
    out = tmp_path / "chain"
    argv = [
        "build", "--pipeline", "rpi4,jetson-orin-nano,rpi4", "--link", "wifi",
        "--model", "small_cnn", "--epochs", "1", "--limit", "150", "--max-cut-points", "6",
        "--codec", "auto", "--exits-per-part", "1", "--out", str(out), "--quiet",
    ]  # fmt: skip
    # WHEN it is built
    assert main(argv) == 0
    built = capsys.readouterr().out
    # THEN the plan output compares the optimum with DEFER's equal-layer split
    assert "constraint=pipeline" in built
    assert "DEFER equal-layer split at" in built
    manifest = load_manifest(out)
    stages = manifest.plan.stages
    assert [s.name for s in stages] == ["stage0", "stage1", "stage2"]
    assert [s.device for s in stages] == ["rpi4", "jetson-orin-nano", "rpi4"]
    codecs = [s.options["codec_out"] for s in stages]
    assert codecs[-1] is None and all(c in ("raw", "zfp+lz4", "int8+zstd") for c in codecs[:2])
    assert manifest.codec["per_link"] == codecs[:2]
    assert manifest.plan.parameters["codec_times"] == "measured"
    # AND each stage got at most one trained early exit (--exits-per-part 1), where it has an
    # internal cut point to put it on
    assert all(len(s.exits) <= 1 for s in stages) and sum(len(s.exits) for s in stages) >= 2
    early = [e for e in manifest.exits if e.name != "final"]
    assert [e.stage for e in early] == [s.name for s in stages if s.exits]
    assert all("val_accuracy" in e.metrics for e in early)
    # AND inspect lists every stage with the codec of its link
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    for stage, codec in zip(stages[:2], codecs[:2]):
        assert f"    {stage.name}: compute" in shown and f"with {codec}" in shown


def test_pipeline_and_nodes_must_agree(capsys):
    code = main(["build", "--pipeline", "rpi4,rpi4", "--nodes", "3", "--quiet"])
    assert code == 2
    assert "--nodes 3 disagrees with --pipeline (2 nodes)" in capsys.readouterr().err


def test_two_identical_builds_give_the_same_plan(tmp_path, capsys):
    # GIVEN the same 3-node chain build run twice (each profiles the model anew: timing noise)
    def build(out):
        argv = [
            "build", "--pipeline", "rpi4,rpi4,rpi4", "--link", "wifi", "--model", "small_cnn",
            "--epochs", "1", "--limit", "150", "--max-cut-points", "6", "--codec", "auto",
            "--out", str(out), "--quiet",
        ]  # fmt: skip
        assert main(argv) == 0
        return load_manifest(out).plan

    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    capsys.readouterr()

    # THEN both plans cut at the same points with the same link codecs
    def shape(plan):
        return [(s.start, s.end, s.options["codec_out"]) for s in plan.stages]

    assert shape(first) == shape(second)
    # AND each records the tolerance it used and a measured result size: 10 float32
    # probabilities in a frame, not 1,000 classes' 4,200 bytes
    for plan in (first, second):
        assert plan.parameters["tolerance"] == 0.05
        assert plan.parameters["result_bytes_measured"] is True
        assert 40 < plan.parameters["result_bytes"] < 1000
        assert plan.stages[-1].options["cost"]["out_bytes"] == plan.parameters["result_bytes"]
