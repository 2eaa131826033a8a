"""build and evaluate measure the exits' compute saving with one helper, interleaved.

Structure and consistency only (no timed assertions): the bundle's reference model is the same
network as its segment chain, the timing covers every segment and the full model in the same
rounds, the reported saving is the ratio it says it is, and both ``choose_serving`` (the
build's ``compute:`` line and payoff pass) and ``evaluate_bundle`` go through
``compute.time_interleaved`` and report the same record.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

pytestmark = pytest.mark.needs_tf


def test_reference_model_is_the_bundles_network(tiny_bundle, digits):
    from edgelesspart.evaluation.compute import reference_runner
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.manifest import REFERENCE_MODEL_PATH

    bundle = Bundle.load(tiny_bundle)
    assert REFERENCE_MODEL_PATH in bundle.manifest.files  # hashed like every bundle file
    full = reference_runner(bundle)
    x = np.asarray(digits[:16], dtype=np.float32)
    probs, boundary = full(x)
    trace = ProgressiveExecutor(bundle, bundle.stages[0]).trace(x)
    assert boundary is None
    # the exits' raw final probabilities (T = 1 in this bundle) are the full model's
    np.testing.assert_allclose(probs, trace.probs["final"], atol=1e-4)


def test_timing_and_saving_are_consistent(tiny_bundle, digits):
    from edgelesspart.evaluation.compute import measured_compute, time_interleaved
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(tiny_bundle)
    x = np.asarray(digits[:16], dtype=np.float32)
    trace = ProgressiveExecutor(bundle, bundle.stages[0]).trace(x)
    timing = time_interleaved(bundle, x, samples=8, rounds=3)
    assert timing.interleaved and timing.segments == trace.segments
    assert timing.full_ms.shape == (8, 3)
    assert all(m.shape == (8, 3) and (m > 0).all() for m in timing.segment_ms.values())
    low = measured_compute(trace, 0.0, timing)  # every sample answers at the first exit
    high = measured_compute(trace, 1.01, timing)  # every sample runs the whole chain
    for net in (low, high):
        assert net["full_model_source"] == "interleaved: 8 samples x 3 rounds"
        assert net["saving"] == pytest.approx(
            net["full_model_host_ms"] / net["served_host_ms"], rel=2e-3
        )
        rounds = net["saving_rounds"]
        assert rounds["min"] <= rounds["median"] <= rounds["max"]
    assert high["served_host_ms"] == pytest.approx(high["all_segments_host_ms"], abs=1e-3)
    assert low["served_host_ms"] < high["served_host_ms"]
    assert high["exit_overhead_ms"] == pytest.approx(
        high["all_segments_host_ms"] - high["full_model_host_ms"], abs=1e-3
    )


def test_build_and_evaluate_report_from_the_same_helper(tiny_bundle, tmp_path, monkeypatch):
    from edgelesspart.evaluation import compute
    from edgelesspart.evaluation.pipeline import EvaluationConfig, evaluate_bundle, load_eval_data
    from edgelesspart.evaluation.serving import choose_serving
    from edgelesspart.runtime.manifest import load_manifest, write_manifest

    calls = []
    helper = compute.time_interleaved

    def spy(bundle, x, **kwargs):
        calls.append(len(x))
        return helper(bundle, x, samples=12, rounds=2)

    monkeypatch.setattr(compute, "time_interleaved", spy)
    # GIVEN a copy of the bundle without a serving choice
    path = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, path)
    manifest = load_manifest(path, verify=False)
    data = load_eval_data(manifest)
    # WHEN the build's serving choice runs, then evaluate on the chosen threshold
    serving = choose_serving(path, data)
    write_manifest(path, replace(manifest, serving=serving))
    evaluation = evaluate_bundle(path, EvaluationConfig(), show_progress=False)
    # THEN both timed through the helper (validation for the build, test for evaluate) ...
    assert calls == [len(data.x_val), len(data.x_test)]
    built, evaluated = serving["payoff"]["net"], evaluation.selection["compute"]
    # ... and report the same record: interleaved, with its spread, at the same threshold
    assert set(built) == set(evaluated)
    for net in (built, evaluated):
        assert net["full_model_source"] == "interleaved: 12 samples x 2 rounds"
        assert net["threshold"] == serving["threshold"]
        assert net["saving_rounds"]["min"] <= net["saving_rounds"]["max"]


def test_a_bundle_without_reference_says_where_its_full_model_time_is_from(tiny_bundle, digits):
    from edgelesspart.evaluation.compute import measured_compute, time_interleaved
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.manifest import REFERENCE_MODEL_PATH

    bundle = Bundle.load(tiny_bundle)
    files = {k: v for k, v in bundle.manifest.files.items() if k != REFERENCE_MODEL_PATH}
    bundle.manifest = replace(bundle.manifest, files=files)  # as an older build wrote it
    x = np.asarray(digits[:8], dtype=np.float32)
    timing = time_interleaved(bundle, x, samples=4, rounds=1)
    assert not timing.interleaved
    trace = ProgressiveExecutor(bundle, bundle.stages[0]).trace(x)
    net = measured_compute(trace, 0.5, timing, profile_full_ms=2.0)
    assert net["full_model_host_ms"] == 2.0 and net["saving_rounds"] is None
    assert "not interleaved" in net["full_model_source"]
