"""The DEFER chain on a real local Ray instance: exact outputs, faults, backpressure, metrics.

One Ray instance for the whole module (started by the ``ray_local`` fixture, always shut down).
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import requests

from edgelesspart.errors import BundleError, InputError, PipelineBusy, PipelineError
from edgelesspart.pipeline.dispatcher import Pipeline, default_stages, stages_with
from edgelesspart.pipeline.emulation import DeviceEmulation
from edgelesspart.runtime.manifest import load_manifest

pytestmark = [pytest.mark.needs_tf, pytest.mark.integration]
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray (2 CPUs, no dashboard) for this module."""
    from edgelesspart.pipeline import raykit

    session = raykit.connect("local", num_cpus=2)  # private: own temp dir, loopback
    yield ray
    raykit.disconnect(session)


def test_three_stage_chain_returns_the_full_models_outputs_in_order(ray_local, chain_bundle):
    # GIVEN the 3-stage bundle, raw on link 0 and zfp+lz4 (1e-2 relative tolerance) on link 1
    stages = default_stages(load_manifest(chain_bundle.path))
    assert [s.codec_out for s in stages] == ["raw", "zfp+lz4", None]
    # WHEN 12 inputs stream through with a window of 4
    with Pipeline(chain_bundle.path, stages, window=4) as pipe:
        results = pipe.run_many(chain_bundle.x)
        metrics = pipe.metrics()
    # THEN every answer comes back, in order, equal to the full model up to the codec error
    assert [r.seq for r in results] == list(range(12))
    probs = np.concatenate([r.probs for r in results])
    np.testing.assert_allclose(probs, chain_bundle.expected, atol=2e-3)
    assert (probs.argmax(1) == chain_bundle.expected.argmax(1)).mean() >= 11 / 12
    assert all(r.exit == "final" and r.stage == "stage2" for r in results)
    # AND the per-stage metrics count items and the bytes each link carried
    assert metrics["completed"] == 12 and metrics["in_flight"] == 0
    s0, s1 = metrics["stages"]["stage0"], metrics["stages"]["stage1"]
    assert s0["items"] == 12 and s0["bytes_out"] == s1["bytes_in"]
    assert s1["bytes_out"] < s0["bytes_out"]  # zfp+lz4 link vs the raw one (16x16x16 vs 8x16x16)


def test_raw_links_are_exact(ray_local, chain_bundle):
    stages = stages_with(default_stages(load_manifest(chain_bundle.path)), codec="raw")
    with Pipeline(chain_bundle.path, stages, window=2) as pipe:
        results = pipe.run_many(chain_bundle.x[:4])
    probs = np.concatenate([r.probs for r in results])
    np.testing.assert_allclose(probs, chain_bundle.expected[:4], atol=1e-5)


def test_killing_a_stage_actor_mid_stream_loses_no_request(ray_local, chain_bundle):
    # GIVEN a chain whose middle stage sends over a slow emulated link (40 ms per item)
    slow = DeviceEmulation(link_mbps=100.0, link_rtt_ms=40.0)
    stages = default_stages(load_manifest(chain_bundle.path))
    stages[1] = stages[1].with_(emulation=slow)
    inputs = np.concatenate([chain_bundle.x] * 2)  # 24 inputs
    with Pipeline(chain_bundle.path, stages, window=6, max_restarts=2, max_task_retries=3) as pipe:
        victim = pipe.actors[1]
        killer = threading.Timer(0.4, lambda: ray.kill(victim, no_restart=False))
        killer.start()
        # WHEN the middle actor is killed while inputs are in flight
        results = pipe.run_many(inputs)
        killer.join()
        metrics = pipe.metrics()
    # THEN Ray restarted it, retried its calls, and every input got its right answer, in order
    assert [r.seq for r in results] == list(range(24))
    probs = np.concatenate([r.probs for r in results])
    np.testing.assert_allclose(probs, np.concatenate([chain_bundle.expected] * 2), atol=2e-3)
    assert metrics["failed"] == 0 and metrics["completed"] == 24
    assert metrics["stages"]["stage1"]["restarts_seen"] >= 1


def test_full_window_answers_429_over_http(ray_local, chain_bundle):
    from edgelesspart.pipeline.app import create_app
    from service_http.wsgi import BackgroundServer

    # GIVEN a window of one and a last stage that takes 1.5 s per item (emulated link)
    stages = default_stages(load_manifest(chain_bundle.path))
    stages[2] = stages[2].with_(emulation=DeviceEmulation(link_mbps=100.0, link_rtt_ms=1500.0))
    with Pipeline(chain_bundle.path, stages, window=1) as pipe:
        with BackgroundServer(create_app(pipe)) as server:
            body = {"inputs": chain_bundle.x[:1].tolist()}
            first: dict = {}
            worker = threading.Thread(
                target=lambda: first.update(
                    r=requests.post(server.url + "/v1/infer", json=body, timeout=60)
                )
            )
            worker.start()
            deadline = time.monotonic() + 30
            while pipe.metrics()["in_flight"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            # WHEN a second request arrives while the first is in flight
            second = requests.post(server.url + "/v1/infer", json=body, timeout=60)
            worker.join()
            text = requests.get(server.url + "/metrics", timeout=10).text
    # THEN it is refused with 429 and Retry-After, and the first one is answered
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "1"
    assert second.json()["error"]["code"] == "too_many_requests"
    assert first["r"].status_code == 200
    answer = first["r"].json()["answers"][0]  # the shared contract's answer row
    assert answer["label"] == int(chain_bundle.expected[0].argmax())
    assert answer["confidence"] == pytest.approx(float(chain_bundle.expected[0].max()), abs=2e-3)
    assert 'edgelesspart_stage_bytes_out_total{stage="stage0"}' in text
    assert "edgelesspart_pipeline_rejected_total 1" in text


def test_submit_without_a_slot_raises_pipeline_busy(ray_local, chain_bundle):
    stages = default_stages(load_manifest(chain_bundle.path))
    stages[0] = stages[0].with_(emulation=DeviceEmulation(link_mbps=100.0, link_rtt_ms=500.0))
    with Pipeline(chain_bundle.path, stages, window=1) as pipe:
        ticket = pipe.submit(chain_bundle.x[0])
        with pytest.raises(PipelineBusy, match="1 inputs are already in flight"):
            pipe.submit(chain_bundle.x[1])
        assert pipe.result(ticket).seq == 0


def test_bad_inputs_are_refused_with_422_before_reaching_a_stage(ray_local, chain_bundle):
    from edgelesspart.pipeline.app import create_app
    from service_http.wsgi import BackgroundServer

    stages = default_stages(load_manifest(chain_bundle.path))
    with Pipeline(chain_bundle.path, stages, window=2) as pipe:
        with BackgroundServer(create_app(pipe)) as server:
            # WHEN a request has the wrong shape, and another carries a NaN
            wrong = requests.post(
                server.url + "/v1/infer", json={"inputs": [[1.0, 2.0, 3.0]]}, timeout=60
            )
            nan = chain_bundle.x[:1].copy()
            nan[0, 0, 0, 0] = np.nan
            with_nan = requests.post(
                server.url + "/v1/infer",
                data=json.dumps({"inputs": nan.tolist()}),  # json.dumps writes NaN
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
            with pytest.raises(InputError, match="NaN"):
                pipe.submit(nan)
            metrics = pipe.metrics()
    # THEN both are the caller's fault (422), not a 503 "stage failed", and no stage saw them
    for response in (wrong, with_nan):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_input"
    assert metrics["submitted"] == 0 and metrics["failed"] == 0 and metrics["in_flight"] == 0
    assert metrics["stages"]["stage0"]["items"] == 0


def test_run_many_gives_the_window_back_when_an_answer_times_out(ray_local, chain_bundle):
    # GIVEN a last stage that takes 1.5 s per item and answers awaited for 0.3 s at most
    stages = default_stages(load_manifest(chain_bundle.path))
    stages[2] = stages[2].with_(emulation=DeviceEmulation(link_mbps=100.0, link_rtt_ms=1500.0))
    with Pipeline(chain_bundle.path, stages, window=2, timeout_s=0.3) as pipe:
        # WHEN run_many fails on its first answer
        with pytest.raises(PipelineError, match="was not answered"):
            pipe.run_many(chain_bundle.x[:4])
        metrics = pipe.metrics()
        # THEN the inputs it left behind hold no slot: the whole window is free again
        assert metrics["in_flight"] == 0 and metrics["failed"] == 2
        tickets = [pipe.submit(chain_bundle.x[i]) for i in range(2)]
    assert [t.seq for t in tickets] == [2, 3]


def test_a_stage_that_cannot_start_leaves_no_actor_behind(ray_local, chain_bundle):
    # GIVEN a chain whose second stage names a segment the bundle does not have
    stages = default_stages(load_manifest(chain_bundle.path))
    stages[1] = stages[1].with_(segments=("no-such-segment",))
    pipe = Pipeline(chain_bundle.path, stages)
    # WHEN it starts
    with pytest.raises(BundleError, match="no-such-segment"):
        pipe.start()
    # THEN the first stage's actor, already created, was killed again
    assert pipe.actors == []
