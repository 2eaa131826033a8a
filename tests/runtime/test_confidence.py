"""Calibrated confidence: temperature scaling, the confidence measures, and the executor hook."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgelesspart.errors import BundleError, ConfigError, InputError
from edgelesspart.runtime.confidence import (
    DEFAULT_THRESHOLD,
    ENTROPY,
    MAX_SOFTMAX,
    ExitScorer,
    apply_temperature,
    fit_temperature,
    nll,
    score,
    serving_threshold,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_temperature_one_is_the_identity_and_labels_never_change():
    probs = softmax(np.random.default_rng(0).normal(size=(50, 7)) * 3)
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, rtol=1e-6)
    for t in (0.3, 2.5):
        scaled = apply_temperature(probs, t)
        np.testing.assert_array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-5)
    # a temperature above 1 softens, below 1 sharpens
    assert apply_temperature(probs, 2.5).max(axis=1).mean() < probs.max(axis=1).mean()
    assert apply_temperature(probs, 0.3).max(axis=1).mean() > probs.max(axis=1).mean()


def test_fit_recovers_the_temperature_that_made_a_model_overconfident():
    # GIVEN labels drawn from softmax(z) and an exit that reports softmax(3 z) (overconfident)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4000, 5)) * 2
    true = softmax(logits)
    labels = np.array([rng.choice(5, p=p) for p in true])
    reported = softmax(3.0 * logits)
    # WHEN a temperature is fitted on them THEN it is close to 3 and lowers the NLL
    t = fit_temperature(reported, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(reported, labels, t) < nll(reported, labels, 1.0)


def test_entropy_confidence_is_one_minus_normalised_entropy():
    probs = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    conf = score(probs, "entropy")
    np.testing.assert_allclose(conf, [1.0, 0.0, 1.0 - math.log(2) / math.log(4)], atol=1e-9)
    np.testing.assert_allclose(score(probs, "max-softmax"), [1.0, 0.25, 0.5])


def test_scorer_from_an_old_manifest_changes_nothing():
    probs = softmax(np.random.default_rng(2).normal(size=(4, 3)))
    scorer = ExitScorer.from_serving({})
    np.testing.assert_allclose(scorer.calibrate("exit_1", probs), probs, rtol=1e-6)
    np.testing.assert_allclose(scorer.confidence(probs), probs.max(axis=1))
    assert serving_threshold({}) == DEFAULT_THRESHOLD == 0.8
    assert serving_threshold({"threshold": 0.42}) == 0.42
    for bad in ("0.8", True, -0.1, float("nan"), [0.8]):  # was float(): "0.8" read, [0.8] crashed
        with pytest.raises(BundleError, match="serving.threshold"):
            serving_threshold({"threshold": bad})


@pytest.mark.parametrize(
    ("serving", "match"),
    [
        ({"confidence": "margin"}, "Unknown confidence measure 'margin'"),
        ({"temperatures": {"exit_1": 0}}, "positive number, got 0"),
        ({"temperatures": {"exit_1": "hot"}}, "positive number, got 'hot'"),
        ({"temperatures": [1.0]}, "must map exit names"),
        ({"temperatures_in_graph": [2.0]}, "temperatures_in_graph must map"),
        ({"temperatures_in_graph": {"final": -1}}, "positive number, got -1"),
        (
            {"temperatures": {"exit_1": 2.0}, "temperatures_in_graph": {"exit_1": 2.0}},
            r"\['exit_1'\] are listed in serving.temperatures and in",
        ),
    ],
)
def test_bad_serving_entries_are_refused(serving, match):
    with pytest.raises(ConfigError, match=match):
        ExitScorer.from_serving(serving)


def test_temperatures_in_the_graph_are_not_applied_again():
    # GIVEN a bundle whose final head applies its temperature and whose exit_1 does not
    probs = softmax(np.random.default_rng(3).normal(size=(6, 4)) * 3).astype(np.float32)
    scorer = ExitScorer.from_serving(
        {"temperatures": {"exit_1": 2.0}, "temperatures_in_graph": {"final": 0.05}}
    )
    # THEN only exit_1 is scaled by the runtime; final's output is scored as it comes
    np.testing.assert_array_equal(scorer.calibrate("final", probs), probs)
    labels, conf = scorer.top1("final", probs)
    assert labels == probs.argmax(axis=1).tolist() and conf == probs.max(axis=1).tolist()
    np.testing.assert_allclose(scorer.calibrate("exit_1", probs), apply_temperature(probs, 2.0))


def test_fit_refuses_mismatched_labels():
    with pytest.raises(InputError, match="N labels"):
        fit_temperature(np.full((3, 2), 0.5), np.array([0, 1]))


# --- the executor applies the manifest's serving entry --------------------------------------------


def _with_serving(bundle_dir, serving):
    path = bundle_dir / "manifest.json"
    data = json.loads(path.read_text())
    data["serving"] = serving
    path.write_text(json.dumps(data))


def test_executor_answers_with_calibrated_confidence_and_the_manifest_threshold(
    bundle_copy, digits_x
):
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    # GIVEN the raw exit probabilities of a bundle without a serving entry
    raw = ProgressiveExecutor(Bundle.load(bundle_copy, pool_size=1), "edge").trace(digits_x[:8])
    temps = {"exit_1": 2.0, "exit_2": 0.5, "exit_3": 1.5, "final": 1.2}
    # WHEN the manifest records temperatures, entropy confidence and a threshold
    _with_serving(bundle_copy, {"threshold": 0.0, "confidence": "entropy", "temperatures": temps})
    executor = ProgressiveExecutor(Bundle.load(bundle_copy, pool_size=1), "edge")
    result = executor.run(digits_x[:8])
    # THEN threshold 0 is the default (every row answers at exit_1) with the calibrated score
    assert executor.threshold == 0.0
    expected = score(apply_temperature(raw.probs["exit_1"], 2.0), "entropy")
    got = np.array([a.confidence for a in result.answers])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert not np.allclose(got, raw.probs["exit_1"].max(axis=1))
    # AND the trace the evaluator sweeps holds the same calibrated probabilities and measure
    trace = executor.trace(digits_x[:8])
    assert trace.measure == "entropy"
    for name, t in temps.items():
        np.testing.assert_allclose(
            trace.probs[name], apply_temperature(raw.probs[name], t), rtol=1e-5, atol=1e-7
        )


def test_executor_refuses_a_bad_serving_entry(bundle_copy):
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    _with_serving(bundle_copy, {"confidence": "vibes"})
    with pytest.raises(BundleError, match="bad serving entry.*vibes"):
        ProgressiveExecutor(Bundle.load(bundle_copy, pool_size=1), "edge")


@pytest.mark.parametrize(
    ("measure", "temperatures"),
    [(MAX_SOFTMAX, {}), (MAX_SOFTMAX, {"e": 2.5}), (ENTROPY, {}), (ENTROPY, {"e": 0.7})],
)
def test_top1_matches_calibrate_then_confidence_row_by_row(measure, temperatures):
    # GIVEN a scorer and exit probabilities of one sample and of a batch
    scorer = ExitScorer(measure, temperatures)
    rng = np.random.default_rng(3)
    batch = softmax(rng.normal(size=(9, 7)) * 3).astype(np.float32)
    batch[4] = batch[4, 0]  # a row of ties: the first index wins, as with argmax
    for probs in (batch[:1], batch[4:5], batch):
        # WHEN top-1 labels and confidences come from the fast path
        labels, conf = scorer.top1("e", probs)
        # THEN they equal argmax and confidence of the calibrated probabilities exactly
        calibrated = scorer.calibrate("e", probs)
        assert labels == calibrated.argmax(axis=1).tolist()
        assert conf == scorer.confidence(calibrated).tolist()
        assert all(type(c) is float for c in conf) and all(type(k) is int for k in labels)


def test_top1_of_a_nan_row_falls_back_to_numpy():
    # GIVEN one sample whose probabilities hold a NaN (a broken model)
    probs = np.array([[0.2, np.nan, 0.5]], np.float32)
    labels, conf = ExitScorer().top1("e", probs)
    # THEN the answer is numpy's: argmax picks the NaN and the confidence is NaN (never >= t)
    assert labels == [1] and math.isnan(conf[0])
