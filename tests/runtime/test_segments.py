"""SegmentRunner: one LiteRT segment, dynamic batch, interpreter pool, thread safety."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgelesspart.errors import BundleError, InputError
from edgelesspart.runtime.manifest import load_manifest, safe_path
from edgelesspart.runtime.segments import SegmentRunner


@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    return load_manifest(tiny_bundle)


def _runner(tiny_bundle: Path, manifest, name: str, **kwargs) -> SegmentRunner:
    spec = next(s for s in manifest.segments if s.name == name)
    return SegmentRunner(safe_path(tiny_bundle, spec.files["tflite"]), spec, **kwargs)


def test_exit_segment_returns_probabilities_and_boundary_for_any_batch(
    tiny_bundle, manifest, digits_x
):
    # GIVEN the first edge segment (an exit plus a boundary)
    runner = _runner(tiny_bundle, manifest, "edge_0")
    spec = runner.spec
    for n in (1, 5, 17):
        # WHEN it runs on batches of different sizes
        probs, boundary = runner(digits_x[:n])
        # THEN it returns (n, classes) probabilities and the (n, *boundary) tensor
        assert probs.shape == (n, len(manifest.classes)) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert boundary.shape == (n, *spec.boundary.shape)
    assert runner.calls == 3 and runner.rows == 23


def test_batched_results_equal_one_by_one_results(tiny_bundle, manifest, digits_x):
    # GIVEN a batch of 6
    runner = _runner(tiny_bundle, manifest, "edge_0")
    probs, boundary = runner(digits_x[:6])
    # WHEN each row runs alone THEN the outputs match the batched ones
    for i in range(6):
        p, b = runner(digits_x[i])  # one sample without batch dim
        np.testing.assert_allclose(p[0], probs[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b[0], boundary[i], rtol=1e-5, atol=1e-5)


def test_final_segment_has_no_boundary(tiny_bundle, manifest):
    runner = _runner(tiny_bundle, manifest, "cloud_1")
    x = np.random.default_rng(0).random((3, *runner.spec.input.shape), dtype=np.float32)
    probs, boundary = runner(x)
    assert probs.shape == (3, len(manifest.classes)) and boundary is None


def test_wrong_input_shape_is_an_input_error(tiny_bundle, manifest):
    runner = _runner(tiny_bundle, manifest, "edge_1")
    with pytest.raises(InputError, match=r"Expected .*\(N, 16, 16, 8\) float32.*got shape"):
        runner(np.zeros((2, 32, 32, 3), np.float32))
    assert runner.calls == 0


def test_missing_and_corrupt_files_are_bundle_errors(tiny_bundle, manifest, tmp_path):
    spec = manifest.segments[0]
    with pytest.raises(BundleError, match="Segment file .* for segment 'edge_0' is missing"):
        SegmentRunner(tmp_path / "nope.tflite", spec)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(BundleError, match="is not a loadable LiteRT model"):
        SegmentRunner(junk, spec)


def test_signature_that_disagrees_with_the_manifest_is_refused(tiny_bundle, manifest):
    # GIVEN a spec claiming edge_0 has no boundary output (but the file has one)
    spec = replace(manifest.segments[0], boundary=None)
    path = safe_path(tiny_bundle, spec.files["tflite"])
    # WHEN / THEN loading says what the file has and what the manifest expects
    with pytest.raises(
        BundleError, match=r"returns \['boundary', 'probs'\].*expects .*\['probs'\]"
    ):
        SegmentRunner(path, spec)


def test_bad_pool_size_is_refused(tiny_bundle, manifest):
    with pytest.raises(BundleError, match="pool_size and num_threads must be >= 1"):
        _runner(tiny_bundle, manifest, "edge_0", pool_size=0)


def test_concurrent_calls_are_correct_and_the_pool_is_bounded(tiny_bundle, manifest, digits_x):
    # GIVEN a runner with at most 3 interpreters and the expected outputs, computed serially
    runner = _runner(tiny_bundle, manifest, "edge_0", pool_size=3)
    batches = [digits_x[i : i + 1 + i % 4] for i in range(24)]
    expected = [runner(b)[0] for b in batches]
    errors: list[str] = []

    def work(offset: int) -> None:
        for k in range(len(batches)):
            j = (k + offset) % len(batches)
            probs, _ = runner(batches[j])
            if not np.allclose(probs, expected[j], atol=1e-6):
                errors.append(f"batch {j} differs")

    # WHEN 8 threads hammer the same runner
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN every call matched the serial result and no more than 3 interpreters were built
    assert errors == []
    assert 1 <= runner.interpreters <= 3
    assert runner.calls == 24 * 9
