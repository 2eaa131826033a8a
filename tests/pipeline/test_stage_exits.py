"""A stage worker in-process: early exits answer inside a stage, later stages pass the answer on."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.errors import BundleError
from edgelesspart.pipeline.stage import StageSpec, StageWorker, stage_files
from edgelesspart.runtime.codecs import decode_tensor, encode_tensor
from edgelesspart.runtime.manifest import load_manifest

pytestmark = pytest.mark.needs_tf  # the session's tiny_bundle is built with TensorFlow


def _worker(bundle, stage: str, **kw) -> StageWorker:
    manifest = load_manifest(bundle)
    spec = StageSpec(stage, tuple(s.name for s in manifest.stage_segments(stage)), **kw)
    return StageWorker(manifest.to_dict(), spec.to_dict(), stage_files(bundle, manifest, spec))


def test_a_confident_exit_answers_and_later_stages_pass_it_through(tiny_bundle, digits):
    # GIVEN the tiny bundle's edge stage (exits exit_1, exit_2) with threshold 0: any exit answers
    edge = _worker(tiny_bundle, "edge", codec_out="raw", threshold=0.0)
    cloud = _worker(tiny_bundle, "cloud")
    frame = encode_tensor(digits[:1], "raw", meta={"seq": 7})
    # WHEN one input goes through both stages
    out, stats = edge.forward(frame)
    probs, header = decode_tensor(out)
    # THEN the first exit answered in the edge stage
    assert header["meta"] == {"seq": 7, "final": True, "exit": "exit_1", "by": "edge"}
    assert probs.shape == (1, 10) and np.isclose(probs.sum(), 1.0, atol=1e-4)
    assert stats["bytes_in"] == len(frame) and stats["bytes_out"] == len(out)
    # AND the cloud stage hands the answer on untouched, without computing
    again, cloud_stats = cloud.forward(out)
    assert again is out and cloud_stats["passed_through"]


def test_without_threshold_the_boundary_goes_on_and_the_last_stage_answers(tiny_bundle, digits):
    edge = _worker(tiny_bundle, "edge", codec_out="int8+zstd")
    cloud = _worker(tiny_bundle, "cloud")
    boundary, _ = edge.forward(encode_tensor(digits[:2], "raw", meta={"seq": 1}))
    assert decode_tensor(boundary)[1]["codec"] == "int8+zstd"
    answer, stats = cloud.forward(boundary)
    probs, header = decode_tensor(answer)
    assert header["meta"]["final"] and header["meta"]["exit"] == "final"
    assert probs.shape == (2, 10) and not stats["passed_through"]


def test_a_tampered_segment_file_is_refused(tiny_bundle):
    manifest = load_manifest(tiny_bundle)
    spec = StageSpec("edge", tuple(s.name for s in manifest.stage_segments("edge")))
    files = {
        rel: data[:-1] + b"x" for rel, data in stage_files(tiny_bundle, manifest, spec).items()
    }
    with pytest.raises(BundleError, match="does not match manifest.json"):
        StageWorker(manifest.to_dict(), spec.to_dict(), files)


def test_a_worker_leaves_no_segment_files_behind(tiny_bundle, digits, tmp_path, monkeypatch):
    import tempfile

    # GIVEN temporary files going to an empty folder
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # WHEN a stage worker loads its segments (a Ray actor is later killed, without __del__)
    edge = _worker(tiny_bundle, "edge")
    # THEN its segment files are already gone, and it still computes, twice and batched
    assert list(tmp_path.iterdir()) == []
    for rows in (1, 3):
        boundary, _ = edge.forward(encode_tensor(digits[:rows], "raw", meta={"seq": rows}))
        assert decode_tensor(boundary)[0].shape[0] == rows
