"""The event-loop server (service_http.aserver) and the edge's hot route, over loopback HTTP."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import requests

from edge_runtime.config import EdgeConfig

TENSOR = "application/x-edgelesspart-tensor"


def _frame(x):
    from edgelesspart.runtime.codecs import encode_tensor

    return encode_tensor(np.ascontiguousarray(x, np.float32), "raw")


def _stable(body):
    """A 200 body without what differs per request (the id and the measured times)."""
    body = {k: v for k, v in body.items() if k not in ("request_id", "timings")}
    body["answers"] = [{k: v for k, v in a.items() if k != "timings"} for a in body["answers"]]
    return body


@pytest.fixture
def edge(tiny_bundle):
    """An edge app with default flags, served by the event-loop server on a free port."""
    from edge_runtime import create_app
    from edge_runtime.fastpath import edge_server

    app = create_app(tiny_bundle, EdgeConfig(threshold=0.8))
    with edge_server(app) as server:
        yield app, server
    app.extensions["edgelesspart"].close()


def test_tensor_and_png_requests_answer_what_the_flask_route_answers(edge, digits, digit_png):
    # GIVEN the edge served by the event-loop server (default flags)
    app, server = edge
    client = app.test_client()
    # WHEN one row goes as a tensor frame and as a PNG over loopback, and as JSON through Flask
    tensor = requests.post(server.url + "/v1/infer", data=_frame(digits[:1]),
                           headers={"Content-Type": TENSOR}, timeout=10)  # fmt: skip
    png = requests.post(server.url + "/v1/infer", data=digit_png,
                        headers={"Content-Type": "image/png"}, timeout=10)  # fmt: skip
    flask = client.post("/v1/infer", json={"inputs": digits[:1].tolist()})
    # THEN all three give the same answer, and the hot route served the two loopback requests
    assert tensor.status_code == png.status_code == flask.status_code == 200
    assert _stable(tensor.json()) == _stable(png.json()) == _stable(flask.json)
    # AND they were counted under the route like Flask's hooks count
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert 'edgelesspart_requests_total{route="/v1/infer",status="200"} 3' in metrics


def test_other_routes_and_refusals_are_the_flask_apps(edge, digits):
    # GIVEN the served edge
    _, server = edge
    # WHEN probes, a JSON body, an unknown media type, a NaN tensor and an unknown route come
    health = requests.get(server.url + "/healthz", timeout=10)
    as_json = requests.post(server.url + "/v1/infer", json={"inputs": digits[:2].tolist()},
                            timeout=10)  # fmt: skip
    media = requests.post(server.url + "/v1/infer", data=b"abc",
                          headers={"Content-Type": "text/plain"}, timeout=10)  # fmt: skip
    bad = digits[:1].copy()
    bad[0, 0, 0, 0] = np.nan
    nan = requests.post(server.url + "/v1/infer", data=_frame(bad),
                        headers={"Content-Type": TENSOR}, timeout=10)  # fmt: skip
    missing = requests.get(server.url + "/nope", timeout=10)
    # THEN each is answered as the Flask app answers it, as JSON
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert as_json.status_code == 200 and as_json.json()["rows"] == 2
    assert media.status_code == 415 and media.json()["error"]["code"] == "unsupported_media_type"
    assert nan.status_code == 422 and "NaN" in nan.json()["error"]["message"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_token_guarded_edge_refuses_on_the_hot_route_too(tiny_bundle, digits):
    from edge_runtime import create_app
    from edge_runtime.fastpath import edge_server

    # GIVEN a token-guarded edge on the event-loop server
    app = create_app(tiny_bundle, EdgeConfig(threshold=0.8, token="s3cret"))
    with edge_server(app) as server:
        url, body = server.url + "/v1/infer", _frame(digits[:1])
        # WHEN a tensor comes without, and with, the token
        anonymous = requests.post(url, data=body, headers={"Content-Type": TENSOR}, timeout=10)
        signed = requests.post(url, data=body, timeout=10,
                               headers={"Content-Type": TENSOR,
                                        "Authorization": "Bearer s3cret"})  # fmt: skip
    app.extensions["edgelesspart"].close()
    # THEN only the signed one is answered
    assert anonymous.status_code == 401 and signed.status_code == 200


def test_sixteen_concurrent_clients_get_no_429_with_default_flags(edge, digits):
    # GIVEN the edge with default admission (a bounded queue with deadlines, not 4 + 8 slots)
    _, server = edge
    statuses: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with requests.Session() as session:
            for i in range(12):
                row = digits[(k + i) % len(digits)][None]
                r = session.post(server.url + "/v1/infer", data=_frame(row),
                                 headers={"Content-Type": TENSOR}, timeout=30)  # fmt: skip
                with lock:
                    statuses.append(r.status_code)

    # WHEN 16 keep-alive clients post back to back
    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN every request is answered 200, none refused
    assert statuses.count(200) == 16 * 12


def test_a_request_that_cannot_start_within_its_deadline_is_a_429(tiny_bundle, digits):
    from edge_runtime import create_app
    from edge_runtime.fastpath import edge_server

    # GIVEN an edge whose batches are slow (each run sleeps 0.3 s) and whose deadline is 0.1 s
    app = create_app(tiny_bundle, EdgeConfig(threshold=0.8, queue_timeout_s=0.1,
                                             batch_max_rows=1))  # fmt: skip
    service = app.extensions["edgelesspart"]
    run = service.batcher._run

    def slow(x, threshold):
        time.sleep(0.3)
        return run(x, threshold)

    service.batcher._run = slow
    results: list[requests.Response] = []
    with edge_server(app) as server:

        def post() -> None:
            results.append(requests.post(server.url + "/v1/infer", data=_frame(digits[:1]),
                                         headers={"Content-Type": TENSOR}, timeout=30))  # fmt: skip

        # WHEN three requests arrive together (one row per batch: the last waits 0.6 s)
        threads = [threading.Thread(target=post) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    service.close()
    # THEN the first is answered, and a request that waited past its deadline got 429
    codes = sorted(r.status_code for r in results)
    assert codes[0] == 200 and codes[-1] == 429
    refused = next(r for r in results if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert "deadline" in refused.json()["error"]["message"]


def _raw_exchange(url: str, data: bytes, responses: int) -> list[bytes]:
    """Send raw bytes on one connection; return the raw responses (Content-Length framed)."""
    host, port = url.removeprefix("http://").split(":")
    out = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        buf = b""
        while len(out) < responses:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\r\n\r\n" in buf:
                head, rest = buf.split(b"\r\n\r\n", 1)
                if head.startswith(b"HTTP/1.1 100"):  # an interim 100 Continue: no body
                    buf = rest
                    continue
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    break
                out.append(head + b"\r\n\r\n" + rest[:length])
                buf = rest[length:]
    return out


def test_pipelined_chunked_and_expect_continue_requests(edge, digits):
    # GIVEN the served edge and one tensor frame
    _, server = edge
    body = _frame(digits[:1])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                       for part in (body[:100], body[100:])) + b"0\r\n\r\n"  # fmt: skip
    head = "POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: " + TENSOR + "\r\n"
    # WHEN a plain, a chunked and an Expect: 100-continue request are pipelined on one connection
    data = (
        (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        + (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked
        + (head + f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    )  # fmt: skip
    replies = _raw_exchange(server.url, data, 3)
    # THEN all three are answered 200, in order
    assert len(replies) == 3
    assert all(r.startswith(b"HTTP/1.1 200") for r in replies)


def test_malformed_and_oversized_requests_are_refused(edge):
    # GIVEN the served edge
    _, server = edge
    # WHEN a bad request line, both framing headers, and a body over twice the limit arrive
    bad_line = _raw_exchange(server.url, b"GARBAGE\r\n\r\n", 1)
    smuggle = _raw_exchange(server.url, b"POST /v1/infer HTTP/1.1\r\nContent-Length: 3\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n", 1)  # fmt: skip
    huge = _raw_exchange(server.url, b"POST /v1/infer HTTP/1.1\r\nContent-Length: 999999999"
                         b"\r\n\r\n", 1)  # fmt: skip
    # THEN each is refused with the right status and the connection closed
    assert bad_line[0].startswith(b"HTTP/1.1 400") and b"Connection: close" in bad_line[0]
    assert smuggle[0].startswith(b"HTTP/1.1 400")
    assert huge[0].startswith(b"HTTP/1.1 413")


def _bad_images() -> dict[str, bytes]:
    """Image bodies the edge must refuse: garbage, a GIF, a PNG over the pixel limit."""
    import io

    from PIL import Image

    gif, big = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    Image.new("L", (4100, 4100)).save(big, "PNG")  # 16.8 M pixels > 4096 x 4096
    return {"garbage": b"not an image at all", "gif": gif.getvalue(), "huge": big.getvalue()}


@pytest.fixture
def decode_threads(monkeypatch) -> list[int]:
    """The threads the edge's image decoder ran on, in order (the decoder is wrapped)."""
    from edgelesspart.runtime import preprocess

    threads: list[int] = []
    decode = preprocess.image_to_tensor

    def recording(data, spec):
        threads.append(threading.get_ident())
        return decode(data, spec)

    monkeypatch.setattr(preprocess, "image_to_tensor", recording)
    return threads


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_images_decode_off_the_loop_and_bad_images_get_the_flask_routes_422(
    tiny_bundle, digit_png, decode_threads, batching
):
    from edge_runtime import create_app
    from edge_runtime.fastpath import edge_server

    # GIVEN an edge (thread-pool dispatch with batching off, and batching on) whose image
    # decoder records the thread it runs on
    decoded_on = decode_threads
    config = EdgeConfig(threshold=0.8, batch_max_rows=8 if batching else 0, dispatch="pool")
    app = create_app(tiny_bundle, config)
    client = app.test_client()
    with edge_server(app) as server:
        url = server.url + "/v1/infer"
        # WHEN a good PNG, and bodies that are not usable PNG/JPEG images, come over loopback
        good = requests.post(url, data=digit_png, headers={"Content-Type": "image/png"},
                             timeout=10)  # fmt: skip
        bad = {name: requests.post(url, data=body, headers={"Content-Type": "image/png"},
                                   timeout=30)
               for name, body in _bad_images().items()}  # fmt: skip
        loop_thread = server.loop_thread
    # THEN the good one is answered, and no image was decoded on the event-loop thread
    assert good.status_code == 200 and good.json()["rows"] == 1
    assert decoded_on and loop_thread not in decoded_on
    # AND each bad one is a 422 whose body is exactly what the Flask route answers
    for name, body in _bad_images().items():
        flask = client.post("/v1/infer", data=body, headers={"Content-Type": "image/png"})
        assert bad[name].status_code == flask.status_code == 422, name
        assert bad[name].json() == flask.json, name
    assert "PNG or JPEG" in bad["gif"].json()["error"]["message"]
    assert "pixel" in bad["huge"].json()["error"]["message"]
    app.extensions["edgelesspart"].close()


def test_inline_dispatch_runs_small_requests_on_the_loop_and_big_images_on_a_thread(
    tiny_bundle, digits, digit_png, decode_threads
):
    import io

    from PIL import Image

    from edge_runtime import create_app
    from edge_runtime.fastpath import edge_server
    from edge_runtime.service import INLINE_MAX_IMAGE_PIXELS

    # GIVEN an edge with inline dispatch whose image decoder records the thread it runs on,
    # and a pool-dispatch edge on the same bundle to compare answers with
    decoded_on = decode_threads
    inline = create_app(tiny_bundle, EdgeConfig(threshold=0.8, dispatch="inline"))
    pooled = create_app(tiny_bundle, EdgeConfig(threshold=0.8, dispatch="pool"))
    assert inline.extensions["edgelesspart"].inline
    assert not pooled.extensions["edgelesspart"].inline
    side = int(INLINE_MAX_IMAGE_PIXELS**0.5) + 1  # one pixel row over the inline limit
    big = io.BytesIO()
    Image.open(io.BytesIO(digit_png)).resize((side, side)).save(big, "PNG")
    png = {"Content-Type": "image/png"}
    with edge_server(inline) as a, edge_server(pooled) as b:
        # WHEN a small PNG, a PNG over the inline pixel limit and a tensor batch come in
        small = requests.post(a.url + "/v1/infer", data=digit_png, headers=png, timeout=10)
        small_thread = decoded_on[-1]
        large = requests.post(a.url + "/v1/infer", data=big.getvalue(), headers=png, timeout=10)
        large_thread = decoded_on[-1]
        got = [
            requests.post(s.url + "/v1/infer", data=_frame(digits[:3]), timeout=10,
                          headers={"Content-Type": TENSOR}).json()
            for s in (a, b)
        ]  # fmt: skip
        loop = a.loop_thread
    # THEN the small image was decoded on the loop's thread, the big one on a worker thread
    assert small.status_code == large.status_code == 200
    assert small_thread == loop and large_thread != loop
    # AND inline and pool dispatch give the same answers
    labels = [[row["label"] for row in g["answers"]] for g in got]
    confidences = [[row["confidence"] for row in g["answers"]] for g in got]
    assert labels[0] == labels[1]
    assert np.allclose(confidences[0], confidences[1], rtol=1e-5)
    for app in (inline, pooled):
        app.extensions["edgelesspart"].close()
