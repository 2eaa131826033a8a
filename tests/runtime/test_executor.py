"""ProgressiveExecutor: real early exits, batches, thresholds, concurrency, and the trace."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgelesspart.errors import ConfigError, InputError
from edgelesspart.runtime.bundle import Bundle
from edgelesspart.runtime.executor import Answer, ProgressiveExecutor, Trace, check_threshold


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return Bundle.load(tiny_bundle, pool_size=4)


@pytest.fixture(scope="module")
def trace(bundle, digits_x) -> Trace:
    return ProgressiveExecutor(bundle, "edge").trace(digits_x, timing_samples=3)


def _safe_threshold(confidences: np.ndarray, quantile: float) -> float:
    """A threshold near ``quantile`` that sits in a gap >= 1e-4 between confidences, so float
    noise between batched and unbatched runs cannot flip a decision."""
    values = np.unique(confidences)
    start = int(quantile * (len(values) - 1))
    for i in sorted(range(len(values) - 1), key=lambda k: abs(k - start)):
        if values[i + 1] - values[i] >= 1e-4:
            return float((values[i] + values[i + 1]) / 2)
    raise AssertionError("no usable gap between confidences")


def _rows(bundle) -> dict[str, int]:
    return {n: bundle.runner(n).rows for n in ("edge_0", "edge_1", "cloud_0", "cloud_1")}


# ------------------------------------------------------------------ thresholds


@pytest.mark.parametrize("value", [0, 0.5, 1, 1.5, np.float32(0.7)])
def test_valid_thresholds_are_accepted(value):
    assert check_threshold(value) == pytest.approx(float(value))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "got nan"),
        (-0.1, "got -0.1"),
        ("0.8", "got '0.8' of type str"),
        (True, "got True of type bool"),
        (None, "got None"),
    ],
)
def test_invalid_thresholds_are_refused(value, message):
    with pytest.raises(ConfigError, match=rf"Threshold must be a number >= 0 .*{message}"):
        check_threshold(value)


def test_executor_validates_its_default_and_per_call_threshold(bundle, digits_x):
    with pytest.raises(ConfigError, match="got nan"):
        ProgressiveExecutor(bundle, "edge", threshold=float("nan"))
    with pytest.raises(ConfigError, match="got -1"):
        ProgressiveExecutor(bundle, "edge").run(digits_x[:1], threshold=-1)


# ------------------------------------------------------------------ early exit is real


def test_threshold_zero_answers_everything_at_the_first_exit(bundle, digits_x):
    # GIVEN threshold 0 (every exit is confident enough)
    executor = ProgressiveExecutor(bundle, "edge", threshold=0.0)
    before = _rows(bundle)
    # WHEN a batch of 10 runs
    result = executor.run(digits_x[:10])
    after = _rows(bundle)
    # THEN every row is answered at exit_1, nothing is pending
    assert [a.exit for a in result.answers] == ["exit_1"] * 10
    assert result.pending.size == 0 and result.boundary is None
    # AND the second edge segment never ran
    assert after["edge_0"] - before["edge_0"] == 10
    assert after["edge_1"] == before["edge_1"]


def test_threshold_above_one_never_exits_early(bundle, digits_x):
    # GIVEN threshold 2 (no exit can be that confident)
    edge = ProgressiveExecutor(bundle, "edge", threshold=2.0)
    # WHEN the edge stage runs
    result = edge.run(digits_x[:6])
    # THEN every row is pending with its split boundary
    assert result.answers == [None] * 6
    np.testing.assert_array_equal(result.pending, np.arange(6))
    assert result.boundary.shape == (6, 16, 16, 16)
    # AND best holds the more confident of the two edge exits for each row
    for answer in result.best:
        assert answer.exit in ("exit_1", "exit_2") and not answer.degraded
    # AND the cloud stage answers every row at the final classifier
    cloud = ProgressiveExecutor(bundle, "cloud", threshold=2.0).run(result.boundary)
    assert [a.exit for a in cloud.answers] == ["final"] * 6
    assert cloud.pending.size == 0


def test_rows_that_exit_are_not_fed_to_later_segments(bundle, digits_x, trace):
    # GIVEN a threshold at the median confidence of exit_1 (about half the rows exit there)
    conf1 = trace.probs["exit_1"].max(axis=1)
    threshold = _safe_threshold(conf1, 0.5)
    executor = ProgressiveExecutor(bundle, "edge", threshold=threshold)
    before = _rows(bundle)
    # WHEN the whole batch runs
    result = executor.run(digits_x)
    after = _rows(bundle)
    # THEN edge_1 processed exactly the rows that did not exit at exit_1
    exited_1 = int((conf1 >= threshold).sum())
    assert 0 < exited_1 < len(digits_x)
    assert after["edge_0"] - before["edge_0"] == len(digits_x)
    assert after["edge_1"] - before["edge_1"] == len(digits_x) - exited_1
    # AND only the still-pending rows carry a boundary on
    assert len(result.pending) == sum(a is None for a in result.answers)
    if len(result.pending):
        assert result.boundary.shape == (len(result.pending), 16, 16, 16)


@pytest.mark.parametrize("quantile", [0.2, 0.6, 0.9])
def test_served_answers_match_the_trace_for_any_threshold(bundle, digits_x, trace, quantile):
    # GIVEN a threshold, and the per-exit probabilities of the evaluation trace
    all_conf = np.concatenate([trace.probs[e].max(axis=1) for e in trace.exits])
    threshold = _safe_threshold(all_conf, quantile)
    edge = ProgressiveExecutor(bundle, "edge", threshold=threshold)
    cloud = ProgressiveExecutor(bundle, "cloud", threshold=threshold)
    # WHEN the batch runs through the edge and then the cloud stage
    first = edge.run(digits_x)
    answers = list(first.answers)
    if len(first.pending):
        second = cloud.run(first.boundary)
        for i, row in enumerate(first.pending):
            answers[row] = second.answers[i]
    # THEN every row is answered by its first exit whose confidence >= threshold, as the trace says
    for row, answer in enumerate(answers):
        expected_exit = next(
            (e for e in trace.exits[:-1] if trace.probs[e][row].max() >= threshold), "final"
        )
        assert answer.exit == expected_exit
        probs = trace.probs[expected_exit][row]
        assert answer.label == int(probs.argmax())
        assert answer.confidence == pytest.approx(float(probs.max()), abs=1e-5)
        assert answer.class_name == bundle.classes[answer.label]
        assert answer.stage == trace.exit_stage[expected_exit]


def test_answers_carry_timings_and_round_trip_as_json(bundle, digits_x):
    result = ProgressiveExecutor(bundle, "edge", threshold=2.0).run(digits_x[:2])
    best = result.best[0]
    # timings: ms per segment that ran for this row, plus their total
    assert set(best.timings) == {"edge_0", "edge_1", "total"}
    assert best.timings["total"] == pytest.approx(best.timings["edge_0"] + best.timings["edge_1"])
    assert all(v > 0 for v in best.timings.values())
    # JSON round trip and the degraded marker
    data = best.to_dict()
    assert set(data) == {"label", "class_name", "confidence", "exit", "stage", "timings",
                         "degraded", "reason"}  # fmt: skip
    assert Answer.from_dict(data) == best
    degraded = best.as_degraded("cloud timed out")
    assert degraded.degraded and degraded.reason == "cloud timed out"
    assert degraded.label == best.label and not best.degraded


def test_one_sample_without_batch_dimension(bundle, digits_x):
    result = ProgressiveExecutor(bundle, "edge", threshold=0.0).run(digits_x[0])
    assert len(result.answers) == 1 and result.answers[0].exit == "exit_1"


def test_bad_inputs_are_input_errors(bundle, digits_x):
    executor = ProgressiveExecutor(bundle, "edge")
    bad = digits_x[:2].copy()
    bad[1, 3, 3, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN or Inf .* sample\(s\) \[1\]"):
        executor.run(bad)
    with pytest.raises(InputError, match=r"\(N, 32, 32, 3\) float32 .* got shape \(2, 16, 16, 3\)"):
        executor.run(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(InputError, match=r"\(N, 16, 16, 16\)"):
        ProgressiveExecutor(bundle, "cloud").run(digits_x[:1])


def test_concurrent_runs_give_the_same_answers(bundle, digits_x, trace):
    # GIVEN expected answers computed serially at a mid threshold
    threshold = _safe_threshold(trace.probs["exit_1"].max(axis=1), 0.5)
    executor = ProgressiveExecutor(bundle, "edge", threshold=threshold)
    batches = [digits_x[i : i + 3] for i in range(0, 48, 3)]
    expected = [[(a and a.exit, a and a.label) for a in executor.run(b).answers] for b in batches]
    errors: list[int] = []

    def work(offset: int) -> None:
        for k in range(len(batches)):
            j = (k + offset) % len(batches)
            got = [(a and a.exit, a and a.label) for a in executor.run(batches[j]).answers]
            if got != expected[j]:
                errors.append(j)

    # WHEN 8 threads share the executor
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN nobody saw a different answer
    assert errors == []


# ------------------------------------------------------------------ trace


def test_trace_has_every_exit_in_model_order(bundle, digits_x, trace):
    n = len(digits_x)
    assert trace.exits == ("exit_1", "exit_2", "exit_3", "final")
    assert trace.exit_stage == {"exit_1": "edge", "exit_2": "edge", "exit_3": "cloud",
                                "final": "cloud"}  # fmt: skip
    assert trace.exit_segment["exit_3"] == "cloud_0"
    assert trace.segments == ("edge_0", "edge_1", "cloud_0", "cloud_1")
    assert trace.segment_stage["cloud_1"] == "cloud"
    for name in trace.exits:
        assert trace.probs[name].shape == (n, 10) and trace.probs[name].dtype == np.float32
    assert all(ms > 0 for ms in trace.segment_ms.values())
    assert trace.boundary_bytes == {"edge_0": 16 * 16 * 8 * 4, "edge_1": 16 * 16 * 16 * 4,
                                    "cloud_0": 8 * 8 * 24 * 4, "cloud_1": 0}  # fmt: skip


def test_trace_in_small_batches_equals_one_big_batch(bundle, digits_x, trace):
    small = ProgressiveExecutor(bundle, "edge").trace(digits_x, batch_size=7, timing_samples=1)
    for name in trace.exits:
        np.testing.assert_allclose(small.probs[name], trace.probs[name], atol=1e-5)


def test_trace_of_a_cloud_only_bundle_starts_at_the_split(tiny_bundle, bundle, digits_x):
    boundary = ProgressiveExecutor(bundle, "edge", threshold=2.0).run(digits_x[:4]).boundary
    cloud = Bundle.load(tiny_bundle, stages=["cloud"])
    trace = ProgressiveExecutor(cloud, "cloud").trace(boundary, timing_samples=1)
    assert trace.exits == ("exit_3", "final")
    assert trace.probs["final"].shape == (4, 10)
