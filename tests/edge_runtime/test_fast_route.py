"""The edge app's fast path for tensor requests (service_http.fastroute) answers as Flask would."""

from __future__ import annotations

import numpy as np

from edge_runtime.config import EdgeConfig

TENSOR = "application/x-edgelesspart-tensor"


def _app(bundle, **config):
    from edge_runtime import create_app

    return create_app(bundle, EdgeConfig(**config))


def _frame(x):
    from edgelesspart.runtime.codecs import encode_tensor

    return encode_tensor(np.ascontiguousarray(x, np.float32), "raw")


def _stable(body):
    """A 200 body without what differs per request (the id and the measured times)."""
    body = {k: v for k, v in body.items() if k not in ("request_id", "timings")}
    body["answers"] = [{k: v for k, v in a.items() if k != "timings"} for a in body["answers"]]
    return body


def test_tensor_requests_take_the_fast_path_and_answer_what_the_flask_route_answers(
    tiny_bundle, digits
):
    # GIVEN an edge app (edge only) and three rows of input
    app = _app(tiny_bundle, threshold=0.8)
    fast = app.wsgi_app
    client = app.test_client()
    # WHEN the rows are posted as a tensor frame (fast path) and as JSON (the Flask route)
    quick = client.post("/v1/infer", data=_frame(digits[:3]), content_type=TENSOR)
    served = fast.served
    slow = client.post("/v1/infer", json={"inputs": digits[:3].tolist()})
    # THEN only the tensor request was answered by the fast path, with the same answers
    assert served == 1 and fast.served == 1
    assert quick.status_code == slow.status_code == 200
    assert quick.mimetype == "application/json"
    assert _stable(quick.json) == _stable(slow.json)
    assert quick.get_data(as_text=True).endswith("}\n")  # jsonify's bytes: compact, newline
    # AND both were counted under the route, as the after_request hook counts them
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'edgelesspart_requests_total{route="/v1/infer",status="200"} 2' in metrics


def test_fast_path_errors_are_the_app_handlers_errors(tiny_bundle, digits):
    # GIVEN a token-guarded edge app
    app = _app(tiny_bundle, token="s3cret")
    client = app.test_client()
    auth = {"Authorization": "Bearer s3cret"}
    bad = digits[:2].astype(np.float32)
    bad[1, 0, 0, 0] = np.nan
    # WHEN a NaN row comes in a tensor frame (decoded fine, refused by the executor)
    nan = client.post("/v1/infer", data=_frame(bad), content_type=TENSOR, headers=auth)
    # THEN it is the 422 the Flask handlers render, answered by the fast path
    assert nan.status_code == 422 and nan.json["error"]["code"] == "invalid_input"
    assert "sample(s) [1]" in nan.json["error"]["message"]
    assert app.wsgi_app.served == 1
    # WHEN the token is missing, the threshold header is bad or the bundle id is another's
    cases = [
        ({}, 401, "unauthorized"),
        ({**auth, "X-EdgeLessPart-Threshold": "2.5"}, 400, "bad_threshold"),
        ({**auth, "X-EdgeLessPart-Bundle": "other"}, 409, "bundle_mismatch"),
    ]
    for headers, status, code in cases:
        response = client.post(
            "/v1/infer", data=_frame(digits[:1]), content_type=TENSOR, headers=headers
        )
        # THEN Flask answers them (the fast path hands them on untouched), as before
        assert response.status_code == status and response.json["error"]["code"] == code
    assert app.wsgi_app.served == 1


def test_fast_path_answers_429_with_retry_after_when_admission_is_full(tiny_bundle, digits):
    # GIVEN an edge app with one admission slot, no waiting room, and the slot taken
    app = _app(tiny_bundle, max_inflight=1, max_queue=0)
    admission = app.extensions["edgelesspart.admission"]
    admission.enter()
    try:
        # WHEN a well-formed tensor request comes in
        response = app.test_client().post("/v1/infer", data=_frame(digits[:1]), content_type=TENSOR)
    finally:
        admission.leave()
    # THEN the fast path refuses it as the Flask hook would: 429, Retry-After, JSON error
    assert response.status_code == 429 and response.headers.get("Retry-After")
    assert response.json["error"]["code"] == "too_many_requests"
    assert app.wsgi_app.served == 1
    # AND the slot it never took is not given back twice: the next request is answered
    ok = app.test_client().post("/v1/infer", data=_frame(digits[:1]), content_type=TENSOR)
    assert ok.status_code == 200 and admission.running == 0


def test_a_request_after_close_is_a_503_on_both_paths_and_leaves_no_admission_slot(
    tiny_bundle, digits
):
    # GIVEN a batching edge app whose service was closed (shutting down)
    app = _app(tiny_bundle, batch_max_rows=8)
    app.extensions["edgelesspart"].close()
    client = app.test_client()
    # WHEN a tensor frame (fast path) and a JSON body (Flask route) come in
    quick = client.post("/v1/infer", data=_frame(digits[:1]), content_type=TENSOR)
    slow = client.post("/v1/infer", json={"inputs": digits[:1].tolist()})
    # THEN both are 503 "stopping" with Retry-After (was 400 bad_parameter: not the caller's
    # fault, and a 4xx told an edge offloading to this cloud that its request was wrong)
    for response in (quick, slow):
        assert response.status_code == 503, response.json
        assert response.json["error"]["code"] == "stopping"
        assert response.headers["Retry-After"] == "1"
    assert app.wsgi_app.served == 1
    # AND neither kept its admission slot
    assert app.extensions["edgelesspart.admission"].running == 0


def test_a_bad_request_among_batched_ones_fails_alone(tiny_bundle, digits):
    import threading

    # GIVEN a batching edge app with a wide window, and one NaN request among four good ones
    app = _app(tiny_bundle, batch_max_rows=32, batch_delay_us=30_000, max_inflight=8,
               queue_timeout_s=60.0)
    plain = _app(tiny_bundle).test_client()
    bad = digits[4:5].astype(np.float32)
    bad[0, 0, 0, 0] = np.nan
    bodies = [digits[k : k + 1] for k in range(4)] + [bad]
    got: list = [None] * len(bodies)

    def call(k):
        got[k] = app.test_client().post("/v1/infer", data=_frame(bodies[k]), content_type=TENSOR)

    # WHEN they arrive together
    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # THEN the NaN request alone is a 422, and each good one gets its own row's answer
    assert got[4].status_code == 422 and got[4].json["error"]["code"] == "invalid_input"
    for k in range(4):
        ref = plain.post("/v1/infer", data=_frame(bodies[k]), content_type=TENSOR)
        assert got[k].status_code == 200
        assert _stable(got[k].json)["answers"] == _stable(ref.json)["answers"]
    # AND only the four good requests reached the batcher, no admission slot is left taken
    assert app.extensions["edgelesspart"].batcher.stats()["requests"] == 4
    assert app.extensions["edgelesspart.admission"].running == 0
