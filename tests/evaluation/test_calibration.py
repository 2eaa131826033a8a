"""Temperature scaling per exit and threshold selection under an accuracy budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.errors import ConfigError, InputError
from edgelesspart.evaluation.calibration import (
    apply_temperature,
    calibrate_trace,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    nll,
    select_threshold,
)
from edgelesspart.evaluation.sweep import LatencyModel, ThresholdResult, exit_accuracy, sweep


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def overconfident():
    """Labels drawn from softmax(z); the 'model' reports softmax(3 z): over-confident by T = 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 5)) * 1.5
    true = softmax(z)
    labels = np.array([rng.choice(5, p=p) for p in true])
    return softmax(3.0 * z), labels


def test_fit_temperature_recovers_the_overconfidence(overconfident):
    # GIVEN probabilities that are softmax(3 z) while labels follow softmax(z)
    probs, labels = overconfident
    # WHEN a temperature is fitted
    t = fit_temperature(probs, labels)
    # THEN it is close to 3, and it lowers both the NLL and the calibration error
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(probs, labels, t) < nll(probs, labels, 1.0)
    calibrated = apply_temperature(probs, t)
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(
        probs, labels
    )


def test_fit_temperature_keeps_calibrated_probabilities_near_one():
    # GIVEN already-calibrated probabilities
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 4)) * 2
    probs = softmax(z)
    labels = np.array([rng.choice(4, p=p) for p in probs])
    # THEN the fitted temperature is about 1
    assert fit_temperature(probs, labels) == pytest.approx(1.0, rel=0.1)


def test_apply_temperature_keeps_rows_normalised_and_the_argmax():
    # GIVEN some probabilities
    probs = softmax(np.random.default_rng(2).normal(size=(50, 6)))
    for t in (0.3, 1.0, 4.0):
        # WHEN scaled
        scaled = apply_temperature(probs, t)
        # THEN rows still sum to 1 and the predicted class does not change
        assert scaled.dtype == np.float32
        np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs, rtol=1e-5)
    # AND T > 1 lowers the top-1 confidence
    assert (apply_temperature(probs, 4.0).max(axis=1) <= probs.max(axis=1) + 1e-6).all()


def test_calibrated_trace_keeps_the_full_model_accuracy(random_trace):
    # GIVEN a trace and per-exit temperatures fitted on it
    trace, labels = random_trace(7, n=200)
    temps = fit_temperatures(trace, labels)
    calibrated = calibrate_trace(trace, temps)
    # THEN every exit has a temperature and its own accuracy is unchanged
    assert set(temps) == set(trace.exits) and all(t > 0 for t in temps.values())
    assert exit_accuracy(calibrated, labels) == exit_accuracy(trace, labels)
    rows = sweep(calibrated, labels, [1.01], latency_model=LatencyModel(), price_fn=lambda m: 0.0)
    assert rows[0].accuracy == pytest.approx(exit_accuracy(trace, labels)["final"])


def test_calibrate_trace_needs_every_exit(random_trace):
    trace, _ = random_trace(3)
    with pytest.raises(ConfigError, match=r"No temperature for exits \['final'\]"):
        calibrate_trace(trace, {"exit_1": 1.0, "exit_2": 1.0, "exit_3": 1.0})


def test_calibration_input_errors_say_what_was_received():
    with pytest.raises(InputError, match=r"shape \(4, 3\) and 5 labels"):
        fit_temperature(np.full((4, 3), 1 / 3), np.zeros(5))
    with pytest.raises(InputError, match=r"Labels must lie in \[0, 2\], got 0..7"):
        fit_temperature(np.full((2, 3), 1 / 3), np.array([0, 7]))
    with pytest.raises(ConfigError, match="positive number, got 0"):
        apply_temperature(np.full((2, 3), 1 / 3), 0.0)


def row(threshold: float, accuracy: float, latency: float) -> ThresholdResult:
    return ThresholdResult(threshold, accuracy, {}, 0.0, latency, latency, latency, 0, 0, 0.0,
                           0.0, 10)


def test_select_threshold_picks_the_fastest_within_the_drop():
    # GIVEN a full-model accuracy of 0.95 and a 0.01 budget
    rows = [row(0.5, 0.90, 5.0), row(0.7, 0.94, 8.0), row(0.8, 0.945, 9.0), row(1.01, 0.95, 20.0)]
    # THEN 0.7 is the fastest threshold at >= 0.94
    assert select_threshold(rows, 0.95, 0.01).threshold == 0.7
    # AND with no budget only the full model qualifies
    assert select_threshold(rows, 0.95, 0.0).threshold == 1.01


def test_select_threshold_breaks_latency_ties_by_accuracy():
    rows = [row(0.6, 0.93, 5.0), row(0.7, 0.94, 5.0)]
    assert select_threshold(rows, 0.94, 0.02).threshold == 0.7


def test_select_threshold_returns_none_when_nothing_qualifies():
    assert select_threshold([row(0.5, 0.5, 1.0)], 0.9, 0.01) is None
    with pytest.raises(ConfigError, match=r"--max-accuracy-drop must be >= 0, got -0.1"):
        select_threshold([row(0.5, 0.5, 1.0)], 0.9, -0.1)
