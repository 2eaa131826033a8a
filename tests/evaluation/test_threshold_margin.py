"""The serving threshold's margin: a one-sided bound on the paired accuracy drop (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.evaluation.calibration import (
    min_samples_for_bound,
    paired_drop_bound,
    select_per_exit_thresholds,
    select_threshold,
    threshold_drop_bounds,
)
from edgelesspart.evaluation.serving import SERVING_THRESHOLDS, accuracy_change
from edgelesspart.evaluation.sweep import LatencyModel, exit_accuracy, sweep
from edgelesspart.runtime.executor import Trace

EXITS = ("exit_1", "exit_2", "exit_3", "final")
SEGMENTS = ("edge_0", "edge_1", "cloud_0", "cloud_1")
STAGES = {"edge_0": "edge", "edge_1": "edge", "cloud_0": "cloud", "cloud_1": "cloud"}


def make_trace(probs: dict[str, np.ndarray]) -> Trace:
    """A 4-segment edge/cloud trace with an exit at the end of every segment."""
    return Trace(
        exits=EXITS,
        exit_stage={e: STAGES[s] for e, s in zip(EXITS, SEGMENTS)},
        exit_segment=dict(zip(EXITS, SEGMENTS)),
        probs={k: np.asarray(v, dtype=np.float32) for k, v in probs.items()},
        segments=SEGMENTS,
        segment_stage=dict(STAGES),
        segment_ms={"edge_0": 2.0, "edge_1": 3.0, "cloud_0": 5.0, "cloud_1": 4.0},
        boundary_bytes={"edge_0": 1000, "edge_1": 8000, "cloud_0": 500, "cloud_1": 0},
    )


def test_paired_drop_bound_is_mean_plus_z_standard_errors() -> None:
    # GIVEN 200 samples where the served answer loses 2 the final classifier got right
    final = np.ones(200, dtype=bool)
    served = final.copy()
    served[:2] = False
    mean, upper = paired_drop_bound(served, final, z=1.645)
    d = np.zeros(200)
    d[:2] = 1.0
    # THEN the mean is the point drop (1 pt) and the bound adds 1.645 standard errors
    assert mean == pytest.approx(0.01)
    assert upper == pytest.approx(0.01 + 1.645 * d.std(ddof=1) / np.sqrt(200))
    assert upper > 0.015
    # AND an answer identical to the final classifier's has bound 0, and gains count negative
    assert paired_drop_bound(final, final) == (0.0, 0.0)
    gained = paired_drop_bound(final, served)
    assert gained[0] == pytest.approx(-0.01) and gained[0] < gained[1] < 0.01
    # AND one lost sample needs about (1 + z) / drop samples to pass a 1 pt bound
    assert min_samples_for_bound(0.01) == 265
    one_lost = np.ones(265, dtype=bool)
    one_lost[0] = False
    assert paired_drop_bound(one_lost, np.ones(265, dtype=bool))[1] <= 0.01 + 1e-4


def _noisy_exits(n: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A 4-exit trace of 3 classes: early exits are right less often, confident or not."""
    labels = rng.integers(0, 3, n)
    probs = {}
    for k, (acc, sharp) in enumerate(((0.80, 2.0), (0.86, 2.5), (0.90, 3.0), (0.93, 3.5))):
        right = rng.random(n) < acc
        top = np.where(right, labels, (labels + rng.integers(1, 3, n)) % 3)
        conf = 1 / 3 + (2 / 3) * rng.beta(sharp, 1.0, n) * np.where(right, 1.0, 0.8)
        rows = np.full((n, 3), 0.0)
        rows[np.arange(n)] = ((1 - conf) / 2)[:, None]
        rows[np.arange(n), top] = conf
        probs[EXITS[k]] = rows
    return probs, labels


def test_margin_keeps_the_test_drop_within_budget_more_often_than_the_point_estimate() -> None:
    # GIVEN 60 independent validation/test draws of the same noisy 4-exit model, 300 samples each
    rng = np.random.default_rng(0)
    model = LatencyModel()
    violations = {"point": 0, "margin": 0}
    thresholds = {"point": [], "margin": []}
    for _ in range(60):
        val_probs, y_val = _noisy_exits(300, rng)
        test_probs, y_test = _noisy_exits(3000, rng)
        val, test = make_trace(val_probs), make_trace(test_probs)
        rows = sweep(val, y_val, SERVING_THRESHOLDS, latency_model=model, price_fn=lambda ms: 0.0)
        final = exit_accuracy(val, y_val)["final"]
        bounds = threshold_drop_bounds(val, y_val, SERVING_THRESHOLDS)
        for name, chosen in (
            ("point", select_threshold(rows, final, 0.01)),
            ("margin", select_threshold(rows, final, 0.01, bounds)),
        ):
            thresholds[name].append(chosen.threshold)
            (on_test,) = sweep(test, y_test, [chosen.threshold], latency_model=model,
                               price_fn=lambda ms: 0.0)  # fmt: skip
            test_final = exit_accuracy(test, y_test)["final"]
            violations[name] += on_test.accuracy < test_final - 0.01
    # THEN the margin's threshold is never lower than the point estimate's, and it breaks the
    # 1 pt budget on test at most 5 % + sampling slack of the time, much less often than the
    # point estimate does
    assert all(m >= p for m, p in zip(thresholds["margin"], thresholds["point"]))
    assert violations["margin"] <= 6
    assert violations["point"] > 2 * max(violations["margin"], 1)


def test_select_threshold_with_bounds_rejects_a_lucky_point_estimate() -> None:
    from edgelesspart.evaluation.sweep import ThresholdResult

    def row(t: float, acc: float, ms: float) -> ThresholdResult:
        return ThresholdResult(t, acc, {}, 0.5, ms, ms, ms, 0, 0, 0.0, 0.0, 200)

    rows = [row(0.5, 0.94, 1.0), row(0.8, 0.95, 2.0), row(1.01, 0.95, 3.0)]
    bounds = {0.5: (0.01, 0.022), 0.8: (0.0, 0.004), 1.01: (0.0, 0.0)}
    assert select_threshold(rows, 0.95, 0.01).threshold == 0.5  # point estimate: 1 pt, passes
    assert select_threshold(rows, 0.95, 0.01, bounds).threshold == 0.8  # the bound does not


def test_per_exit_thresholds_hold_the_bound_and_beat_or_match_the_global_one() -> None:
    rng = np.random.default_rng(1)
    probs, labels = _noisy_exits(2000, rng)
    trace = make_trace(probs)
    model = LatencyModel()
    rows = sweep(trace, labels, SERVING_THRESHOLDS, latency_model=model, price_fn=lambda ms: 0.0)
    bounds = threshold_drop_bounds(trace, labels, SERVING_THRESHOLDS)
    chosen = select_threshold(rows, exit_accuracy(trace, labels)["final"], 0.01, bounds)
    per_exit = select_per_exit_thresholds(trace, labels, SERVING_THRESHOLDS, 0.01, 1.645, model)
    assert set(per_exit["thresholds"]) == set(EXITS[:-1])
    assert per_exit["drop_upper_pp"] <= 1.0 + 1e-9
    assert per_exit["latency_mean_ms"] <= chosen.latency_mean_ms + 1e-6


def test_accuracy_change_has_the_right_sign() -> None:
    assert accuracy_change(0.48 + 0.15, 0.48) == "+15.0 pt above the final classifier"
    assert accuracy_change(0.80, 0.81) == "1.0 pt lost"
    assert accuracy_change(0.8, 0.8) == "no loss"
