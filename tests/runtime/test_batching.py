"""Dynamic batching (edgelesspart.runtime.batching), with plain functions instead of models."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgelesspart.errors import ConfigError, ServiceClosed
from edgelesspart.runtime.batching import (
    BatchSettings,
    DynamicBatcher,
    split_list,
    split_stage_result,
)
from edgelesspart.runtime.executor import StageResult


def _rows_times_threshold(calls: list):
    def run(x: np.ndarray, threshold: float) -> list[float]:
        calls.append((len(x), threshold))
        time.sleep(0.01)  # a batch takes a while, so that requests queue behind it
        return [float(v) * threshold for v in x[:, 0]]

    return run


def _submit_all(batcher, items):
    results: list = [None] * len(items)

    def go(k: int) -> None:
        x, thr = items[k]
        results[k] = batcher.submit(x, thr)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_settings_are_validated_and_round_trip():
    settings = BatchSettings(16, 500, 2)
    assert BatchSettings.from_dict(settings.to_dict()) == settings
    assert not BatchSettings().enabled and settings.enabled
    with pytest.raises(ConfigError, match="max_rows must be an int >= 0"):
        BatchSettings(-1)
    with pytest.raises(ConfigError, match="max_delay_us must be an int >= 0, got True"):
        BatchSettings(4, True)
    with pytest.raises(ConfigError, match="under 1 s"):
        BatchSettings(4, 2_000_000)
    with pytest.raises(ConfigError, match="0 means: do not batch"):
        DynamicBatcher(lambda x, t: x, split_list, BatchSettings(0))


def test_concurrent_requests_share_runs_and_get_their_own_rows_back():
    # GIVEN a batcher of at most 8 rows that waits up to 20 ms for more
    calls: list = []
    batcher = DynamicBatcher(_rows_times_threshold(calls), split_list, BatchSettings(8, 20_000))
    items = [(np.full((2, 1), k, np.float32), 1.0) for k in range(12)]
    # WHEN 12 requests of 2 rows arrive at once
    results = _submit_all(batcher, items)
    # THEN each gets exactly its rows, and no run exceeded 8 rows
    assert results == [[float(k), float(k)] for k in range(12)]
    assert all(n <= 8 for n, _ in calls) and len(calls) < 12
    assert batcher.stats()["rows"] == 24 and batcher.stats()["largest"] <= 8
    batcher.close()


def test_requests_with_different_thresholds_never_share_a_run():
    calls: list = []
    batcher = DynamicBatcher(_rows_times_threshold(calls), split_list, BatchSettings(64, 20_000))
    items = [(np.ones((1, 1), np.float32), 0.5 if k % 2 else 2.0) for k in range(10)]
    results = _submit_all(batcher, items)
    assert results == [[0.5] if k % 2 else [2.0] for k in range(10)]
    # each run had one threshold; the results prove each request was run at its own one
    assert {thr for _, thr in calls} == {0.5, 2.0}
    batcher.close()


def test_zero_delay_still_coalesces_what_queued_during_a_run_and_big_requests_run_alone():
    calls: list = []
    batcher = DynamicBatcher(_rows_times_threshold(calls), split_list, BatchSettings(4, 0))
    big = (np.arange(6, dtype=np.float32).reshape(6, 1), 1.0)
    results = _submit_all(batcher, [big] + [(np.ones((1, 1), np.float32), 1.0)] * 6)
    assert results[0] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert (6, 1.0) in calls and all(n <= 4 for n, _ in calls if n != 6)
    batcher.close()


def test_a_failing_run_fails_every_request_of_its_batch_and_the_batcher_keeps_working():
    state = {"fail": True}

    def run(x, threshold):
        time.sleep(0.01)
        if state["fail"]:
            raise ValueError("model exploded")
        return list(x[:, 0])

    batcher = DynamicBatcher(run, split_list, BatchSettings(8, 5_000))
    with pytest.raises(ValueError, match="model exploded"):
        batcher.submit(np.ones((1, 1)), 1.0)
    state["fail"] = False
    assert batcher.submit(np.full((1, 1), 3.0), 1.0) == [3.0]
    batcher.close()
    with pytest.raises(ServiceClosed, match="closed"):  # not ConfigError: no client fault
        batcher.submit(np.ones((1, 1)), 1.0)


def test_split_stage_result_renumbers_pending_rows_and_cuts_the_boundary():
    boundary = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)  # pending rows 1, 2, 4
    result = StageResult(
        ["a0", None, None, "a3", None],
        np.array([1, 2, 4]),
        boundary,
        ["b0", "b1", "b2", "b3", "b4"],
    )
    first, second = split_stage_result(result, [3, 2])
    assert first.answers == ["a0", None, None] and first.best == ["b0", "b1", "b2"]
    assert first.pending.tolist() == [1, 2] and first.boundary.tolist() == [[0, 1], [2, 3]]
    assert second.answers == ["a3", None] and second.pending.tolist() == [1]
    assert second.boundary.tolist() == [[4, 5]]
    only_answered = split_stage_result(result, [1, 4])[0]
    assert only_answered.boundary is None and only_answered.pending.tolist() == []
