"""Fuzzing the cloud part with generated malformed requests (hypothesis).

Two ways in, both on the local cloud server (``serve-cloud``'s app):

* ``POST /v1/continue``: corrupt or mismatched tensor frames, random bytes, unsupported content
  types, thresholds the runtime refuses. Each must get a 4xx JSON error with a message.
* the Lambda Invoke API: JSON events that are not valid requests (any JSON value, a bad
  ``tensor_b64``, a frame for another bundle, a bad threshold). As on AWS Lambda, a handled
  error is an HTTP 200 whose payload is ``{"error": {...}, "status": 4xx}`` without
  ``X-Amz-Function-Error`` (that header would mean the handler crashed); an invalid request at
  the API level (bad invocation type) is an HTTP 4xx with ``x-amzn-ErrorType``.

With a token (shared secret) configured, the auth inputs are fuzzed too: the
``X-EdgeLessPart-Timestamp`` / ``X-EdgeLessPart-Signature`` / ``Authorization`` headers of
``/v1/continue`` (401), a correctly signed body with a threshold outside the signature (400),
the ``auth`` field of an Invoke event (403 ``AccessDeniedException``) and of an event given to the
Lambda handler itself (a handled 401 error event, and the cloud part is never loaded for it).
Timestamps and signatures are ints of any size, floats with nan/inf, text, lists and objects.

Volume goes through Flask's test client; a subset goes over a real loopback socket, the Invoke
API through a real boto3 client. The count of cases is printed at the end (``-s``).
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import pytest
import requests
from fuzz_strategies import (
    SLOW_S,
    Cases,
    accepted,
    ascii_text,
    auth_fields,
    bearer_headers,
    frames,
    fuzz_settings,
    header_text,
    json_values,
    signature_headers,
    timestamp_headers,
    unparseable_json,
)
from hypothesis import given
from hypothesis import strategies as st

from edgelesspart.runtime import codecs, signing, wire
from edgelesspart.runtime.executor import check_threshold

pytestmark = pytest.mark.timeout(240)

TENSOR = "application/x-edgelesspart-tensor"
INVOKE = "/2015-03-31/functions/edgelesspart-cloud/invocations"
COUNTS: dict[str, int] = {}
CODES: Counter = Counter()
SECRET = "fuzz shared secret"


@pytest.fixture(scope="module")
def app(tiny_bundle):
    from cloud_functions.local_server import create_app

    return create_app(tiny_bundle)


@pytest.fixture(scope="module")
def cloud(app):
    return app.extensions["edgelesspart"].container.load()


@pytest.fixture(scope="module")
def boundary_shape(cloud):
    return tuple(int(d) for d in cloud.executors[0].input_spec.shape)


def timed(call):
    start = time.perf_counter()
    response = call()
    return response, time.perf_counter() - start


def post_continue(client, data, content_type=TENSOR, query=None):
    response, elapsed = timed(lambda: client.post("/v1/continue", data=data,
                                                  content_type=content_type, query_string=query))
    return response.status_code, response.get_data(), elapsed, response.content_type or ""


def check_handled(cases: Cases, status, headers, payload: bytes, elapsed: float) -> None:
    """A Lambda-style refusal: 200 + handled error payload with a 4xx status and a message."""
    cases.count += 1
    assert elapsed < SLOW_S, f"took {elapsed:.1f} s"
    assert status == 200 and "X-Amz-Function-Error" not in headers, (status, payload[:300])
    result = json.loads(payload)
    error = result["error"]
    assert 400 <= result["status"] < 500 and error["message"].strip() and error["type"], result
    cases.codes[f"invoke {result['status']} {error['type']}"] += 1


def still_serves(client, encoded) -> None:
    response = client.post("/v1/continue?threshold=2", data=encoded, content_type=TENSOR)
    assert response.status_code == 200 and len(response.json["answers"]) == 3
    assert client.get("/healthz").status_code == 200


def bad_cloud_threshold(value: str) -> bool:
    """Whether the cloud refuses ``value`` as a ``?threshold=`` query parameter."""
    try:
        number = float(value)
    except ValueError:
        return True
    return not accepted(check_threshold, number)


# --- POST /v1/continue through the test client -----------------------------------------------


def test_fuzz_continue_frames(app, cloud, boundary_shape, encoded):
    client, cases = app.test_client(), Cases("cloud continue frames", COUNTS, CODES)

    @fuzz_settings(300)
    @given(frames(cloud.bundle_id, boundary_shape))
    def fuzz(frame):
        cases.check(*post_continue(client, frame))

    fuzz()
    cases.done(250)
    still_serves(client, encoded)


def test_fuzz_continue_random_bytes_and_content_types(app, encoded):
    client, cases = app.test_client(), Cases("cloud continue bytes/types", COUNTS, CODES)
    media = st.sampled_from([TENSOR, "application/octet-stream", "application/json",
                             "text/plain", "image/png", ""])

    @fuzz_settings(150)
    @given(st.binary(max_size=1500) | st.binary(max_size=200).map(lambda b: wire.MAGIC + b),
           media)
    def fuzz(data, content_type):
        cases.check(*post_continue(client, data, content_type))

    fuzz()
    cases.done(120)
    still_serves(client, encoded)


def test_fuzz_continue_thresholds(app, encoded):
    client, cases = app.test_client(), Cases("cloud continue thresholds", COUNTS, CODES)
    values = (st.floats().map(repr) | ascii_text
              | st.sampled_from(["nan", "-1", "-inf", "", "0,5", "1e", "NaN"]))

    @fuzz_settings(100)
    @given(values.filter(bad_cloud_threshold))
    def fuzz(threshold):
        cases.check(*post_continue(client, encoded, query={"threshold": threshold}))

    fuzz()
    cases.done(80)
    still_serves(client, encoded)


# --- the Lambda Invoke API through the test client -------------------------------------------


@pytest.fixture(scope="module")
def events(cloud, boundary_shape, encoded):
    """JSON events that are not valid requests."""
    valid_b64 = base64.b64encode(encoded).decode()
    other_bundle = base64.b64encode(codecs.encode_tensor(
        codecs.decode_tensor(encoded)[0], meta={"bundle_id": "another-bundle"})).decode()
    bad_threshold = (st.floats() | st.text(max_size=6) | json_values).filter(
        lambda v: v is not None and not accepted(check_threshold, v))
    return st.one_of(
        json_values.filter(lambda v: not (isinstance(v, dict) and "tensor_b64" in v)),
        st.builds(lambda v: {"tensor_b64": v}, ascii_text | json_values),
        frames(cloud.bundle_id, boundary_shape).map(
            lambda f: {"tensor_b64": base64.b64encode(f).decode()}),
        st.builds(lambda t: {"tensor_b64": valid_b64, "threshold": t}, bad_threshold),
        st.builds(lambda t: {"tensor_b64": other_bundle, "threshold": t},
                  st.none() | st.floats(0, 1)),
    )


def test_fuzz_invoke_events(app, events, encoded):
    client, cases = app.test_client(), Cases("cloud invoke events", COUNTS, CODES)

    @fuzz_settings(300)
    @given(events)
    def fuzz(event):
        response, elapsed = timed(lambda: client.post(INVOKE, data=json.dumps(event)))
        check_handled(cases, response.status_code, response.headers, response.get_data(),
                      elapsed)

    fuzz()
    cases.done(250)
    still_serves(client, encoded)


def test_fuzz_invoke_api_requests(app, encoded):
    client, cases = app.test_client(), Cases("cloud invoke API", COUNTS, CODES)
    kinds = ascii_text.filter(lambda k: k not in ("RequestResponse", "Event", "DryRun", ""))

    @fuzz_settings(100)
    @given(kinds, st.binary(max_size=100))
    def fuzz(kind, data):
        response, elapsed = timed(lambda: client.post(
            INVOKE, data=data, headers={"X-Amz-Invocation-Type": kind}))
        cases.count += 1
        assert elapsed < SLOW_S and response.status_code == 400, response.get_data()[:200]
        assert response.headers["x-amzn-ErrorType"] == "InvalidParameterValueException"
        assert response.json["message"]
        CODES["invoke 400 InvalidParameterValueException"] += 1

    fuzz()
    cases.done(80)
    still_serves(client, encoded)


def test_a_threshold_beyond_float_range_is_a_handled_400(app, encoded):
    # a 500 (handler crash) the fuzzing found: float() overflowed on a huge JSON int
    tensor = base64.b64encode(encoded).decode()
    event = '{"tensor_b64": "' + tensor + '", "threshold": ' + "9" * 400 + "}"
    response = app.test_client().post(INVOKE, data=event)
    assert response.status_code == 200 and "X-Amz-Function-Error" not in response.headers
    assert response.json["status"] == 400 and "too large" in response.json["error"]["message"]


def test_unparseable_invoke_payloads_are_unmarshal_errors_as_on_lambda(app, encoded):
    """Well-formed JSON that Python's parser refuses (too deep, too many digits) is answered
    the way Lambda's Python runtime answers any payload it cannot parse: HTTP 200 with
    ``X-Amz-Function-Error: Unhandled`` and ``Runtime.UnmarshalError``. Not a crash, not a 5xx;
    counted apart from the 4xx cases."""
    client = app.test_client()
    count = 0

    @fuzz_settings(40)
    @given(unparseable_json())
    def fuzz(payload):
        nonlocal count
        response, elapsed = timed(lambda: client.post(INVOKE, data=payload))
        count += 1
        assert elapsed < SLOW_S and response.status_code == 200
        assert response.headers["X-Amz-Function-Error"] == "Unhandled"
        assert response.json["errorType"] == "Runtime.UnmarshalError"
        assert response.json["errorMessage"].startswith("Unable to unmarshal input")

    fuzz()
    assert count >= 30
    still_serves(client, encoded)


# --- with a token: the auth inputs -----------------------------------------------------------


@pytest.fixture(scope="module")
def signed_app(cloud):
    """The local cloud server with a token, sharing the already loaded cloud part."""
    from cloud_functions.local_server import create_app

    return create_app(cloud=cloud, token=SECRET)


def auth_headers():
    """Any mix of the three auth headers (each may be absent), none of them valid."""
    return st.fixed_dictionaries({}, optional={
        signing.TIMESTAMP_HEADER: timestamp_headers(),
        signing.SIGNATURE_HEADER: signature_headers(),
        "Authorization": bearer_headers(SECRET),
    })


def check_refused(cases: Cases, response, elapsed: float, status: int) -> None:
    cases.check(response.status_code, response.get_data(), elapsed, response.content_type or "")
    assert response.status_code == status, response.get_data()[:300]


def check_access_denied(cases: Cases, status, headers, payload: bytes, elapsed: float) -> None:
    """The local Invoke API's refusal of an unsigned event: 403 AccessDeniedException."""
    cases.count += 1
    assert elapsed < SLOW_S, f"took {elapsed:.1f} s"
    assert status == 403 and headers["x-amzn-ErrorType"] == "AccessDeniedException", (
        status, payload[:300])
    assert json.loads(payload)["message"].strip()
    cases.codes["invoke 403 AccessDeniedException"] += 1


def test_fuzz_continue_auth_headers(signed_app, encoded):
    client, cases = signed_app.test_client(), Cases("cloud continue auth", COUNTS, CODES)

    @fuzz_settings(250)
    @given(auth_headers())
    def fuzz(headers):
        response, elapsed = timed(lambda: client.post(
            "/v1/continue", data=encoded, content_type=TENSOR, headers=headers))
        check_refused(cases, response, elapsed, 401)

    fuzz()
    cases.done(200)
    signed = client.post("/v1/continue", data=encoded, content_type=TENSOR,
                         headers=signing.sign_body(SECRET, encoded))
    assert signed.status_code == 200 and len(signed.json["answers"]) == 3


def test_fuzz_signed_continue_with_an_unsigned_threshold(signed_app, encoded):
    client, cases = signed_app.test_client(), Cases("cloud continue unsigned threshold",
                                                   COUNTS, CODES)

    @fuzz_settings(60)
    @given(st.sampled_from(["query", "header"]), header_text)
    def fuzz(channel, value):
        headers = signing.sign_body(SECRET, encoded)
        query = {"threshold": value} if channel == "query" else None
        if channel == "header":
            headers["X-EdgeLessPart-Threshold"] = value
        response, elapsed = timed(lambda: client.post(
            "/v1/continue", data=encoded, content_type=TENSOR, headers=headers,
            query_string=query))
        check_refused(cases, response, elapsed, 400)
        assert response.json["error"]["code"] == "unsigned_threshold"

    fuzz()
    cases.done(50)


def test_fuzz_invoke_auth_fields(signed_app, event):
    client, cases = signed_app.test_client(), Cases("cloud invoke auth", COUNTS, CODES)

    @fuzz_settings(200)
    @given(auth_fields(), st.sampled_from(["RequestResponse", "Event", "DryRun"]))
    def fuzz(auth, kind):
        payload = json.dumps({**event, "auth": auth}, default=str)
        response, elapsed = timed(lambda: client.post(
            INVOKE, data=payload, headers={"X-Amz-Invocation-Type": kind}))
        check_access_denied(cases, response.status_code, response.headers, response.get_data(),
                            elapsed)

    fuzz()
    cases.done(160)
    signed = client.post(INVOKE, data=json.dumps(signing.sign_event(SECRET, event)))
    assert signed.status_code == 200 and len(signed.json["answers"]) == 3


def test_fuzz_lambda_handler_auth_fields(tiny_bundle, event, lambda_context):
    from cloud_functions.handler import Container, invoke

    # a fresh container: refused events must never pay for (or trigger) the cold load
    container, cases = Container(tiny_bundle), Cases("lambda handler auth", COUNTS, CODES)
    not_events = json_values.filter(lambda v: not isinstance(v, dict))

    @fuzz_settings(150)
    @given(auth_fields().map(lambda auth: {**event, "auth": auth}) | not_events)
    def fuzz(incoming):
        result, elapsed = timed(lambda: invoke(container, incoming, lambda_context, SECRET))
        check_handled(cases, 200, {}, json.dumps(result, default=str).encode(), elapsed)
        assert result["status"] == 401 and result["cold_start"] is False

    fuzz()
    cases.done(120)
    assert not container.loaded
    answered = invoke(container, signing.sign_event(SECRET, event), lambda_context, SECRET)
    assert answered["cold_start"] is True and len(answered["answers"]) == 3


# --- over a real socket (a subset): requests and boto3 ---------------------------------------


def test_fuzz_over_a_real_socket(app, cloud, boundary_shape, events, encoded):
    import boto3
    from botocore.config import Config

    from service_http.wsgi import BackgroundServer

    cases = Cases("cloud real socket", COUNTS, CODES)
    with BackgroundServer(app, threads=4) as server:
        lam = boto3.client(
            "lambda", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(retries={"max_attempts": 0}, read_timeout=SLOW_S, connect_timeout=2),
        )

        @fuzz_settings(100)
        @given(frames(cloud.bundle_id, boundary_shape))
        def fuzz_continue(frame):
            start = time.perf_counter()
            reply = requests.post(f"{server.url}/v1/continue", data=frame,
                                  headers={"Content-Type": TENSOR}, timeout=SLOW_S)
            cases.check(reply.status_code, reply.content, time.perf_counter() - start,
                        reply.headers.get("Content-Type", ""))

        @fuzz_settings(100)
        @given(events)
        def fuzz_invoke(event):
            start = time.perf_counter()
            response = lam.invoke(FunctionName="edgelesspart-cloud", Payload=json.dumps(event))
            headers = response["ResponseMetadata"]["HTTPHeaders"]
            headers = {"X-Amz-Function-Error": 1} if "FunctionError" in response else headers
            check_handled(cases, response["StatusCode"], headers, response["Payload"].read(),
                          time.perf_counter() - start)

        fuzz_continue()
        fuzz_invoke()
        reply = requests.post(f"{server.url}/v1/continue?threshold=2", data=encoded,
                              headers={"Content-Type": TENSOR}, timeout=SLOW_S)
        assert reply.status_code == 200
    cases.done(180)


def on_the_wire(headers: dict[str, str]) -> dict[str, str]:
    """Header values as an HTTP client sends them (no surrounding whitespace; empty dropped)."""
    return {k: v.strip() for k, v in headers.items() if v.strip()}


def test_fuzz_auth_over_a_real_socket(signed_app, event, encoded):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from service_http.wsgi import BackgroundServer

    cases = Cases("cloud auth real socket", COUNTS, CODES)
    with BackgroundServer(signed_app, threads=4) as server:
        lam = boto3.client(
            "lambda", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(retries={"max_attempts": 0}, read_timeout=SLOW_S, connect_timeout=2),
        )

        @fuzz_settings(50)
        @given(auth_headers().map(on_the_wire))
        def fuzz_continue(headers):
            start = time.perf_counter()
            reply = requests.post(f"{server.url}/v1/continue", data=encoded, timeout=SLOW_S,
                                  headers={"Content-Type": TENSOR, **headers})
            cases.check(reply.status_code, reply.content, time.perf_counter() - start,
                        reply.headers.get("Content-Type", ""))
            assert reply.status_code == 401

        @fuzz_settings(50)
        @given(auth_fields())
        def fuzz_invoke(auth):
            start = time.perf_counter()
            with pytest.raises(ClientError) as info:
                lam.invoke(FunctionName="edgelesspart-cloud",
                           Payload=json.dumps({**event, "auth": auth}, default=str))
            error = info.value.response
            check_access_denied(
                cases, error["ResponseMetadata"]["HTTPStatusCode"],
                {"x-amzn-ErrorType": error["Error"]["Code"]},
                json.dumps({"message": error["Error"]["Message"]}).encode(),
                time.perf_counter() - start)

        fuzz_continue()
        fuzz_invoke()
        signed = {"Content-Type": TENSOR, **signing.sign_body(SECRET, encoded)}
        reply = requests.post(f"{server.url}/v1/continue", data=encoded, timeout=SLOW_S,
                              headers=signed)
        assert reply.status_code == 200
    cases.done(90)


def test_fuzz_total_is_reported(capsys):
    total = sum(COUNTS.values())
    with capsys.disabled():
        print(f"\ncloud fuzz: {total} malformed requests, all refused with 4xx: {COUNTS}")
        print(f"cloud fuzz answers by status and code: {dict(CODES.most_common())}")
    if total:  # when the whole module ran
        assert total >= 1000
