"""The Lambda handler, the HTTP entry and the local Lambda-Invoke-API server (test clients)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import numpy as np
import pytest

EVENTS = Path(__file__).resolve().parents[1] / "events"
TENSOR = "application/x-edgelesspart-tensor"
INVOKE = "/2015-03-31/functions/{}/invocations"


# --- handler ---------------------------------------------------------------------------------


def test_first_invocation_is_cold_and_reports_its_init_time(container, event, caplog):
    from cloud_functions.handler import handler
    from cloud_functions.local_server import LocalContext

    # GIVEN a fresh container and a real event
    first_ctx, second_ctx = LocalContext("fn"), LocalContext("fn")
    # WHEN it is invoked twice
    with caplog.at_level(logging.INFO, logger="edgelesspart.cloud"):
        first = handler(event, first_ctx)
        second = handler(event, second_ctx)
    # THEN the first call is a cold start with its load time, the second is warm
    assert first["cold_start"] is True and first["init_ms"] > 0
    assert second["cold_start"] is False
    # AND every row is answered by the cloud's final classifier (threshold 2 in the event)
    assert [a["exit"] for a in first["answers"]] == ["final"] * 3
    assert [a["label"] for a in first["answers"]] == [a["label"] for a in second["answers"]]
    # AND each request id is in the response and the log lines
    assert first["request_id"] == first_ctx.aws_request_id
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert first_ctx.aws_request_id in logged and second_ctx.aws_request_id in logged
    assert "cold start" in logged


def test_bundle_path_comes_from_environment_then_next_to_handler(monkeypatch, tmp_path):
    from cloud_functions import handler

    monkeypatch.setenv("EDGELESSPART_BUNDLE", str(tmp_path))
    assert handler.bundle_path() == tmp_path
    monkeypatch.delenv("EDGELESSPART_BUNDLE")
    assert handler.bundle_path() == Path(handler.__file__).resolve().parent / "bundle"


@pytest.mark.parametrize(
    ("source", "kind", "pattern"),
    [
        ("lambda_missing_tensor.json", "InputError", "tensor_b64"),
        ("lambda_bad_base64.json", "CodecError", "base64"),
        ([1, 2, 3], "InputError", "JSON object"),
    ],
)
def test_bad_events_get_a_handled_4xx_error(container, lambda_context, source, kind, pattern):
    from cloud_functions.handler import handler

    # GIVEN a malformed event (from tests/events or inline)
    event = json.loads((EVENTS / source).read_text()) if isinstance(source, str) else source
    # WHEN the handler runs
    response = handler(event, lambda_context)
    # THEN it returns an error body (not an exception) with a 4xx status
    assert response["status"] == 400 and response["error"]["type"] == kind
    assert pattern in response["error"]["message"]


def test_tensor_for_another_bundle_is_refused_with_409(container, lambda_context, boundary):
    from cloud_functions.handler import handler
    from edgelesspart.runtime.codecs import encode_tensor, to_base64

    payload = encode_tensor(boundary, meta={"bundle_id": "someone-else"})
    response = handler({"tensor_b64": to_base64(payload)}, lambda_context)
    assert response["status"] == 409 and "someone-else" in response["error"]["message"]


# --- HTTP entry ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_app(tiny_bundle):
    from cloud_functions.http_entry import create_app

    return create_app(tiny_bundle, token="t0ken")


def _auth():
    return {"Authorization": "Bearer t0ken", "Content-Type": TENSOR}


def test_http_continue_answers_and_counts(http_app, encoded):
    client = http_app.test_client()
    bearer = {"Authorization": "Bearer t0ken"}
    before = client.get("/v1/stats", headers=bearer).json["continue"]
    # WHEN an encoded tensor is posted with the token
    response = client.post("/v1/continue?threshold=2", data=encoded, headers=_auth())
    # THEN each row is answered and the request is counted
    assert response.status_code == 200, response.json
    assert [a["exit"] for a in response.json["answers"]] == ["final"] * 3
    assert client.get("/v1/stats", headers=bearer).json["continue"] == before + 1
    metrics = client.get("/metrics", headers=bearer).get_data(as_text=True)
    assert "edgelesspart_cloud_requests_total" in metrics


@pytest.mark.parametrize(
    ("data", "headers", "status", "pattern"),
    [
        (b"", _auth(), 400, "Empty"),
        (b"ELPT\x01", _auth(), 400, "Truncated"),
        (b"abc", {"Authorization": "Bearer t0ken", "Content-Type": "text/plain"}, 415, "text"),
        (b"abc", {"Content-Type": TENSOR}, 401, "token"),
    ],
)
def test_http_continue_bad_requests(http_app, data, headers, status, pattern):
    response = http_app.test_client().post("/v1/continue", data=data, headers=headers)
    assert response.status_code == status
    assert pattern in response.json["error"]["message"]


def test_http_continue_refuses_another_bundle(http_app, boundary):
    from edgelesspart.runtime.codecs import encode_tensor

    payload = encode_tensor(boundary, meta={"bundle_id": "other"})
    response = http_app.test_client().post("/v1/continue", data=payload, headers=_auth())
    assert response.status_code == 409 and response.json["error"]["code"] == "bundle_mismatch"


def test_http_health(http_app, bundle_id):
    assert http_app.test_client().get("/healthz").json["bundle_id"] == bundle_id


# --- local Lambda Invoke API server ----------------------------------------------------------


class CrashingCloud:
    bundle_id = "crash"
    init_ms = 1.0

    def handle_event(self, event):
        raise RuntimeError("segment exploded")


@pytest.fixture(scope="module")
def local_app(tiny_bundle):
    from cloud_functions.local_server import create_app

    return create_app(tiny_bundle)


def test_invoke_request_response(local_app, event):
    client = local_app.test_client()
    response = client.post(
        INVOKE.format("anything"), data=json.dumps(event), headers={"X-Amz-Log-Type": "Tail"}
    )
    assert response.status_code == 200 and "X-Amz-Function-Error" not in response.headers
    assert len(response.json["answers"]) == 3
    log = base64.b64decode(response.headers["X-Amz-Log-Result"]).decode()
    assert log.startswith("START RequestId:") and "REPORT RequestId:" in log
    assert client.get("/v1/stats").json["invoke"] >= 1


def test_invoke_event_is_accepted_and_dry_run_is_empty(local_app, event):
    client = local_app.test_client()
    event_call = client.post(
        INVOKE.format("fn"), data=json.dumps(event), headers={"X-Amz-Invocation-Type": "Event"}
    )
    dry = client.post(INVOKE.format("fn"), data=b"{}", headers={"X-Amz-Invocation-Type": "DryRun"})
    assert event_call.status_code == 202 and event_call.get_data() == b""
    assert dry.status_code == 204


@pytest.mark.parametrize(("kind", "limit"), [("RequestResponse", 6 * 2**20), ("Event", 2**20)])
def test_invoke_payload_over_the_limit_is_413(local_app, kind, limit):
    payload = b'{"x": "' + b"a" * limit + b'"}'
    response = local_app.test_client().post(
        INVOKE.format("fn"), data=payload, headers={"X-Amz-Invocation-Type": kind}
    )
    assert response.status_code == 413
    assert response.headers["x-amzn-ErrorType"] == "RequestTooLargeException"
    assert str(limit) in response.json["message"]


def test_invoke_non_json_payload_is_an_unmarshal_error(local_app):
    response = local_app.test_client().post(INVOKE.format("fn"), data=b"\x00not json")
    assert response.status_code == 200
    assert response.headers["X-Amz-Function-Error"] == "Unhandled"
    assert response.json["errorType"] == "Runtime.UnmarshalError"


def test_invoke_handler_exception_is_unhandled_function_error(tiny_bundle, event):
    from cloud_functions.local_server import create_app

    app = create_app(tiny_bundle, cloud=CrashingCloud())
    response = app.test_client().post(INVOKE.format("fn"), data=json.dumps(event))
    assert response.status_code == 200
    assert response.headers["X-Amz-Function-Error"] == "Unhandled"
    assert response.json["errorType"] == "RuntimeError"
    assert response.json["errorMessage"] == "segment exploded"


def test_invoke_unknown_function_and_bad_invocation_type(tiny_bundle):
    from cloud_functions.local_server import create_app

    app = create_app(tiny_bundle, function_name="mine")
    client = app.test_client()
    missing = client.post(INVOKE.format("other"), data=b"{}")
    bad = client.post(INVOKE.format("mine"), data=b"{}", headers={"X-Amz-Invocation-Type": "X"})
    assert missing.status_code == 404
    assert missing.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
    assert bad.status_code == 400


def test_invoke_handled_error_has_no_function_error_header(local_app, boundary):
    from edgelesspart.runtime.codecs import encode_tensor, to_base64

    event = {"tensor_b64": to_base64(encode_tensor(np.asarray(boundary), meta={}))}
    response = local_app.test_client().post(INVOKE.format("fn"), data=json.dumps(event))
    assert response.status_code == 200 and "X-Amz-Function-Error" not in response.headers
    assert response.json["status"] == 409
