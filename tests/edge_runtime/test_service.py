"""Regression tests of the edge service for the serving review (issue 15) and its batching.

Each test names the defect it pins. The cloud is a real HTTP server on loopback where the
offloader's behaviour matters (defects 1 and 2); elsewhere an in-process cloud part.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from edge_runtime.config import EdgeConfig
from edgelesspart.errors import BundleError

TENSOR = "application/x-edgelesspart-tensor"


def make_app(bundle, offloader=None, **config):
    from edge_runtime import create_app

    return create_app(bundle, EdgeConfig(**config), offloader=offloader)


class _Cloud:
    """A loopback HTTP cloud answering ``/v1/continue`` with ``reply(rows)`` and ``status``."""

    def __init__(self, status=200, reply=None):
        self.status, self.reply, self.calls = status, reply, 0
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                return None

            def do_POST(self):  # noqa: N802
                from edgelesspart.runtime.codecs import decode_tensor

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                cloud.calls += 1
                rows = len(decode_tensor(body)[0])
                data = cloud.reply(rows) if cloud.reply else {"error": {"message": "no"}}
                payload = json.dumps(data).encode()
                self.send_response(cloud.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_cloud():
    clouds = []

    def start(**kwargs):
        clouds.append(_Cloud(**kwargs))
        return clouds[-1]

    yield start
    for cloud in clouds:
        cloud.close()


def _answers(rows, **change):
    good = {"label": 3, "class_name": "3", "confidence": 0.9, "exit": "final", "stage": "cloud",
            "timings": {"cloud_0": 0.4}, "degraded": False, "reason": None}  # fmt: skip
    return {"answers": [{**good, **change} for _ in range(rows)]}


def test_defect1_a_malformed_cloud_answer_degrades_the_offloaded_rows_only(
    tiny_bundle, digits, http_cloud
):
    # GIVEN a cloud whose answers carry timings that are not a mapping
    cloud = http_cloud(reply=lambda rows: _answers(rows, timings=7))
    client = make_app(tiny_bundle, cloud=cloud.url, offload_retries=0).test_client()
    # WHEN a request mixes rows the edge answers (threshold 0: every row exits at the edge) ...
    early = client.post("/v1/infer?threshold=0", json={"inputs": digits[:4].tolist()})
    # ... and rows that must be offloaded (threshold 1: nothing is confident enough)
    late = client.post("/v1/infer?threshold=1", json={"inputs": digits[:4].tolist()})
    # THEN the request is a 200, the offloaded rows are degraded with the reason
    assert early.status_code == 200 and late.status_code == 200, late.json
    assert late.json["degraded"] == 4 and cloud.calls == 1
    for answer in late.json["answers"]:
        assert answer["degraded"] and "malformed response" in answer["reason"]
        assert answer["stage"] == "edge" and answer["label"] is not None


@pytest.mark.parametrize("status", [401, 404])
def test_defect2_a_cloud_config_error_is_loud_and_opens_the_breaker(
    tiny_bundle, digits, http_cloud, caplog, status
):
    # GIVEN a cloud that refuses every call with 401 (wrong token) or 404 (wrong URL)
    cloud = http_cloud(status=status)
    app = make_app(tiny_bundle, cloud=cloud.url, offload_retries=0, breaker_failures=2)
    client = app.test_client()
    # WHEN three requests need the cloud
    with caplog.at_level(logging.WARNING, logger="edgelesspart.edge"):
        bodies = [
            client.post("/v1/infer?threshold=1", json={"inputs": digits[:1].tolist()}).json
            for _ in range(3)
        ]
    # THEN the first two name the refusal, a log line and a metric say so, and the breaker
    # (never closed by a refusal) opened after two, so the third never called the cloud
    for body in bodies[:2]:
        assert body["answers"][0]["reason"].startswith(f"cloud rejected the call: {status}")
    assert "Circuit breaker is open" in bodies[2]["answers"][0]["reason"]
    assert cloud.calls == 2
    assert sum(f"cloud rejected the call: {status}" in r.getMessage() for r in caplog.records) == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'edgelesspart_offload_rejected_total{{status="{status}"}} 2' in metrics
    assert 'edgelesspart_breaker_state{state="open"} 1' in metrics


class _Broken:
    """A segment runner that fails like a broken bundle or a failing LiteRT call."""

    def __init__(self, error):
        self.error = error

    def __call__(self, x, trusted=False):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [BundleError("exit returned probabilities of shape (1, 3)"), RuntimeError("tflite died")],
    ids=["bundle-error", "runtime-error"],
)
def test_defect6_server_faults_are_500_with_a_correlation_id(tiny_bundle, digits, caplog, error):
    # GIVEN an edge whose first segment fails on valid input
    app = make_app(tiny_bundle)
    executor = app.extensions["edgelesspart"].executor
    broken = _Broken(error)
    executor._runners[0] = broken  # both loops: batches, and the batch-of-one plan
    executor._plan = ((*executor._plan[0][:2], broken), *executor._plan[1:])
    # WHEN a valid request comes in
    with caplog.at_level(logging.ERROR):
        response = app.test_client().post("/v1/infer", json={"inputs": digits[:1].tolist()})
    # THEN it is a 500 (the server's fault), the details stay in the log under one id
    assert response.status_code == 500
    message = response.json["error"]["message"]
    assert response.json["error"]["code"] == "internal_error" and str(error) not in message
    correlation = message.split("correlation id ")[1].split(")")[0]
    assert any(correlation in r.getMessage() and str(error) in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_defect6_a_real_litert_failure_is_an_inference_error_not_a_client_error(tiny_bundle):
    from edgelesspart.errors import InferenceError
    from edgelesspart.runtime.bundle import Bundle

    runner = Bundle.load(tiny_bundle, stages=["edge"]).runner("edge_0")
    wrong = np.zeros((1, 32, 32, 3), np.float64)  # only reachable with trusted=True
    with pytest.raises(InferenceError, match="failed on a validated batch"):
        runner(wrong, trusted=True)


def test_defect6_a_row_left_without_an_answer_is_an_explicit_error(tiny_bundle, digits):
    from edgelesspart.runtime.executor import StageResult

    app = make_app(tiny_bundle)
    service = app.extensions["edgelesspart"]
    real = service.executor.run

    def drop_last(x, threshold=None, **kwargs):  # a bug that forgets the last row
        result = real(x, threshold, **kwargs)
        return StageResult(result.answers[:-1] + [None], result.pending[:0], None, result.best)

    service.executor.run = drop_last
    response = app.test_client().post("/v1/infer?threshold=0", json={"inputs": digits[:3].tolist()})
    assert response.status_code == 500  # never two answers for three rows


@pytest.mark.parametrize("value", [True, "0.5", None, [0.5], {"t": 1}])
def test_defect7_a_json_threshold_must_be_a_number(tiny_bundle, digits, value):
    client = make_app(tiny_bundle).test_client()
    response = client.post("/v1/infer", json={"inputs": digits[:1].tolist(), "threshold": value})
    assert response.status_code == 400 and response.json["error"]["code"] == "bad_threshold"
    ok = client.post("/v1/infer", json={"inputs": digits[:1].tolist(), "threshold": 0})
    assert ok.status_code == 200


def test_defect7_metric_labels_never_come_from_a_cloud_reply(tiny_bundle, digits, http_cloud):
    # GIVEN a cloud that names a new exit and stage in every answer
    names = iter(range(10**6))

    def reply(rows):
        k = next(names)
        return _answers(rows, exit=f"exit-{k}", stage=f"stage-{k}")

    cloud = http_cloud(reply=reply)
    client = make_app(tiny_bundle, cloud=cloud.url).test_client()
    for _ in range(5):
        client.post("/v1/infer?threshold=1", json={"inputs": digits[:1].tolist()})
    # THEN the answers pass through, but the metric has one "other" series, not five new ones
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'edgelesspart_answers_total{exit="other",stage="other"} 5' in metrics
    assert "exit-1" not in metrics and "stage-1" not in metrics


def test_batching_coalesces_concurrent_requests_with_per_row_exit_decisions(tiny_bundle, digits):
    # GIVEN two edge services, one batching with a wide window
    plain = make_app(tiny_bundle, max_queue=16)
    batched = make_app(tiny_bundle, max_queue=16, max_inflight=8, batch_max_rows=32,
                       batch_delay_us=30_000, queue_timeout_s=60.0)  # fmt: skip
    requests_ = [digits[k : k + 2] for k in range(0, 16, 2)]
    thresholds = [0.0, 0.9, 1.0, 0.9, 0.0, 0.9, 1.0, 0.9]
    expected = [
        plain.test_client().post(f"/v1/infer?threshold={t}", json={"inputs": x.tolist()}).json
        for x, t in zip(requests_, thresholds)
    ]
    got: list = [None] * len(requests_)

    def call(k):
        client = batched.test_client()
        url = f"/v1/infer?threshold={thresholds[k]}"
        got[k] = client.post(url, json={"inputs": requests_[k].tolist()}).json

    # WHEN eight requests arrive together
    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(requests_))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # THEN each gets the same exits and labels as when served alone (decisions are per row)
    for mine, ref in zip(got, expected):
        assert "answers" in mine, mine
        assert [(a["exit"], a["label"], a["degraded"]) for a in mine["answers"]] == [
            (a["exit"], a["label"], a["degraded"]) for a in ref["answers"]
        ]
    # AND fewer edge runs than requests happened
    stats = batched.extensions["edgelesspart"].batcher.stats()
    assert stats["requests"] == 8 and stats["batches"] < 8


def test_batching_settings_are_validated():
    from edgelesspart.errors import ConfigError

    with pytest.raises(ConfigError, match="max_delay_us must be an int >= 0"):
        EdgeConfig(batch_max_rows=8, batch_delay_us=-1)
    assert EdgeConfig.from_env({"EDGELESSPART_BATCH_MAX_ROWS": "16"}).batch_max_rows == 16


def test_dispatch_is_resolved_at_start_and_said_why(tiny_bundle):
    from edge_runtime.service import INLINE_MAX_MS, INLINE_MAX_MS_WORKERS
    from edgelesspart.errors import ConfigError

    # GIVEN the tiny bundle, whose edge stage takes well under a millisecond per row
    def service(**config):
        return make_app(tiny_bundle, **config).extensions["edgelesspart"]

    auto, many, batched = service(), service(workers=2), service(batch_max_rows=8)
    pinned = service(dispatch="pool")
    # THEN auto runs it on the loop's thread, with the measured time and the limit in the reason
    assert auto.inline and auto.edge_stage_ms() < INLINE_MAX_MS
    assert auto.dispatch_reason.startswith("inline: the edge stage takes ")
    assert f"< {INLINE_MAX_MS:g} ms, one process" in auto.dispatch_reason
    assert many.inline and f"< {INLINE_MAX_MS_WORKERS:g} ms, 2 worker" in many.dispatch_reason
    # AND batching and an explicit choice win over auto
    assert not batched.inline and "batching" in batched.dispatch_reason
    assert not pinned.inline and pinned.dispatch_reason == "pool: set by dispatch"
    assert EdgeConfig.from_env({"EDGELESSPART_DISPATCH": "inline"}).dispatch == "inline"
    with pytest.raises(ConfigError, match="dispatch must be one of auto, inline, pool"):
        EdgeConfig(dispatch="threads")
    for s in (auto, many, batched, pinned):
        s.close()


def test_inline_dispatch_sends_pending_rows_to_the_cloud_from_a_thread(
    tiny_bundle, digits, http_cloud
):
    import requests

    from edge_runtime.fastpath import edge_server
    from edgelesspart.runtime.codecs import encode_tensor

    # GIVEN an inline-dispatch edge whose cloud holds each call until the test lets it go
    arrived, release = threading.Event(), threading.Event()

    def reply(rows):
        arrived.set()
        release.wait(10)
        return _answers(rows)

    cloud = http_cloud(reply=reply)
    app = make_app(tiny_bundle, cloud=cloud.url, dispatch="inline", offload_retries=0)
    frame = encode_tensor(np.ascontiguousarray(digits[:2], np.float32), "raw")
    with edge_server(app) as server:
        url = server.url + "/v1/infer"
        hdrs = {"Content-Type": TENSOR}
        # WHEN one request must go to the cloud (threshold 1: no edge exit answers) ...
        slow: dict = {}
        worker = threading.Thread(target=lambda: slow.update(r=requests.post(
            url + "?threshold=1", data=frame, headers=hdrs, timeout=30)))  # fmt: skip
        worker.start()
        assert arrived.wait(10)
        # ... and another, answered at an edge exit, comes while the cloud holds the first
        early = requests.post(url + "?threshold=0", data=frame, headers=hdrs, timeout=10)
        held = "r" not in slow
        release.set()
        worker.join(30)
    # THEN the edge answer came while the cloud still held the first (the loop kept serving)
    assert early.status_code == 200 and held
    assert all(a["stage"] == "edge" for a in early.json()["answers"])
    # AND the offloaded rows got the cloud's answers
    assert slow["r"].status_code == 200
    assert [a["exit"] for a in slow["r"].json()["answers"]] == ["final", "final"]
    assert slow["r"].json()["offloaded"] == 2
    app.extensions["edgelesspart"].close()
