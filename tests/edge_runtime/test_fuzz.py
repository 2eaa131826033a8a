"""Fuzzing ``POST /v1/infer`` with generated malformed requests (hypothesis).

Every generated request is malformed by construction: a corrupt or mismatched tensor frame,
random bytes, JSON that is not a valid input, an undecodable or oversized image, an unsupported
content type, a threshold outside the allowed range, or another bundle's id. Each one must get a
4xx JSON error with a message, quickly (no hang), and the service must keep serving.

With a bearer token configured, the ``Authorization`` header is fuzzed too (with the cloud
signing headers ``X-EdgeLessPart-Timestamp`` / ``X-EdgeLessPart-Signature`` added, which the
edge must not take for credentials): every such request is a 401 on ``/v1/infer`` and
``/v1/bundle``.

Volume goes through Flask's test client (about 1,300 cases in a few seconds); a subset of the
same strategies then goes over a real loopback socket (waitress) with a client timeout.
The count of cases is printed at the end of the run (``-s``) and asserted.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest
import requests
from fuzz_strategies import (
    SLOW_S,
    Cases,
    accepted,
    ascii_text,
    bad_images,
    bad_thresholds,
    bearer_headers,
    frames,
    fuzz_settings,
    json_bodies,
    json_values,
    signature_headers,
    timestamp_headers,
)
from hypothesis import given
from hypothesis import strategies as st

from edgelesspart.runtime import codecs, signing, wire

pytestmark = pytest.mark.timeout(240)

TENSOR = "application/x-edgelesspart-tensor"
SUPPORTED = {TENSOR, "application/octet-stream", "application/json", "image/png", "image/jpeg"}
COUNTS: dict[str, int] = {}
CODES: Counter = Counter()
TOKEN = "edge fuzz token"


@pytest.fixture(scope="module")
def app(tiny_bundle, cloud_part):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig
    from edgelesspart.runtime.offload import InProcessOffloader

    return create_app(tiny_bundle, EdgeConfig(threshold=0.8), offloader=InProcessOffloader(
        cloud_part))


@pytest.fixture(scope="module")
def service(app):
    return app.extensions["edgelesspart"]


@pytest.fixture(scope="module")
def spec_shape(service):
    return tuple(int(d) for d in service.bundle.manifest.input.tensor.shape)


def post(client, **kwargs):
    start = time.perf_counter()
    response = client.post("/v1/infer", **kwargs)
    return response.status_code, response.get_data(), time.perf_counter() - start, (
        response.content_type or "")


def still_serves(client, digits) -> None:
    response = client.post("/v1/infer?threshold=0", json={"inputs": digits[:1].tolist()})
    assert response.status_code == 200 and response.json["answers"][0]["exit"] == "exit_1"
    assert client.get("/healthz").status_code == 200


# --- through the test client (volume) --------------------------------------------------------


def test_fuzz_tensor_frames(app, service, spec_shape, digits):
    client, cases = app.test_client(), Cases("edge tensor frames", COUNTS, CODES)

    @fuzz_settings(300)
    @given(frames(service.bundle.bundle_id, spec_shape), st.sampled_from(sorted(SUPPORTED)[:2]))
    def fuzz(frame, media):
        cases.check(*post(client, data=frame, content_type=media))

    fuzz()
    cases.done(250)
    still_serves(client, digits)


def test_fuzz_random_bytes_as_tensors(app, digits):
    client, cases = app.test_client(), Cases("edge random bytes", COUNTS, CODES)

    @fuzz_settings(100)
    @given(st.binary(max_size=2000) | st.binary(max_size=200).map(lambda b: wire.MAGIC + b))
    def fuzz(data):
        cases.check(*post(client, data=data, content_type=TENSOR))

    fuzz()
    cases.done(80)
    still_serves(client, digits)


def test_fuzz_json_bodies(app, digits):
    client, cases = app.test_client(), Cases("edge JSON bodies", COUNTS, CODES)

    @fuzz_settings(250)
    @given(json_bodies())
    def fuzz(body):
        cases.check(*post(client, data=body, content_type="application/json"))

    fuzz()
    cases.done(200)
    still_serves(client, digits)


def test_fuzz_images(app, digits, digit_png):
    client, cases = app.test_client(), Cases("edge images", COUNTS, CODES)

    @fuzz_settings(120)
    @given(bad_images(digit_png))
    def fuzz(image):
        data, media = image
        cases.check(*post(client, data=data, content_type=media))

    fuzz()
    cases.done(100)
    still_serves(client, digits)


def test_fuzz_content_types(app, digits):
    client, cases = app.test_client(), Cases("edge content types", COUNTS, CODES)
    media_types = st.sampled_from(["text/plain", "application/xml", "image/gif", "", "text/json",
                                   "application/x-www-form-urlencoded", "multipart/form-data",
                                   "application/jsonx"]) | st.from_regex(
        r"\A[a-z]{1,10}/[a-z0-9.+-]{1,15}\Z")

    @fuzz_settings(120)
    @given(media_types.filter(lambda m: m not in SUPPORTED), st.binary(min_size=1, max_size=200))
    def fuzz(media, data):
        cases.check(*post(client, data=data, content_type=media))

    fuzz()
    cases.done(100)
    still_serves(client, digits)


def test_fuzz_threshold_overrides(app, service, digits):
    client, cases = app.test_client(), Cases("edge thresholds", COUNTS, CODES)
    row = digits[:1].tolist()
    check = service.config.check_threshold

    @fuzz_settings(150)
    @given(st.sampled_from(["query", "header", "json"]), st.data())
    def fuzz(channel, data):
        if channel == "json":
            value = data.draw(bad_thresholds(check) | json_values.filter(
                lambda v: not accepted(check, v)))
            result = post(client, json={"inputs": row, "threshold": value})
        else:
            value = data.draw(bad_thresholds(check).map(str).filter(
                lambda v: not accepted(check, v)))
            if channel == "query":
                result = post(client, json={"inputs": row}, query_string={"threshold": value})
            else:
                result = post(client, json={"inputs": row},
                              headers={"X-EdgeLessPart-Threshold": value})
        cases.check(*result)

    fuzz()
    cases.done(120)
    still_serves(client, digits)


def test_fuzz_bundle_ids(app, service, digits):
    client, cases = app.test_client(), Cases("edge bundle ids", COUNTS, CODES)
    real = service.bundle.bundle_id
    row = digits[:1]

    @fuzz_settings(120)
    @given(st.sampled_from(["header", "json", "meta"]), st.data())
    def fuzz(channel, data):
        if channel == "header":
            claim = data.draw(ascii_text.filter(lambda v: v.strip() != real))
            result = post(client, json={"inputs": row.tolist()},
                          headers={"X-EdgeLessPart-Bundle": claim})
        else:
            claim = data.draw(json_values.filter(lambda v: v is not None and str(v) != real))
            if channel == "json":
                result = post(client, json={"inputs": row.tolist(), "bundle_id": claim})
            else:
                frame = codecs.encode_tensor(row, meta={"bundle_id": claim})
                result = post(client, data=frame, content_type=TENSOR)
        cases.check(*result)
        assert result[0] == 409

    fuzz()
    cases.done(100)
    still_serves(client, digits)


# --- with a bearer token: the auth headers ---------------------------------------------------


@pytest.fixture(scope="module")
def token_app(tiny_bundle, cloud_part):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig
    from edgelesspart.runtime.offload import InProcessOffloader

    return create_app(tiny_bundle, EdgeConfig(threshold=0.8, token=TOKEN),
                      offloader=InProcessOffloader(cloud_part))


def auth_headers():
    """A wrong or absent ``Authorization``, maybe with cloud signing headers beside it."""
    return st.fixed_dictionaries({}, optional={
        "Authorization": bearer_headers(TOKEN),
        signing.TIMESTAMP_HEADER: timestamp_headers(),
        signing.SIGNATURE_HEADER: signature_headers(),
    })


def test_fuzz_bearer_token(token_app, digits):
    client, cases = token_app.test_client(), Cases("edge auth headers", COUNTS, CODES)
    body = {"inputs": digits[:1].tolist()}

    @fuzz_settings(150)
    @given(auth_headers(), st.sampled_from(["infer", "bundle"]))
    def fuzz(headers, route):
        start = time.perf_counter()
        if route == "infer":
            response = client.post("/v1/infer", json=body, headers=headers)
        else:
            response = client.get("/v1/bundle", headers=headers)
        cases.check(response.status_code, response.get_data(), time.perf_counter() - start,
                    response.content_type or "")
        assert response.status_code == 401

    fuzz()
    cases.done(120)
    good = client.post("/v1/infer", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200


# --- regressions: 500s the fuzzing found (fixed) ---------------------------------------------

@pytest.mark.parametrize(
    ("body", "status", "pattern"),
    [
        (b'{"inputs": [' + b"9" * 400 + b"]}", 400, "int too large to convert to float"),
        (b'{"inputs": [[0.5]], "threshold": ' + b"9" * 400 + b"}", 400, "got a huge int"),
        (b'{"inputs": [' + b"9" * 5000 + b"]}", 400, "not valid JSON.*4300 digits"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON.*recursion"),
        (b'{"inputs": [[[3.5e38, 1.0]]]}', 422, "beyond the float32 range"),
    ],
    ids=["huge-int-input", "huge-int-threshold", "5000-digit-literal", "deep-nesting",
         "beyond-float32"],
)
def test_extreme_json_is_a_4xx_not_a_500(app, body, status, pattern):
    code, data, elapsed, media = post(app.test_client(), data=body,
                                      content_type="application/json")
    assert code == status, data[:200]
    assert re.search(pattern, json.loads(data)["error"]["message"])


# --- over a real socket (a subset) -----------------------------------------------------------


def test_fuzz_over_a_real_socket(app, service, spec_shape, digits, digit_png):
    from edge_runtime.wsgi import BackgroundServer

    cases = Cases("edge real socket", COUNTS, CODES)
    with BackgroundServer(app, threads=4) as server:
        url = f"{server.url}/v1/infer"

        def send(data, media):
            start = time.perf_counter()
            reply = requests.post(url, data=data, headers={"Content-Type": media}, timeout=SLOW_S)
            cases.check(reply.status_code, reply.content, time.perf_counter() - start,
                        reply.headers.get("Content-Type", ""))

        @fuzz_settings(200)
        @given(st.one_of(
            frames(service.bundle.bundle_id, spec_shape).map(lambda f: (f, TENSOR)),
            json_bodies().map(lambda b: (b, "application/json")),
            bad_images(digit_png),
            st.binary(min_size=1, max_size=100).map(lambda b: (b, "text/plain")),
        ))
        def fuzz(request):
            send(*request)

        fuzz()
        reply = requests.post(url + "?threshold=0", json={"inputs": digits[:1].tolist()},
                              timeout=SLOW_S)
        assert reply.status_code == 200
    cases.done(150)


def test_fuzz_bearer_token_over_a_real_socket(token_app, digits):
    from edge_runtime.wsgi import BackgroundServer

    cases = Cases("edge auth real socket", COUNTS, CODES)
    body = {"inputs": digits[:1].tolist()}
    with BackgroundServer(token_app, threads=4) as server:

        @fuzz_settings(40)
        @given(auth_headers().map(lambda h: {k: v.strip() for k, v in h.items() if v.strip()}))
        def fuzz(headers):
            start = time.perf_counter()
            reply = requests.post(f"{server.url}/v1/infer", json=body, headers=headers,
                                  timeout=SLOW_S)
            cases.check(reply.status_code, reply.content, time.perf_counter() - start,
                        reply.headers.get("Content-Type", ""))
            assert reply.status_code == 401

        fuzz()
        good = requests.post(f"{server.url}/v1/infer", json=body, timeout=SLOW_S,
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200
    cases.done(30)


def test_fuzz_total_is_reported(capsys):
    total = sum(COUNTS.values())
    with capsys.disabled():
        print(f"\nedge fuzz: {total} malformed requests, all 4xx JSON: {COUNTS}")
        print(f"edge fuzz answers by status and code: {dict(CODES.most_common())}")
    if total:  # when the whole module ran
        assert total >= 1000
