"""Unit tests of the edge Flask app through Flask's test client (cloud part in process)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.config import EdgeConfig
from edgelesspart.errors import ConfigError, OffloadTimeout

EVENTS = Path(__file__).resolve().parents[1] / "events"
TENSOR = "application/x-edgelesspart-tensor"


def make_app(bundle, offloader=None, **config):
    from edge_runtime import create_app

    return create_app(bundle, EdgeConfig(**config), offloader=offloader)


@pytest.fixture(scope="module")
def app(tiny_bundle, cloud_part):
    from edgelesspart.runtime.offload import InProcessOffloader

    return make_app(tiny_bundle, InProcessOffloader(cloud_part), threshold=0.8, max_batch=32)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def bundle_id(tiny_bundle) -> str:
    from edgelesspart.runtime.manifest import load_manifest

    return load_manifest(tiny_bundle).bundle_id


class RaisingOffloader:
    """A cloud that always fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def offload(self, boundary, *, threshold, meta):
        self.calls += 1
        raise self.error


class BlockingOffloader:
    """A cloud that hangs until released (a slow cloud)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def offload(self, boundary, *, threshold, meta):
        self.entered.set()
        self.release.wait(10)
        raise OffloadTimeout("released by the test")


# --- answers ---------------------------------------------------------------------------------


def test_json_inputs_get_one_answer_per_row(client, digits, bundle_id):
    # GIVEN four digit images as nested lists
    # WHEN they are posted as JSON
    response = client.post("/v1/infer", json={"inputs": digits[:4].tolist()})
    # THEN every row has an answer with the documented fields
    assert response.status_code == 200, response.json
    body = response.json
    assert body["bundle_id"] == bundle_id and body["rows"] == 4
    for answer in body["answers"]:
        assert set(answer) >= {"label", "class_name", "confidence", "exit", "stage", "timings"}
        assert answer["degraded"] is False and 0.0 <= answer["confidence"] <= 1.0


def test_threshold_zero_answers_at_first_edge_exit_and_never_offloads(client, app, digits):
    # GIVEN the edge service with an in-process cloud
    service = app.extensions["edgelesspart"]
    before = service.metrics.offloaded_rows.total()
    # WHEN a request asks for threshold 0 (every row is confident at the first exit)
    response = client.post("/v1/infer?threshold=0", json={"inputs": digits[:5].tolist()})
    # THEN every row is answered by exit_1 on the edge and nothing went to the cloud
    assert response.status_code == 200
    assert {a["exit"] for a in response.json["answers"]} == {"exit_1"}
    assert {a["stage"] for a in response.json["answers"]} == {"edge"}
    assert response.json["offloaded"] == 0
    assert service.metrics.offloaded_rows.total() == before


def test_threshold_above_one_offloads_and_matches_full_model(
    tiny_bundle, cloud_part, digits, full_model_labels
):
    # GIVEN an edge whose threshold disables early exits (edge and cloud)
    from edgelesspart.runtime.offload import InProcessOffloader

    app = make_app(tiny_bundle, InProcessOffloader(cloud_part), threshold=2.0)
    # WHEN the whole batch is posted
    response = app.test_client().post("/v1/infer", json={"inputs": digits.tolist()})
    # THEN every row went to the cloud, the final classifier answered, labels match the model
    body = response.json
    assert response.status_code == 200 and body["offloaded"] == len(digits)
    assert {a["exit"] for a in body["answers"]} == {"final"}
    assert {a["stage"] for a in body["answers"]} == {"cloud"}
    assert [a["label"] for a in body["answers"]] == full_model_labels.tolist()
    assert "offload" in body["answers"][0]["timings"]


@pytest.mark.parametrize("codec", ["raw", "fp16", "lz4"])
def test_binary_tensor_body_in_any_codec(client, digits, bundle_id, codec):
    # GIVEN a batch encoded in the wire format
    from edgelesspart.runtime.codecs import encode_tensor

    payload = encode_tensor(digits[:3], codec, meta={"bundle_id": bundle_id})
    # WHEN it is posted as a binary body
    response = client.post("/v1/infer", data=payload, headers={"Content-Type": TENSOR})
    # THEN it is answered
    assert response.status_code == 200, response.json
    assert len(response.json["answers"]) == 3


def test_json_base64_tensor(client, digits):
    # GIVEN an encoded tensor, base64 inside JSON
    from edgelesspart.runtime.codecs import encode_tensor, to_base64

    body = {"tensor_b64": to_base64(encode_tensor(digits[:2])), "threshold": 0.5}
    # WHEN posted
    response = client.post("/v1/infer", json=body)
    # THEN answered with the requested threshold
    assert response.status_code == 200 and response.json["threshold"] == 0.5


def test_png_image_is_preprocessed_as_the_manifest_says(client, digits, digit_png):
    # GIVEN the PNG of the first digit
    png = digit_png
    # WHEN posted as image/png
    response = client.post("/v1/infer", data=png, headers={"Content-Type": "image/png"})
    json_response = client.post("/v1/infer", json={"inputs": digits[:1].tolist()})
    # THEN it gets the same answer as the preprocessed tensor
    assert response.status_code == 200
    assert response.json["answers"][0]["label"] == json_response.json["answers"][0]["label"]


# --- bad input -------------------------------------------------------------------------------


def _frame_with_codec(codec: str) -> bytes:
    from edgelesspart.runtime import wire

    body = np.zeros((1, 32, 32, 3), np.float32).tobytes()
    return wire.build_frame(
        dtype="float32", shape=(1, 32, 32, 3), codec=codec, params={}, meta={}, body=body
    )


def _encoded(array: np.ndarray, **meta) -> bytes:
    from edgelesspart.runtime.codecs import encode_tensor

    return encode_tensor(array, "raw", meta=meta)


def _bad_requests():
    nan = np.zeros((1, 32, 32, 3), np.float32)
    nan[0, 0, 0, 0] = np.nan
    inf = np.zeros((1, 32, 32, 3), np.float32)
    inf[0, 1, 1, 1] = np.inf
    tensor = {"Content-Type": TENSOR}
    return {
        "wrong shape": (dict(data=(EVENTS / "infer_bad_shape.json").read_bytes(),
                             content_type="application/json"), 422, "shape"),
        "ragged lists": (dict(data=(EVENTS / "infer_ragged.json").read_bytes(),
                              content_type="application/json"), 400, "rectangular"),
        "no tensor key": (dict(data=(EVENTS / "infer_no_tensor.json").read_bytes(),
                               content_type="application/json"), 400, "tensor_b64"),
        "bad base64": (dict(data=(EVENTS / "infer_bad_base64.json").read_bytes(),
                            content_type="application/json"), 400, "base64"),
        "wrong dtype": (dict(data=_encoded(np.zeros((1, 32, 32, 3), bool)), headers=tensor),
                        422, "numeric"),
        "NaN": (dict(data=_encoded(nan), headers=tensor), 422, "(?i)nan|finite"),
        "Inf": (dict(data=_encoded(inf), headers=tensor), 422, "(?i)inf|finite"),
        "empty body": (dict(data=b"", headers=tensor), 400, "Empty request body"),
        "unknown codec": (dict(data=_frame_with_codec("zfp8"), headers=tensor), 400, "zfp8"),
        "not a tensor": (dict(data=b"\x80\x04pickle", headers=tensor), 400, "magic"),
        "bad json": (dict(data=b"{nope", content_type="application/json"), 400, "JSON"),
        "media type": (dict(data=b"x", content_type="text/plain"), 415, "text/plain"),
        "bundle header": (dict(json={"inputs": [[[[0.0] * 3] * 32] * 32]},
                               headers={"X-EdgeLessPart-Bundle": "other"}), 409, "other"),
        "bundle in meta": (dict(data=_encoded(np.zeros((1, 32, 32, 3), np.float32),
                                              bundle_id="other"), headers=tensor), 409, "other"),
        "threshold bounds": (dict(json={"inputs": [[[[0.0] * 3] * 32] * 32], "threshold": 5}),
                             400, r"allowed range"),
        "threshold NaN": (dict(json={"inputs": [[[[0.0] * 3] * 32] * 32]},
                               query_string={"threshold": "nan"}), 400, "allowed range"),
        "too many rows": (dict(json={"inputs": np.zeros((33, 32, 32, 3)).tolist()}), 413, "33"),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_input_is_a_json_4xx_and_the_service_keeps_serving(client, digits, case):
    # GIVEN a malformed request
    kwargs, status, pattern = _bad_requests()[case]
    # WHEN it is posted
    response = client.post("/v1/infer", **kwargs)
    # THEN a JSON error with that status and a message saying what was wrong
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["status"] == status and re.search(pattern, error["message"]), error
    # AND the next good request is served
    assert client.post("/v1/infer", json={"inputs": digits[:1].tolist()}).status_code == 200


def test_body_over_max_content_length_is_413_json(tiny_bundle):
    # GIVEN an app with a 1 KiB body limit
    app = make_app(tiny_bundle, max_content_length=1024)
    # WHEN a larger body arrives
    response = app.test_client().post("/v1/infer", data=b"x" * 5000, content_type=TENSOR)
    # THEN werkzeug's 413 is rendered as our JSON error naming the limit
    assert response.status_code == 413
    assert "1024" in response.json["error"]["message"]


def test_unknown_route_and_wrong_method_are_json(client):
    # WHEN a missing route and a wrong method are requested
    missing, wrong = client.get("/nope"), client.get("/v1/infer")
    # THEN both are JSON errors
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
    assert wrong.json["error"]["status"] == 405


# --- degraded answers ------------------------------------------------------------------------


def test_cloud_failure_gives_degraded_answers_not_errors(tiny_bundle, digits):
    # GIVEN a cloud that times out
    cloud = RaisingOffloader(OffloadTimeout("no answer within 0.1 s"))
    app = make_app(tiny_bundle, cloud, threshold=2.0)
    # WHEN rows must be offloaded
    response = app.test_client().post("/v1/infer", json={"inputs": digits[:3].tolist()})
    # THEN they are answered from the best edge exit, marked degraded with the reason
    assert response.status_code == 200 and cloud.calls == 1
    answers = response.json["answers"]
    assert all(a["degraded"] and "OffloadTimeout" in a["reason"] for a in answers)
    assert {a["stage"] for a in answers} == {"edge"} and response.json["degraded"] == 3
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'edgelesspart_degraded_answers_total{reason="OffloadTimeout"} 3' in metrics


def test_edge_only_service_answers_degraded(tiny_bundle, digits):
    # GIVEN no cloud configured
    app = make_app(tiny_bundle, threshold=2.0)
    # WHEN a row cannot exit early
    answer = app.test_client().post("/v1/infer", json={"inputs": digits[:1].tolist()}).json
    # THEN it is answered locally and says why
    assert answer["answers"][0]["degraded"] is True
    assert "no cloud configured" in answer["answers"][0]["reason"]


def test_slow_cloud_does_not_block_local_early_exits(tiny_bundle, digits):
    # GIVEN one offload slot, held by a request waiting on a hung cloud
    cloud = BlockingOffloader()
    app = make_app(tiny_bundle, cloud, threshold=2.0, offload_workers=1)
    slow = threading.Thread(
        target=lambda: app.test_client().post("/v1/infer", json={"inputs": digits[:1].tolist()})
    )
    slow.start()
    try:
        assert cloud.entered.wait(5)
        client = app.test_client()
        # WHEN another request exits early, and a third needs the cloud
        early = client.post("/v1/infer?threshold=0", json={"inputs": digits[:1].tolist()})
        busy = client.post("/v1/infer", json={"inputs": digits[:1].tolist()})
    finally:
        cloud.release.set()
        slow.join(10)
    # THEN the early exit is answered normally and the third is degraded at once (cloud busy)
    assert early.json["answers"][0]["exit"] == "exit_1" and not early.json["answers"][0]["degraded"]
    assert "cloud busy" in busy.json["answers"][0]["reason"]


# --- other routes ----------------------------------------------------------------------------


def test_bundle_route_describes_the_served_bundle(client, bundle_id):
    body = client.get("/v1/bundle").json
    assert body["bundle_id"] == bundle_id and body["edge_stage"] == "edge"
    assert body["classes"] == [str(i) for i in range(10)]
    assert body["input"]["shape"] == [32, 32, 3]


def test_healthz_reports_liveness_and_readiness(client, bundle_id):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["live"] and response.json["ready"]
    assert response.json["bundle_id"] == bundle_id
    assert response.json["cloud"]["breaker"] == "closed"


def test_metrics_are_prometheus_text(client, digits):
    # GIVEN one served request
    client.post("/v1/infer?threshold=0", json={"inputs": digits[:2].tolist()})
    # WHEN the metrics are scraped
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    # THEN they are well-formed exposition lines with the documented families
    assert response.content_type.startswith("text/plain; version=0.0.4")
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-z_]+="[^"]*",?)*\})? [-+0-9.eInf]+$')
    for line in text.strip().splitlines():
        assert line.startswith("# ") or sample.match(line), line
    for family in ("requests_total", "answers_total", "offloads_total", "offloaded_rows_total",
                   "degraded_answers_total", "offload_bytes_sent_total"):
        assert f"# TYPE edgelesspart_{family} counter" in text
    assert "# TYPE edgelesspart_request_latency_seconds histogram" in text
    assert 'edgelesspart_requests_total{route="/v1/infer",status="200"}' in text
    assert 'edgelesspart_answers_total{exit="exit_1",stage="edge"}' in text
    assert 'le="+Inf"' in text


def test_openapi_document_lists_every_route(client, app):
    # WHEN the document is fetched
    doc = client.get("/openapi.json").json
    # THEN it is OpenAPI 3 and covers every route the app serves
    assert doc["openapi"].startswith("3.")
    served = {r.rule for r in app.url_map.iter_rules() if r.endpoint != "static"}
    assert served <= set(doc["paths"])
    assert "requestBody" in doc["paths"]["/v1/infer"]["post"]
    for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc)):
        assert ref in doc["components"]["schemas"]


def test_token_guards_v1_routes_but_not_health(tiny_bundle, digits):
    app = make_app(tiny_bundle, token="s3cret")
    client = app.test_client()
    assert client.post("/v1/infer", json={"inputs": digits[:1].tolist()}).status_code == 401
    ok = client.post(
        "/v1/infer?threshold=0",
        json={"inputs": digits[:1].tolist()},
        headers={"Authorization": "Bearer s3cret"},
    )
    assert ok.status_code == 200 and client.get("/healthz").status_code == 200


def test_executor_lives_in_app_extensions(app):
    from edge_runtime.service import EdgeService

    service = app.extensions["edgelesspart"]
    assert isinstance(service, EdgeService) and service.executor is not None


# --- config and metrics units ----------------------------------------------------------------


def test_config_precedence_argument_over_environment_over_default():
    env = {"EDGELESSPART_THRESHOLD": "0.6", "EDGELESSPART_CLOUD": "lambda://fn"}
    config = EdgeConfig.from_env(env, threshold=0.9)
    assert config.threshold == 0.9 and config.cloud == "lambda://fn"
    assert EdgeConfig.from_env({}).threshold == EdgeConfig().threshold


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"cloud": "ftp://x"}, "http"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold_min": 0.9, "threshold_max": 0.1}, "bounds"),
        ({"cloud": "lambda://"}, "function name"),
    ],
)
def test_config_rejects_bad_values(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        EdgeConfig(**kwargs)


def test_config_rejects_bad_environment_value():
    with pytest.raises(ConfigError, match="EDGELESSPART_MAX_BATCH"):
        EdgeConfig.from_env({"EDGELESSPART_MAX_BATCH": "many"})


def test_histogram_buckets_are_cumulative():
    from edge_runtime.metrics import Registry

    registry = Registry()
    hist = registry.histogram("t_seconds", "test", buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        hist.observe(value, route="r")
    text = registry.render()
    assert 't_seconds_bucket{route="r",le="0.1"} 1' in text
    assert 't_seconds_bucket{route="r",le="1"} 2' in text
    assert 't_seconds_bucket{route="r",le="+Inf"} 3' in text
    assert 't_seconds_count{route="r"} 3' in text


def test_wsgi_factory_reads_the_bundle_from_the_environment(monkeypatch, tiny_bundle):
    from edge_runtime.wsgi import app_from_env

    monkeypatch.delenv("EDGELESSPART_BUNDLE", raising=False)
    with pytest.raises(ConfigError, match="EDGELESSPART_BUNDLE"):
        app_from_env()
    monkeypatch.setenv("EDGELESSPART_BUNDLE", str(tiny_bundle))
    monkeypatch.setenv("EDGELESSPART_THRESHOLD", "0.5")
    app = app_from_env()
    assert app.extensions["edgelesspart"].config.threshold == 0.5


def test_breaker_transitions_are_a_counter_set_from_the_breakers_totals():
    from edge_runtime.metrics import EdgeMetrics
    from edgelesspart.runtime.resilience import CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker(failures=1, reset_s=1.0, clock=lambda: now[0])
    metrics = EdgeMetrics()
    # GIVEN a breaker that opened, went half-open after the reset time, and opened again twice
    for _ in range(2):
        breaker.record_failure()
        now[0] += 1.5
        assert breaker.state == "half-open"
    metrics.observe_breaker(breaker)
    metrics.observe_breaker(breaker)  # scraping twice must not add anything
    text = metrics.render()
    # THEN the cumulative counts are exported as a counter family named *_total
    assert "# TYPE edgelesspart_breaker_transitions_total counter" in text
    assert 'edgelesspart_breaker_transitions_total{from="closed",to="open"} 1' in text
    assert 'edgelesspart_breaker_transitions_total{from="open",to="half-open"} 2' in text
    assert 'edgelesspart_breaker_transitions_total{from="half-open",to="open"} 1' in text
    assert "edgelesspart_breaker_transitions{" not in text
    # AND a counter never goes back
    with pytest.raises(ValueError, match="cannot decrease"):
        metrics.breaker_transitions.set_total(0, **{"from": "closed", "to": "open"})
