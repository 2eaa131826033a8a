"""Edge and cloud services on real loopback sockets (waitress), called with requests and boto3.

Shows: (a) a confident sample never reaches the cloud; (b) offloaded samples get the full
model's label; (c) the boto3 path works against ``serve-cloud``; (d) a stopped, slow or failing
cloud gives degraded answers, not errors; (e) malformed requests get 4xx.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TIMEOUT = 15
FUNCTION = "edgelesspart-cloud"


def serve(app):
    from edge_runtime.wsgi import BackgroundServer

    return BackgroundServer(app, threads=8).start()


def edge_app(bundle, **config):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig

    return create_app(bundle, EdgeConfig(**config))


def infer(url, x, **params):
    response = requests.post(
        f"{url}/v1/infer", json={"inputs": np.asarray(x).tolist()}, params=params, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    return response.json()


def cloud_requests(cloud_url) -> int:
    return requests.get(f"{cloud_url}/v1/stats", timeout=TIMEOUT).json()["requests"]


@pytest.fixture(scope="module")
def cloud(tiny_bundle):
    from cloud_functions.local_server import create_app

    server = serve(create_app(tiny_bundle))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(tiny_bundle, cloud):
    server = serve(edge_app(tiny_bundle, cloud=cloud.url, threshold=0.8, offload_timeout_s=5.0))
    yield server
    server.stop()


@pytest.fixture()
def fake_cloud():
    """A cloud that answers /v1/continue with whatever the test sets (slow or failing)."""
    from flask import Flask, jsonify

    behaviour = {"sleep": 0.0, "status": 500}
    app = Flask("fake_cloud")

    @app.post("/v1/continue")
    def continue_request():
        time.sleep(behaviour["sleep"])
        return jsonify(error={"type": "Boom", "message": "cloud exploded"}), behaviour["status"]

    server = serve(app)
    yield server, behaviour
    server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- (a) -------------------------------------------------------------------------------------


def test_confident_sample_never_reaches_the_cloud(edge, cloud, digits, edge_confidence):
    # GIVEN the most confident digit at an edge exit, and a threshold it clears
    row = int(np.argmax(edge_confidence))
    threshold = round(float(edge_confidence[row]) - 1e-4, 6)
    before = cloud_requests(cloud.url)
    # WHEN it is sent to the edge service
    body = infer(edge.url, digits[row : row + 1], threshold=threshold)
    # THEN the edge answered it and the cloud's request counter did not move
    answer = body["answers"][0]
    assert answer["stage"] == "edge" and answer["exit"] in ("exit_1", "exit_2")
    assert body["offloaded"] == 0 and cloud_requests(cloud.url) == before
    # AND a sample that is not confident does reach the cloud (the counter works)
    low = int(np.argmin(edge_confidence))
    sent = infer(edge.url, digits[low : low + 1], threshold=1.0)
    assert sent["offloaded"] == 1 and sent["answers"][0]["stage"] == "cloud"
    assert cloud_requests(cloud.url) == before + 1


# --- (b) -------------------------------------------------------------------------------------


def test_offloaded_samples_get_the_full_models_label(tiny_bundle, cloud, digits, full_model_labels):
    # GIVEN an edge that never exits early (threshold > 1 on edge and cloud)
    with serve(edge_app(tiny_bundle, cloud=cloud.url, threshold=2.0)) as server:
        # WHEN the digits are classified through edge + cloud over HTTP
        body = infer(server.url, digits)
    # THEN every row went through the final classifier with the full model's label
    assert body["offloaded"] == len(digits)
    assert {a["exit"] for a in body["answers"]} == {"final"}
    assert [a["label"] for a in body["answers"]] == full_model_labels.tolist()


# --- (c) -------------------------------------------------------------------------------------


def test_edge_offloads_through_boto3_to_serve_cloud(tiny_bundle, cloud, digits, full_model_labels):
    # GIVEN an edge whose cloud is lambda://NAME at the local Lambda Invoke API
    app = edge_app(tiny_bundle, cloud=f"lambda://{FUNCTION}", lambda_endpoint=cloud.url,
                   threshold=2.0)
    before = requests.get(f"{cloud.url}/v1/stats", timeout=TIMEOUT).json()["invoke"]
    with serve(app) as server:
        body = infer(server.url, digits[:4])
    # THEN the rows were answered by the cloud through boto3 invoke
    assert [a["stage"] for a in body["answers"]] == ["cloud"] * 4
    assert [a["label"] for a in body["answers"]] == full_model_labels[:4].tolist()
    assert requests.get(f"{cloud.url}/v1/stats", timeout=TIMEOUT).json()["invoke"] == before + 1


def test_plain_boto3_client_against_serve_cloud(cloud, bundle_id, tiny_bundle):
    import boto3
    from botocore.config import Config

    from edgelesspart.runtime.codecs import encode_tensor, to_base64

    client = boto3.client(
        "lambda", endpoint_url=cloud.url, region_name="us-east-1", aws_access_key_id="x",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 0}, read_timeout=10),
    )
    boundary = np.random.default_rng(1).random((2, 16, 16, 16), dtype=np.float32)
    event = {"tensor_b64": to_base64(encode_tensor(boundary, meta={"bundle_id": bundle_id}))}
    # WHEN boto3 invokes it in each invocation type
    sync = client.invoke(FunctionName=FUNCTION, Payload=json.dumps(event), LogType="Tail")
    queued = client.invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=json.dumps(event))
    dry = client.invoke(FunctionName=FUNCTION, InvocationType="DryRun", Payload=b"{}")
    # THEN it behaves like Lambda
    result = json.loads(sync["Payload"].read())
    assert sync["StatusCode"] == 200 and "FunctionError" not in sync
    assert len(result["answers"]) == 2 and result["bundle_id"] == bundle_id
    assert "REPORT RequestId" in __import__("base64").b64decode(sync["LogResult"]).decode()
    assert queued["StatusCode"] == 202 and dry["StatusCode"] == 204
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName=FUNCTION, Payload=b'{"x":"' + b"a" * (6 * 2**20) + b'"}')
    broken = client.invoke(FunctionName=FUNCTION, Payload=b"not json")
    assert broken["FunctionError"] == "Unhandled"
    assert json.loads(broken["Payload"].read())["errorType"] == "Runtime.UnmarshalError"


# --- (d) -------------------------------------------------------------------------------------


def _degraded_body(bundle, cloud_url, digits, timeout_s=0.3):
    app = edge_app(bundle, cloud=cloud_url, threshold=2.0, offload_timeout_s=timeout_s,
                   connect_timeout_s=0.2, offload_retries=0)
    with serve(app) as server:
        start = time.perf_counter()
        body = infer(server.url, digits[:3])
        return body, time.perf_counter() - start


def test_stopped_cloud_gives_degraded_answers(tiny_bundle, digits):
    body, elapsed = _degraded_body(tiny_bundle, f"http://127.0.0.1:{free_port()}", digits)
    assert body["degraded"] == 3 and elapsed < 5
    assert all(a["degraded"] and "OffloadUnavailable" in a["reason"] for a in body["answers"])
    assert {a["stage"] for a in body["answers"]} == {"edge"}


def test_slow_cloud_gives_degraded_answers_within_the_timeout(tiny_bundle, digits, fake_cloud):
    server, behaviour = fake_cloud
    behaviour.update(sleep=4.0, status=200)
    body, elapsed = _degraded_body(tiny_bundle, server.url, digits)
    assert body["degraded"] == 3 and elapsed < 3.0  # the 0.3 s timeout, with CI slack
    assert all("OffloadTimeout" in a["reason"] for a in body["answers"])


def test_failing_cloud_gives_degraded_answers(tiny_bundle, digits, fake_cloud):
    server, behaviour = fake_cloud
    behaviour.update(sleep=0.0, status=500)
    body, _ = _degraded_body(tiny_bundle, server.url, digits)
    assert body["degraded"] == 3
    assert all("500" in a["reason"] and "cloud exploded" in a["reason"] for a in body["answers"])


def test_slow_cloud_does_not_delay_early_exits(tiny_bundle, digits, fake_cloud):
    # GIVEN a cloud that takes 4 s, and a request stuck waiting for it
    server, behaviour = fake_cloud
    behaviour.update(sleep=4.0, status=500)
    app = edge_app(tiny_bundle, cloud=server.url, threshold=0.8, offload_timeout_s=8.0,
                   offload_retries=0)
    with serve(app) as edge_server:
        slow = threading.Thread(target=infer, args=(edge_server.url, digits[:1]),
                                kwargs={"threshold": 1.0})
        slow.start()
        time.sleep(0.2)
        # WHEN another client's sample exits early meanwhile
        start = time.perf_counter()
        body = infer(edge_server.url, digits[:1], threshold=0.0)
        elapsed = time.perf_counter() - start
        slow.join(TIMEOUT)
    # THEN it is answered without waiting for the cloud
    assert body["answers"][0]["stage"] == "edge" and elapsed < 2.5


# --- (e) -------------------------------------------------------------------------------------


def _bad_edge_requests(bundle_id):
    from edgelesspart.runtime.codecs import encode_tensor

    nan = np.zeros((1, 32, 32, 3), np.float32)
    nan[0, 3, 3, 0] = np.nan
    tensor = {"Content-Type": "application/x-edgelesspart-tensor"}
    return [
        (dict(data=b"", headers=tensor), 400),
        (dict(json={"tensor_b64": "***"}), 400),
        (dict(json={"inputs": [[1.0, 2.0]]}), 422),
        (dict(data=encode_tensor(nan), headers=tensor), 422),
        (dict(data=b"ELPT\x01\x00\x00\x00\x02{}", headers=tensor), 400),
        (dict(json={"inputs": np.zeros((1, 32, 32, 3)).tolist()},
              headers={"X-EdgeLessPart-Bundle": bundle_id + "x"}), 409),
        (dict(data=b"0" * (9 * 2**20), headers=tensor), 413),
        (dict(data=b"hello", headers={"Content-Type": "text/plain"}), 415),
    ]


def test_malformed_requests_get_4xx_and_services_keep_serving(edge, cloud, bundle_id, digits):
    for kwargs, status in _bad_edge_requests(bundle_id):
        response = requests.post(f"{edge.url}/v1/infer", timeout=TIMEOUT, **kwargs)
        assert response.status_code == status, (kwargs.get("json"), response.text)
        assert response.json()["error"]["message"]
    bad_cloud = requests.post(
        f"{cloud.url}/v1/continue", data=b"garbage", timeout=TIMEOUT,
        headers={"Content-Type": "application/x-edgelesspart-tensor"},
    )
    assert bad_cloud.status_code == 400 and "magic" in bad_cloud.json()["error"]["message"]
    assert requests.get(f"{edge.url}/healthz", timeout=TIMEOUT).json()["ready"] is True
    assert infer(edge.url, digits[:1], threshold=0.0)["answers"][0]["exit"] == "exit_1"


# --- the CLI ---------------------------------------------------------------------------------


def test_serve_cloud_cli_subprocess_answers_and_exits(tiny_bundle, bundle_id):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "edgelesspart.cli", "serve-cloud", str(tiny_bundle),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "serve-cloud did not start within 60 s"
                time.sleep(0.2)
        assert health.json()["bundle_id"] == bundle_id
    finally:
        process.terminate()
        process.wait(10)
