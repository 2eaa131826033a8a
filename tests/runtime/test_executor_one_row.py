"""The executor's batch-of-one path (P2) decides and answers exactly as its batch path does."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.runtime.bundle import Bundle
from edgelesspart.runtime.confidence import ExitScorer
from edgelesspart.runtime.executor import ProgressiveExecutor


@pytest.fixture(scope="module")
def stages(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    return [ProgressiveExecutor(bundle, s) for s in bundle.stages]


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.9, 1.0, 2.0])
def test_one_row_at_a_time_equals_the_batch(stages, digits, threshold):
    # GIVEN every stage of the bundle, and the digits as one batch
    for executor in stages:
        x = digits if executor is stages[0] else stages[0].run(digits, 2.0).boundary
        # WHEN the batch runs at once (numpy scoring, row bookkeeping) and row by row
        batch = executor.run(x, threshold)
        rows = [executor.run(x[i : i + 1], threshold) for i in range(len(x))]
        # THEN every row gets the same answer, best exit, pending state and boundary row
        pending = set(batch.pending.tolist())
        for i, one in enumerate(rows):
            for mine, theirs in ((one.answers[0], batch.answers[i]), (one.best[0], batch.best[i])):
                assert (mine is None) == (theirs is None)
                if mine is not None:
                    assert (mine.label, mine.exit, mine.stage) == (theirs.label, theirs.exit,
                                                                   theirs.stage)  # fmt: skip
                    assert mine.confidence == pytest.approx(theirs.confidence, rel=1e-6)
                    assert set(mine.timings) == set(theirs.timings)
            assert (i in pending) == (len(one.pending) == 1)
            if i in pending:
                row = batch.boundary[sorted(pending).index(i)]
                np.testing.assert_allclose(one.boundary[0], row, rtol=1e-5, atol=1e-6)


def test_scaled_top1_in_python_matches_numpy_calibration():
    # GIVEN a scorer with temperatures and many random probability rows
    rng = np.random.default_rng(0)
    temperatures = {"e": 2.7, "f": 0.45, "g": 0.05, "h": 1.33673, "i": 20.0}
    scorer = ExitScorer(temperatures=temperatures)
    for k in range(2000):
        probs = rng.dirichlet(np.full(10, 0.3 if k % 2 else 0.05)).astype(np.float32)[None]
        for name in temperatures:
            # WHEN one row is scored on the fast path and by calibrate + argmax
            labels, conf = scorer.top1(name, probs)
            calibrated = scorer.calibrate(name, probs)
            # THEN the label is numpy's and the confidence is the same float32 value
            assert labels[0] == int(calibrated.argmax())
            assert conf[0] == pytest.approx(float(calibrated.max()), rel=2e-7)


def test_a_confidence_at_the_threshold_is_decided_by_numpy():
    # GIVEN a row whose calibrated confidence is the threshold itself
    scorer = ExitScorer(temperatures={"e": 1.5})
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    exact = float(scorer.calibrate("e", probs).max())
    # WHEN it is scored with that threshold THEN the value is numpy's, bit for bit
    assert scorer.top1("e", probs, exact)[1][0] == exact


def test_answers_of_the_one_row_path_are_ordinary_answers(stages, digits):
    from dataclasses import replace

    from edgelesspart.runtime.executor import Answer

    # GIVEN an answer and a best exit from the batch-of-one path (built without __init__)
    result = stages[0].run(digits[:1], 0.0)
    answer, best = result.answers[0], result.best[0]
    # THEN it equals, hashes and serialises like the same Answer built the usual way
    twin = Answer(answer.label, answer.class_name, answer.confidence, answer.exit,
                  answer.stage, dict(answer.timings))  # fmt: skip
    assert answer == twin and answer is best and answer.to_dict() == twin.to_dict()
    assert Answer.from_dict(answer.to_dict()) == answer
    assert answer.timings["total"] == pytest.approx(sum(answer.timings.values()) / 2)
    # AND it stays frozen, and replace/as_degraded work on it
    with pytest.raises(AttributeError):
        answer.label = 3  # type: ignore[misc]
    degraded = answer.as_degraded("cloud down")
    assert degraded.degraded and degraded.reason == "cloud down" and not answer.degraded
    assert replace(answer, confidence=0.5).confidence == 0.5
