"""evaluate always shows the manifest's serving threshold and its measured compute saving."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

pytestmark = pytest.mark.needs_tf


def test_evaluate_includes_marks_and_prices_the_serving_threshold(tiny_bundle, tmp_path):
    from edgelesspart.evaluation.pipeline import EvaluationConfig, evaluate_bundle
    from edgelesspart.evaluation.report import format_table
    from edgelesspart.runtime.manifest import load_manifest, write_manifest

    # GIVEN a bundle whose build chose a serving threshold the default sweep does not hold
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = load_manifest(bundle, verify=False)
    write_manifest(bundle, replace(manifest, serving={"threshold": 0.92}))
    # WHEN it is evaluated with the default 0.3:0.9:0.05 sweep
    evaluation = evaluate_bundle(bundle, EvaluationConfig(), show_progress=False)
    # THEN 0.92 is in the results, marked S in the table, with the measured compute saving
    assert 0.92 in [r.threshold for r in evaluation.results]
    compute = evaluation.selection["compute"]
    assert compute["threshold"] == 0.92 and compute["full_model_host_ms"] > 0
    assert compute["saving"] == pytest.approx(
        compute["full_model_host_ms"] / compute["served_host_ms"], rel=1e-2
    )
    table = format_table(evaluation)
    assert " 0.92S" in table and "S serving threshold 0.92" in table
    assert "ms over the backbone alone" in table
