"""Segment backends: ``keras`` gives the same answers as ``litert`` on the same bundle.

Runs on the CPU here; on a machine with a GPU visible to TensorFlow (``CUDA_VISIBLE_DEVICES``
set, ``EDGELESSPART_EXPECT_GPU=1``) the keras backend must also report that it ran on the GPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgelesspart.errors import BundleError, ConfigError
from edgelesspart.runtime import backends
from edgelesspart.runtime.bundle import Bundle

# LiteRT (XNNPACK) and TensorFlow differ in summation order; cuDNN adds TF32/fused kernels.
ATOL = 2e-4 if not os.environ.get("EDGELESSPART_EXPECT_GPU") else 2e-3


def _chain(bundle: Bundle, x: np.ndarray) -> dict[str, tuple]:
    """Every segment's (probs, boundary), run in order from the model input."""
    out, value = {}, x
    for seg in bundle.manifest.segments:
        probs, boundary = bundle.runner(seg.name)(value, trusted=True)
        out[seg.name] = (probs, boundary)
        if boundary is not None:
            value = boundary
    return out


@pytest.mark.needs_tf
def test_keras_backend_matches_litert_on_every_segment(tiny_bundle, digits):
    # GIVEN the same bundle loaded with both backends
    pytest.importorskip("tensorflow")
    lite = Bundle.load(tiny_bundle, pool_size=1)
    keras_bundle = Bundle.load(tiny_bundle, pool_size=2, backend="keras")
    x = digits[:16]
    # WHEN every segment runs on the same batch
    want, got = _chain(lite, x), _chain(keras_bundle, x)
    # THEN probabilities and boundary tensors agree within tolerance, and so do the answers
    for name, (probs, boundary) in want.items():
        k_probs, k_boundary = got[name]
        for a, b in ((probs, k_probs), (boundary, k_boundary)):
            assert (a is None) == (b is None), name
            if a is not None:
                scale = max(1.0, float(np.max(np.abs(a))))
                np.testing.assert_allclose(b, a, atol=ATOL * scale, err_msg=name)
        if probs is not None:
            agree = np.mean(np.argmax(probs, 1) == np.argmax(k_probs, 1))
            assert agree >= 15 / 16, name
    info = backends.backend_info("keras")
    if os.environ.get("EDGELESSPART_EXPECT_GPU"):
        assert info["device"] == "GPU" and info["gpus"], info
    runner = keras_bundle.runner(keras_bundle.manifest.segments[0].name)
    assert runner.backend == "keras" and runner.calls == 1


@pytest.mark.needs_tf
def test_keras_backend_runs_the_progressive_executor(tiny_bundle, digits):
    # GIVEN the edge executor over each backend
    pytest.importorskip("tensorflow")
    from edgelesspart.runtime.executor import ProgressiveExecutor

    x = digits[:8]
    answers = {}
    for backend in backends.BACKENDS:
        bundle = Bundle.load(tiny_bundle, pool_size=1, backend=backend)
        trace = ProgressiveExecutor(bundle, bundle.stages[0]).trace(x)
        answers[backend] = trace
    # THEN the traced exit probabilities agree
    lite, keras_trace = answers["litert"], answers["keras"]
    assert lite.exits == keras_trace.exits
    for name, probs in lite.probs.items():
        np.testing.assert_allclose(keras_trace.probs[name], probs, atol=ATOL)


def test_unknown_backend_names_the_choices(tiny_bundle):
    with pytest.raises(ConfigError, match=r"Unknown segment backend 'onnx'.*litert, keras"):
        Bundle.load(tiny_bundle, backend="onnx")


def test_keras_backend_refuses_a_bundle_without_keras_files(tiny_bundle, tmp_path):
    # GIVEN a manifest whose segments list only LiteRT files (what a cloud package ships)
    import shutil
    from dataclasses import replace

    from edgelesspart.runtime.manifest import load_manifest, write_manifest

    copy = tmp_path / "lite-only"
    shutil.copytree(tiny_bundle, copy)
    manifest = load_manifest(copy, verify=False)
    segments = tuple(
        replace(s, files={k: v for k, v in s.files.items() if k == "tflite"})
        for s in manifest.segments
    )
    write_manifest(copy, replace(manifest, segments=segments))
    # WHEN it is loaded for the keras backend, THEN the message names the missing format
    with pytest.raises(BundleError, match="no 'keras' file.*keras backend"):
        Bundle.load(copy, backend="keras", verify=False)


def test_edge_config_takes_the_backend_from_flag_or_environment():
    from edge_runtime.config import EdgeConfig

    assert EdgeConfig.from_env(env={}).backend == "litert"
    assert EdgeConfig.from_env(env={"EDGELESSPART_BACKEND": "keras"}).backend == "keras"
    assert EdgeConfig.from_env(env={"EDGELESSPART_BACKEND": "keras"}, backend="litert").backend == (
        "litert"
    )
    with pytest.raises(ConfigError, match="Unknown segment backend 'tensorrt'"):
        EdgeConfig(backend="tensorrt")


@pytest.mark.needs_tf
def test_edge_service_serves_with_the_keras_backend(tiny_bundle, digits):
    # GIVEN the edge service loaded with --backend keras (edge only)
    pytest.importorskip("tensorflow")
    from edge_runtime.config import EdgeConfig
    from edge_runtime.service import EdgeService

    lite = EdgeService.load(tiny_bundle, EdgeConfig(threshold=0.0))
    heavy = EdgeService.load(tiny_bundle, EdgeConfig(threshold=0.0, backend="keras"))
    # WHEN both answer the same digits at threshold 0 (every row exits at the first exit)
    a, b = lite.infer(digits[:6]), heavy.infer(digits[:6])
    # THEN the answers are the same
    assert [r["label"] for r in a.answers] == [r["label"] for r in b.answers]
    assert heavy.bundle.runner(heavy.bundle.manifest.segments[0].name).backend == "keras"


@pytest.mark.needs_tf
def test_a_keras_segment_file_replaced_in_place_is_loaded_again(tiny_bundle, tmp_path):
    import os
    import shutil

    from edgelesspart.runtime.backends import open_keras
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(tiny_bundle, verify=False)
    edge = manifest.stage_segments("edge")[0].files["keras"]
    cloud = manifest.stage_segments("cloud")[-1].files["keras"]  # the final classifier
    # GIVEN a segment file served once
    path = tmp_path / "segment.keras"
    shutil.copyfile(tiny_bundle / edge, path)
    first = open_keras(path)
    assert open_keras(path) is first  # loaded once per process
    # WHEN another model is written to the same path (a bundle exported again)
    shutil.copyfile(tiny_bundle / cloud, path)
    os.utime(path, ns=(1, 1))
    # THEN the new file is loaded, not the cached old model
    second = open_keras(path)
    assert second is not first and second.outputs == ("probs",)
