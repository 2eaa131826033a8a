"""The build's serving choice: the sweep scores like the executor, and choose_serving's record."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from edgelesspart.evaluation.sweep import LatencyModel, answering_exit, confidences, sweep


def test_sweep_scores_confidence_with_the_traces_measure(hand_trace):
    # GIVEN the hand trace scored by max-softmax and by normalised entropy
    trace, labels = hand_trace
    conf_max, pred = confidences(trace, labels)
    conf_ent, pred_ent = confidences(replace(trace, measure="entropy"), labels)
    # THEN predictions are the same, confidences follow 1 - H/log C
    np.testing.assert_array_equal(pred, pred_ent)
    p = trace.probs["exit_1"][0].astype(np.float64)
    expected = 1.0 - float(-(p * np.log(p)).sum()) / math.log(3)
    assert conf_ent[0, 0] == pytest.approx(expected, rel=1e-6)
    assert conf_max[0, 0] == pytest.approx(0.95)
    # AND the same threshold answers at a later (or the same) exit under entropy, which is
    # stricter than max-softmax for these rows
    assert (answering_exit(conf_ent, 0.6) >= answering_exit(conf_max, 0.6)).all()
    rows = sweep(replace(trace, measure="entropy"), labels, [0.6], latency_model=LatencyModel(),
                 price_fn=lambda ms: 0.0)  # fmt: skip
    assert rows[0].samples == len(labels)


def test_choose_serving_records_temperatures_threshold_and_expectation(tiny_bundle):
    from edgelesspart.evaluation.serving import SERVING_THRESHOLDS, choose_serving, format_serving
    from edgelesspart.model.datasets import load_dataset

    # GIVEN the tiny bundle (no serving entry) and its build's data
    data = load_dataset("digits", seed=0)
    # WHEN the serving choice is made within 1 point
    serving = choose_serving(tiny_bundle, data, max_accuracy_drop=1.0, link="wifi")
    # THEN every exit has a fitted temperature, the threshold is one of the swept ones, and the
    # validation accuracy at it is within 1 point of the final classifier's
    assert set(serving["temperatures"]) == {"exit_1", "exit_2", "exit_3", "final"}
    assert all(t > 0 for t in serving["temperatures"].values())
    assert serving["threshold"] in SERVING_THRESHOLDS
    val = serving["validation"]
    assert val["accuracy"] >= val["final_accuracy"] - 0.01 - 1e-9
    expected = serving["expected"]
    assert expected["split"] == "test" and 0.0 <= expected["edge_share"] <= 1.0
    assert expected["samples"] == len(data.x_test)
    assert "per 1M requests" in format_serving(serving)
    # AND without temperature scaling every temperature is 1
    raw = choose_serving(tiny_bundle, data, calibrate=False)
    assert set(raw["temperatures"].values()) == {1.0}
