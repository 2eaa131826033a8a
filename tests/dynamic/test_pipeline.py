"""Width switching on a live Ray chain: nothing lost, answers exact, the controller acts.

Real local Ray (one instance for this module, shut down by the fixture), two tiny stage actors.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = [pytest.mark.needs_tf, pytest.mark.integration]
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    from edgelesspart.pipeline import raykit

    owned = raykit.connect("local", num_cpus=2)
    yield
    raykit.disconnect(owned)


def expected(bundle, x: np.ndarray, widths) -> np.ndarray:
    """The chain's answer at ``widths``, run in-process on the exported segments."""
    from edgelesspart.dynamic.stage import WidthStage
    from edgelesspart.dynamic.widths import load_manifest

    manifest = load_manifest(bundle)
    out = x
    for k, w in enumerate(widths):
        out = WidthStage(bundle, [k], manifest=manifest)(out, width=w)
    return out


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` (a width change is applied one control call after the decision)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_switch_mid_stream_loses_nothing_and_answers_exactly(ray_local, width_bundle) -> None:
    from edgelesspart.dynamic.pipeline import DynamicPipeline

    # GIVEN a running 2-stage chain with a 5x emulated device (a queue builds up)
    x = np.concatenate([width_bundle.x] * 2)
    with DynamicPipeline(width_bundle.path, scale=5.0, slo_ms=10_000) as pipe:
        tickets = [pipe.submit(x[i]) for i in range(len(x) // 2)]
        # WHEN both stages switch width while inputs are queued and running
        pipe.set_widths((0.5, 0.5))
        tickets += [pipe.submit(x[i]) for i in range(len(x) // 2, len(x))]
        answers = [pipe.result(t) for t in tickets]
        metrics = pipe.metrics()
    # THEN every input is answered, in order, once
    assert [a.seq for a in answers] == list(range(len(x)))
    assert metrics["completed"] == len(x) and metrics["rejected"] == 0
    assert metrics["widths"] == {"stage0": "0.5", "stage1": "0.5"}
    # and each answer is exactly what the exported segments give at the widths that ran it
    used = {a.widths for a in answers}
    assert (0.5, 0.5) in used and used <= {(1.0, 1.0), (1.0, 0.5), (0.5, 1.0), (0.5, 0.5)}
    for width_set in used:
        idx = [i for i, a in enumerate(answers) if a.widths == width_set]
        got = np.concatenate([answers[i].probs for i in idx])
        np.testing.assert_array_equal(got, expected(width_bundle.path, x[idx], width_set))
    assert all(a.widths == (0.5, 0.5) for a in answers[len(x) // 2 :])


def test_controller_narrows_a_slowed_stage_live(ray_local, width_bundle) -> None:
    from edgelesspart.dynamic.controller import (
        ControllerConfig,
        WidthController,
        curves_from_manifest,
    )
    from edgelesspart.dynamic.pipeline import DynamicPipeline
    from edgelesspart.dynamic.widths import load_manifest

    manifest = load_manifest(width_bundle.path)
    # emulate 20 ms full-width stages, whatever this host measured
    scale = 20.0 / max(s.at(1.0).latency_ms for s in manifest.stages)
    curves, full = curves_from_manifest(manifest, scale=scale)
    config = ControllerConfig(slo_ms=400.0, patience_up=1, patience_down=2, min_dwell_s=0.5)
    ctl = WidthController(curves, full, config)
    with DynamicPipeline(width_bundle.path, scale=scale, controller=ctl, tick_s=0.25) as pipe:
        # GIVEN steady load; WHEN stage 1 gets 4x slower
        pipe.set_slowdown(1, 4.0)
        tickets, done = [], 0
        deadline = time.perf_counter() + 20
        while time.perf_counter() < deadline and ctl.widths[1] == 1.0:
            if len(tickets) - done >= 64:  # a backlog of 64 (5 s at 80 ms): the window never fills
                pipe.result(tickets[done])
                done += 1
            tickets.append(pipe.submit(width_bundle.x[len(tickets) % len(width_bundle.x)]))
            time.sleep(0.03)
        # THEN the controller narrowed stage 1 and the metrics say why
        assert ctl.widths[1] == 0.5
        assert wait_for(lambda: pipe.metrics()["widths"]["stage1"] == "0.5")
        decision = pipe.metrics()["decisions"][-1]
        assert "stage 1 is the bottleneck" in decision["reason"]
        # WHEN the node recovers and the load stops, THEN full width comes back
        pipe.set_slowdown(1, 1.0)
        for t in tickets[done:]:
            pipe.result(t)
        deadline = time.perf_counter() + 20
        while time.perf_counter() < deadline and ctl.widths != (1.0, 1.0):
            pipe.result(pipe.submit(width_bundle.x[0]))
            time.sleep(0.05)
        assert ctl.widths == (1.0, 1.0)
        assert wait_for(lambda: pipe.metrics()["widths"] == {"stage0": "1", "stage1": "1"})
        assert pipe.metrics()["decisions"][-1]["reason"].startswith("pressure gone")


def test_bad_input_is_refused_before_it_takes_a_slot(ray_local, width_bundle) -> None:
    from edgelesspart.dynamic.pipeline import DynamicPipeline
    from edgelesspart.errors import InputError

    with DynamicPipeline(width_bundle.path, window=1) as pipe:
        nan = width_bundle.x[:1].copy()
        nan[0, 0, 0, 0] = np.nan
        # WHEN an input of the wrong shape and one with a NaN are submitted
        for bad in (np.zeros((1, 3, 3, 1), np.float32), nan):
            with pytest.raises(InputError):
                pipe.submit(bad)
        # THEN neither holds the single slot: a good input still goes through
        answer = pipe.result(pipe.submit(width_bundle.x[0]))
        metrics = pipe.metrics()
    assert answer.seq == 0 and metrics["in_flight"] == 0 and metrics["submitted"] == 1


def test_controller_loop_survives_a_failed_tick(ray_local, width_bundle) -> None:
    from edgelesspart.dynamic.controller import (
        ControllerConfig,
        WidthController,
        curves_from_manifest,
    )
    from edgelesspart.dynamic.pipeline import DynamicPipeline
    from edgelesspart.dynamic.widths import load_manifest

    class FailsOnce(WidthController):
        """A real controller whose first step raises (a transient fault in a tick)."""

        calls = 0

        def step(self, observation):
            FailsOnce.calls += 1
            if FailsOnce.calls == 1:
                raise RuntimeError("transient")
            return super().step(observation)

    curves, full = curves_from_manifest(load_manifest(width_bundle.path))
    ctl = FailsOnce(curves, full, ControllerConfig(slo_ms=1000.0))
    with DynamicPipeline(width_bundle.path, controller=ctl, tick_s=0.1) as pipe:
        # WHEN the first tick fails, THEN the loop keeps ticking and recording
        assert wait_for(lambda: len(pipe.timeline) >= 2)
        assert pipe._thread.is_alive()
    assert FailsOnce.calls >= 3


def test_the_timeline_keeps_only_the_latest_ticks(width_bundle) -> None:
    from edgelesspart.dynamic.controller import Observation, StageMetrics
    from edgelesspart.dynamic.pipeline import DynamicPipeline

    # GIVEN a pipeline (not started: recording needs no actors) that keeps 3 ticks
    pipe = DynamicPipeline(width_bundle.path, timeline_kept=3)
    # WHEN 5 ticks are recorded
    for t in range(5):
        stage = StageMetrics(1.0, 0, 1.0, 1.0)
        pipe._record(Observation(float(t), 1.0, (stage, stage)), None)
    # THEN only the last 3 are kept, oldest first
    assert [row["t"] for row in pipe.timeline] == [2.0, 3.0, 4.0]


def test_a_killed_width_stage_restarts_from_the_owned_segment_bytes(ray_local, width_bundle):
    from edgelesspart.dynamic.pipeline import DynamicPipeline

    # GIVEN a running chain whose stage files sit in the object store, owned by the dispatcher
    x = width_bundle.x
    with DynamicPipeline(width_bundle.path, scale=1.0) as pipe:
        assert len(pipe.blobs) == sum(len(s.segments) for s in pipe.manifest.stages)
        before = pipe.result(pipe.submit(x[0]))
        # WHEN stage 1's actor is killed (Ray restarts it: its constructor fetches the files)
        ray.kill(pipe.actors[1], no_restart=False)
        answers = [pipe.result(pipe.submit(x[i])) for i in range(len(x))]
    # THEN every later input is answered, exactly as before the kill
    np.testing.assert_array_equal(answers[0].probs, before.probs)
    np.testing.assert_array_equal(
        np.concatenate([a.probs for a in answers]), expected(width_bundle.path, x, (1.0, 1.0))
    )
