"""Plan truth on a built bundle: exit rates measured on a trace, and warnings that never fail a
build. Pure (no TensorFlow)."""

from __future__ import annotations


def test_measured_exit_rates_are_conditional_on_reaching_the_exit():
    # GIVEN a trace of 4 rows: exit_1 confident on rows 0, 1; exit_2 confident on rows 1, 2
    from types import SimpleNamespace

    import numpy as np

    from edgelesspart.evaluation.plan_truth import measured_exit_rates

    sure, unsure = [0.95, 0.05], [0.55, 0.45]
    trace = SimpleNamespace(
        exits=("exit_1", "exit_2", "final"),
        probs={
            "exit_1": np.array([sure, sure, unsure, unsure]),
            "exit_2": np.array([unsure, sure, sure, unsure]),
            "final": np.array([sure] * 4),
        },
    )
    # WHEN rates are measured at threshold 0.9
    rates = measured_exit_rates(trace, 0.9, {"exit_1": "cut_a", "exit_2": "cut_b"})
    # THEN exit_1 answers 2 of 4; exit_2 answers 1 of the 2 rows left (row 1 already left)
    assert rates == {"cut_a": 0.5, "cut_b": 0.5}


def test_a_bundle_the_check_cannot_model_does_not_fail_the_build(tmp_path, monkeypatch):
    # GIVEN a bundle whose plan cannot be checked (here: its profile is missing)
    import edgelesspart.evaluation.plan_truth as plan_truth
    from edgelesspart.errors import ProfileError

    def broken(*_args, **_kwargs):
        raise ProfileError("Cannot read profile b/profile.json: no such file.")

    monkeypatch.setattr(plan_truth, "check_bundle", broken)
    monkeypatch.setattr(
        "edgelesspart.runtime.manifest.load_manifest",
        lambda *_a, **_k: type("M", (), {"training": {}, "classes": ("a", "b")})(),
    )
    # WHEN the build asks for its warnings
    warnings = plan_truth.bundle_warnings(tmp_path)
    # THEN it gets one note saying why, not an exception
    assert warnings == [
        "the plan could not be checked against edge-only and cloud-only: Cannot read profile "
        "b/profile.json: no such file."
    ]
