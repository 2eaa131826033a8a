"""Admission control of the edge service: bounded work, bounded waiting room, then 429.

The unit tests drive :class:`~edge_runtime.admission.Admission` directly; the service tests
saturate a real edge app on a loopback socket (waitress) with a cloud that hangs until released.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from edge_runtime.admission import Admission
from edge_runtime.errors import TooManyRequests
from edgelesspart.errors import ConfigError, OffloadTimeout

TIMEOUT = 15


# --- Admission unit --------------------------------------------------------------------------


def test_slots_are_given_then_refused_when_the_waiting_room_is_full():
    reasons: list[str] = []
    gate = Admission(2, queue=0, on_reject=reasons.append, retry_after_s=3)
    gate.enter()
    gate.enter()
    with pytest.raises(TooManyRequests, match="2 requests at work.*queue full") as info:
        gate.enter()
    assert info.value.status == 429 and info.value.headers == {"Retry-After": "3"}
    assert reasons == ["queue_full"] and gate.running == 2
    gate.leave()
    gate.enter()  # a freed slot is usable again
    assert gate.running == 2


def test_a_waiter_gets_the_next_free_slot():
    gate = Admission(1, queue=1, wait_s=5.0)
    gate.enter()
    got = threading.Event()

    def waiter():
        gate.enter()
        got.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    _until(lambda: gate.waiting == 1)
    assert not got.is_set()
    gate.leave()
    assert got.wait(5) and gate.running == 1 and gate.waiting == 0
    thread.join(5)


def test_a_wait_that_runs_out_is_refused():
    reasons: list[str] = []
    gate = Admission(1, queue=4, wait_s=0.05, on_reject=reasons.append)
    gate.enter()
    start = time.monotonic()
    with pytest.raises(TooManyRequests, match="wait timeout"):
        gate.enter()
    assert 0.04 <= time.monotonic() - start < 2.0
    assert reasons == ["wait_timeout"] and gate.waiting == 0


def test_the_process_never_holds_more_than_limit_plus_queue_requests():
    # GIVEN a gate of 2 slots and 3 waiting places, and 40 concurrent arrivals
    gate = Admission(2, queue=3, wait_s=0.2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def arrive():
        try:
            gate.enter()
        except TooManyRequests:
            with lock:
                outcomes.append("429")
            return
        time.sleep(0.05)
        gate.leave()
        with lock:
            outcomes.append("ok")

    with ThreadPoolExecutor(40) as pool:
        for _ in range(40):
            pool.submit(arrive)
    # THEN some were served, the rest refused, and at no time were more than 5 inside
    assert len(outcomes) == 40 and "ok" in outcomes and "429" in outcomes
    assert gate.peak <= 5 and gate.running == 0 and gate.waiting == 0


@pytest.mark.parametrize(
    "kwargs", [{"limit": 0}, {"limit": 1, "queue": -1}, {"limit": 1, "wait_s": -1},
               {"limit": 1, "retry_after_s": 0}]
)
def test_admission_rejects_bad_sizes(kwargs):
    with pytest.raises(ConfigError, match="Admission needs"):
        Admission(**kwargs)


def _until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- the edge service over loopback ----------------------------------------------------------


class HangingCloud:
    """A cloud that hangs until the test releases it (every call then times out)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def offload(self, boundary, *, threshold, meta):
        self.calls += 1
        self.release.wait(20)
        raise OffloadTimeout("released by the test")


@pytest.fixture()
def saturated(tiny_bundle, digits):
    """An edge with 1 slot and 1 waiting place, both taken by requests stuck on the cloud."""
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig
    from edge_runtime.wsgi import BackgroundServer

    cloud = HangingCloud()
    config = EdgeConfig(threshold=2.0, max_inflight=1, max_queue=1, queue_timeout_s=20.0,
                        retry_after_s=2, offload_timeout_s=20.0)
    app = create_app(tiny_bundle, config, offloader=cloud)
    server = BackgroundServer(app, threads=8).start()
    admission = app.extensions["edgelesspart.admission"]
    body = {"inputs": digits[:1].tolist()}
    pool = ThreadPoolExecutor(2)
    stuck = [pool.submit(requests.post, f"{server.url}/v1/infer", json=body, timeout=TIMEOUT)
             for _ in range(2)]
    _until(lambda: admission.running == 1 and admission.waiting == 1)
    try:
        yield server, admission, body, cloud, stuck
    finally:
        cloud.release.set()
        pool.shutdown(wait=True)
        server.stop()


def test_saturated_infer_is_429_json_with_retry_after(saturated):
    server, admission, body, cloud, stuck = saturated
    # WHEN a third request arrives while the slot and the waiting place are taken
    start = time.monotonic()
    response = requests.post(f"{server.url}/v1/infer", json=body, timeout=TIMEOUT)
    # THEN it is refused at once: 429, Retry-After, and a JSON message saying why
    assert time.monotonic() - start < 2.0
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    error = response.json()["error"]
    assert error["code"] == "too_many_requests" and error["status"] == 429
    assert "saturated" in error["message"] and "retry after 2 s" in error["message"]
    # AND the stuck requests still get their (degraded) answers once the cloud gives up
    cloud.release.set()
    answers = [f.result(TIMEOUT) for f in stuck]
    assert [r.status_code for r in answers] == [200, 200]
    assert all(r.json()["answers"][0]["degraded"] for r in answers)


def test_probes_answer_while_saturated(saturated):
    server, admission, body, cloud, stuck = saturated
    # WHEN the probes are called while every slot is taken
    health = requests.get(f"{server.url}/healthz", timeout=TIMEOUT)
    metrics = requests.get(f"{server.url}/metrics", timeout=TIMEOUT)
    bundle = requests.get(f"{server.url}/v1/bundle", timeout=TIMEOUT)
    # THEN they answer at once, and the metrics show the gate's state
    assert health.status_code == 200 and health.json()["ready"] is True
    assert bundle.status_code == 200
    text = metrics.text
    assert 'edgelesspart_inflight_requests{state="running"} 1' in text
    assert 'edgelesspart_inflight_requests{state="waiting"} 1' in text


def test_a_burst_never_grows_the_waiting_room(saturated):
    server, admission, body, cloud, stuck = saturated
    # WHEN 20 more requests arrive at once
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(
            lambda _: requests.post(f"{server.url}/v1/infer", json=body, timeout=TIMEOUT),
            range(20),
        ))
    # THEN all are refused, and no more than 1 + 1 requests were ever inside the app
    assert [r.status_code for r in replies] == [429] * 20
    assert all(r.headers.get("Retry-After") == "2" for r in replies)
    assert admission.peak <= 2 and admission.waiting == 1
    text = requests.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    assert 'edgelesspart_rejected_total{reason="queue_full"} 20' in text
    assert 'edgelesspart_requests_total{route="/v1/infer",status="429"} 20' in text


def test_a_wait_that_runs_out_is_429(tiny_bundle, digits):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig

    cloud = HangingCloud()
    config = EdgeConfig(threshold=2.0, max_inflight=1, max_queue=4, queue_timeout_s=0.1,
                        offload_timeout_s=20.0)
    app = create_app(tiny_bundle, config, offloader=cloud)
    admission = app.extensions["edgelesspart.admission"]
    first = threading.Thread(
        target=lambda: app.test_client().post("/v1/infer", json={"inputs": digits[:1].tolist()})
    )
    first.start()
    try:
        _until(lambda: admission.running == 1)
        response = app.test_client().post("/v1/infer", json={"inputs": digits[:1].tolist()})
    finally:
        cloud.release.set()
        first.join(TIMEOUT)
    assert response.status_code == 429 and "wait timeout" in response.json["error"]["message"]
    assert response.headers["Retry-After"] == "1"


def test_serve_edge_takes_its_admission_sizes_from_flags(tiny_bundle, monkeypatch):
    import edge_runtime.wsgi
    from edgelesspart.cli import main

    served: list = []
    monkeypatch.setattr(edge_runtime.wsgi, "serve_edge", lambda app, **kw: served.append((app, kw)))
    flags = ["--max-inflight", "3", "--max-queue", "5", "--server", "waitress"]
    assert main(["serve-edge", str(tiny_bundle), *flags]) == 0
    app, kwargs = served[0]
    admission = app.extensions["edgelesspart.admission"]
    assert (admission.limit, admission.queue) == (3, 5)
    assert kwargs["threads"] == 3 + 5 + 4
