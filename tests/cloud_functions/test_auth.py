"""Auth of the cloud part: ``serve-cloud`` with a token refuses unsigned, badly signed and stale
calls on both ways in (a real boto3 client for the Invoke API, ``requests`` for /v1/continue),
the Lambda handler checks ``$EDGELESSPART_CLOUD_SECRET``, and a public bind needs a token.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from edgelesspart.cli import main
from edgelesspart.runtime import signing

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 15
SECRET = "cloud shared secret"
TENSOR = "application/x-edgelesspart-tensor"
BEARER = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def server(tiny_bundle):
    from cloud_functions.local_server import create_app
    from service_http.wsgi import BackgroundServer

    background = BackgroundServer(create_app(tiny_bundle, token=SECRET))
    yield background.start()
    background.stop()


@pytest.fixture(scope="module")
def lambda_client(server):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "lambda", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="x",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 0}),
    )


# --- Lambda Invoke API through boto3 ---------------------------------------------------------


def test_a_signed_event_is_answered(lambda_client, event):
    signed = signing.sign_event(SECRET, event)
    response = lambda_client.invoke(FunctionName="f", Payload=json.dumps(signed))
    result = json.loads(response["Payload"].read())
    assert response["StatusCode"] == 200 and "FunctionError" not in response
    assert len(result["answers"]) == 3


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda e: e, "no 'auth' signature"),
        (lambda e: signing.sign_event("wrong secret", e), "does not match the event"),
        (lambda e: {**signing.sign_event(SECRET, e), "threshold": 0.01}, "does not match"),
        (lambda e: signing.sign_event(SECRET, e, timestamp=int(time.time()) - 3600),
         "away from this server's clock"),
    ],
    ids=["unsigned", "wrong-secret", "changed-after-signing", "stale"],
)
def test_boto3_surfaces_a_refused_invocation(lambda_client, server, event, make, pattern):
    from botocore.exceptions import ClientError

    before = _stats(server)["invoke"]
    # WHEN boto3 invokes with an unsigned, wrongly signed, altered or stale event
    with pytest.raises(ClientError) as info:
        lambda_client.invoke(FunctionName="f", Payload=json.dumps(make(dict(event))))
    # THEN boto3 raises Lambda's AccessDeniedException with the reason, and nothing ran
    error = info.value.response
    assert error["Error"]["Code"] == "AccessDeniedException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert pattern in error["Error"]["Message"] and "sign the event" in error["Error"]["Message"]
    assert _stats(server)["invoke"] == before


def test_a_dry_run_and_an_event_invocation_need_a_signature_too(lambda_client, event):
    from botocore.exceptions import ClientError

    for kind in ("DryRun", "Event"):
        with pytest.raises(ClientError, match="AccessDenied"):
            lambda_client.invoke(FunctionName="f", InvocationType=kind, Payload=json.dumps(event))
    signed = json.dumps(signing.sign_event(SECRET, event))
    assert lambda_client.invoke(FunctionName="f", InvocationType="DryRun",
                                Payload=signed)["StatusCode"] == 204


# --- POST /v1/continue -----------------------------------------------------------------------


def _post(server, body, headers, query=""):
    return requests.post(f"{server.url}/v1/continue{query}", data=body,
                         headers={"Content-Type": TENSOR, **headers}, timeout=TIMEOUT)


def test_a_signed_body_is_answered(server, encoded):
    response = _post(server, encoded, signing.sign_body(SECRET, encoded))
    assert response.status_code == 200 and len(response.json()["answers"]) == 3


def test_the_bearer_token_is_accepted_for_curl(server, encoded):
    response = _post(server, encoded, {"Authorization": f"Bearer {SECRET}"}, "?threshold=2")
    assert response.status_code == 200


def _with_threshold(boundary, bundle_id, threshold):
    from edgelesspart.runtime.codecs import encode_tensor

    return encode_tensor(boundary, "raw", meta={"bundle_id": bundle_id, "threshold": threshold})


def test_a_signed_request_takes_its_threshold_from_the_signed_meta(server, boundary, bundle_id):
    # GIVEN two signed tensors that differ only in meta.threshold (0: first cloud exit; 2: none)
    exits = {}
    for threshold in (0.0, 2.0):
        body = _with_threshold(boundary, bundle_id, threshold)
        response = _post(server, body, signing.sign_body(SECRET, body))
        assert response.status_code == 200
        exits[threshold] = {a["exit"] for a in response.json()["answers"]}
    # THEN the signed threshold decides where the rows exit
    assert exits[0.0] != exits[2.0] and exits[2.0] == {"final"}


@pytest.mark.parametrize(
    ("query", "headers"),
    [("?threshold=0", {}), ("", {"X-EdgeLessPart-Threshold": "0"}),
     ("?threshold=2", {"X-EdgeLessPart-Threshold": "0"}), ("?threshold=oops", {})],
    ids=["query", "header", "both", "not-a-number"],
)
def test_a_signed_request_refuses_an_unsigned_threshold(server, boundary, bundle_id, query,
                                                       headers):
    # GIVEN a correctly signed body whose meta says threshold 2 (no early exit)
    body = _with_threshold(boundary, bundle_id, 2.0)
    signed = signing.sign_body(SECRET, body)
    # WHEN someone on the way adds a threshold outside the signature
    response = _post(server, body, {**signed, **headers}, query)
    # THEN it is a 400 that says where the threshold belongs, and nothing ran
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unsigned_threshold" and "meta.threshold" in error["message"]


def test_a_bearer_request_may_still_set_the_threshold_outside_the_body(server, encoded):
    bearer = {"Authorization": f"Bearer {SECRET}"}
    low = _post(server, encoded, bearer, "?threshold=0").json()["answers"]
    high = _post(server, encoded, {**bearer, "X-EdgeLessPart-Threshold": "2"}).json()["answers"]
    assert {a["exit"] for a in high} == {"final"} != {a["exit"] for a in low}


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda body: {}, "bearer token"),
        (lambda body: {"Authorization": "Bearer nope"}, "bearer token"),
        (lambda body: signing.sign_body("wrong secret", body), "does not match the body"),
        (lambda body: signing.sign_body(SECRET, body + b"x"), "does not match the body"),
        (lambda body: signing.sign_body(SECRET, body, int(time.time()) + 3600), "clock"),
        (lambda body: {signing.SIGNATURE_HEADER: "v1=abc"}, "missing"),
        (lambda body: {signing.SIGNATURE_HEADER: "v1=abc", signing.TIMESTAMP_HEADER: "9" * 400},
         "not an integer number of seconds"),
        (lambda body: {signing.SIGNATURE_HEADER: "v1=abc", signing.TIMESTAMP_HEADER: "-5"},
         "not an integer number of seconds"),
    ],
    ids=["nothing", "wrong-bearer", "wrong-secret", "other-body", "future", "no-timestamp",
         "400-digit-timestamp", "negative-timestamp"],
)
def test_unsigned_or_badly_signed_continue_is_401_json(server, encoded, make, pattern):
    response = _post(server, encoded, make(encoded))
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and pattern in error["message"]


@pytest.mark.parametrize("ts", [10**400, -1, float("nan"), float("inf"), True, "soon", [1], {}],
                         ids=lambda ts: type(ts).__name__)
def test_an_absurd_event_timestamp_is_403_not_500(lambda_client, event, ts):
    from botocore.exceptions import ClientError

    # json.dumps writes nan/inf as NaN/Infinity, which Python's (and the server's) parser reads
    payload = json.dumps({**event, "auth": {"v": 1, "ts": ts, "sig": "a"}})
    with pytest.raises(ClientError) as info:
        lambda_client.invoke(FunctionName="f", Payload=payload)
    error = info.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "not an integer number of seconds" in error["Error"]["Message"]


# --- the Lambda handler ----------------------------------------------------------------------


def test_the_lambda_handler_checks_the_secret_from_its_environment(
    monkeypatch, container, lambda_context, event
):
    from cloud_functions import handler

    monkeypatch.setenv(handler.SECRET_ENV, SECRET)
    refused = handler.handler(dict(event), lambda_context)
    assert refused["status"] == 401 and refused["error"]["type"] == "Unauthorized"
    assert "no 'auth' signature" in refused["error"]["message"]
    answered = handler.handler(signing.sign_event(SECRET, event), lambda_context)
    assert len(answered["answers"]) == 3
    # AND without the variable the handler leaves auth to IAM (unsigned events are served)
    monkeypatch.delenv(handler.SECRET_ENV)
    assert len(handler.handler(dict(event), lambda_context)["answers"]) == 3


@pytest.mark.parametrize("ts", [10**400, -(10**400), float("nan"), float("-inf"), False, "9" * 400],
                         ids=lambda ts: type(ts).__name__)
def test_the_lambda_handler_refuses_an_absurd_timestamp_as_a_handled_401(
    monkeypatch, container, lambda_context, event, ts
):
    from cloud_functions import handler

    monkeypatch.setenv(handler.SECRET_ENV, SECRET)
    refused = handler.handler({**event, "auth": {"v": 1, "ts": ts, "sig": "a"}}, lambda_context)
    assert refused["status"] == 401 and refused["error"]["type"] == "Unauthorized"
    assert "not an integer number of seconds" in refused["error"]["message"]


def test_an_unsigned_event_does_not_load_the_cloud_part(
    monkeypatch, container, lambda_context, event
):
    from cloud_functions import handler

    monkeypatch.setenv(handler.SECRET_ENV, SECRET)
    # WHEN unsigned events reach a fresh container (the cold start is still to come)
    for _ in range(3):
        refused = handler.handler(dict(event), lambda_context)
        assert refused["status"] == 401 and refused["cold_start"] is False
    # THEN the cloud part was never loaded for them
    assert not container.loaded
    # AND the first signed event is the one that pays the cold start
    first = handler.handler(signing.sign_event(SECRET, event), lambda_context)
    assert first["cold_start"] is True and container.loaded and len(first["answers"]) == 3


# --- exposure --------------------------------------------------------------------------------


@pytest.fixture()
def captured_serve(monkeypatch):
    import service_http.wsgi

    calls: list[dict] = []
    monkeypatch.setattr(service_http.wsgi, "serve", lambda app, **kw: calls.append(kw))
    monkeypatch.delenv("EDGELESSPART_TOKEN", raising=False)
    return calls


def test_serve_cloud_binds_to_loopback_by_default(tiny_bundle, captured_serve):
    assert main(["serve-cloud", str(tiny_bundle)]) == 0
    assert captured_serve[0]["host"] == "127.0.0.1" and captured_serve[0]["port"] == 9000


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "203.0.113.7"])
def test_serve_cloud_refuses_a_public_bind_without_a_token(tiny_bundle, captured_serve, capsys,
                                                          host):
    code = main(["serve-cloud", str(tiny_bundle), "--host", host])
    err = capsys.readouterr().err
    assert code == 2 and captured_serve == []
    assert f"serve-cloud refuses to listen on {host!r} without a token" in err


def test_serve_cloud_binds_publicly_with_a_token(tiny_bundle, captured_serve, monkeypatch):
    assert main(["serve-cloud", str(tiny_bundle), "--host", "0.0.0.0", "--token", "t"]) == 0
    monkeypatch.setenv("EDGELESSPART_TOKEN", "from-env")
    assert main(["serve-cloud", str(tiny_bundle), "--host", "0.0.0.0"]) == 0
    assert [c["host"] for c in captured_serve] == ["0.0.0.0", "0.0.0.0"]


def test_local_server_serve_refuses_a_public_bind_without_a_token(tiny_bundle):
    from cloud_functions.local_server import serve
    from edgelesspart.errors import ConfigError

    with pytest.raises(ConfigError, match="serve-cloud refuses to listen"):
        serve(tiny_bundle, host="0.0.0.0", token=None)


def test_stats_and_metrics_need_the_token_and_health_stays_open(server):
    # /v1/stats and /metrics count traffic: behind the token by default (review defect 5)
    for route in ("/v1/stats", "/metrics"):
        assert requests.get(server.url + route, timeout=TIMEOUT).status_code == 401, route
        assert requests.get(server.url + route, headers=BEARER, timeout=TIMEOUT).ok, route
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_public_routes_of_the_cloud_are_a_setting(tiny_bundle):
    from cloud_functions.local_server import create_app

    client = create_app(tiny_bundle, token=SECRET, public_routes="/healthz,/metrics").test_client()
    assert client.get("/metrics").status_code == 200
    assert client.get("/v1/stats").status_code == 401


def _stats(server) -> dict:
    return requests.get(f"{server.url}/v1/stats", headers=BEARER, timeout=TIMEOUT).json()
