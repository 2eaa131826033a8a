"""Admission control of the cloud server: both ways in (``/v1/continue`` and the Lambda Invoke
API) answer 429 with ``Retry-After`` when saturated, and the probes keep answering.

Served by waitress on a loopback port; the Invoke path is called with a real boto3 client.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 15
TENSOR = "application/x-edgelesspart-tensor"


class GatedCloud:
    """The real cloud part, but every call waits for the test to open the gate."""

    def __init__(self, real) -> None:
        self.real = real
        self.gate = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    @property
    def bundle_id(self):
        return self.real.bundle_id

    @property
    def init_ms(self):
        return self.real.init_ms

    def _wait(self):
        with self._lock:
            self.entered += 1
        self.gate.wait(20)

    def continue_request(self, payload, *, threshold=None):
        self._wait()
        return self.real.continue_request(payload, threshold=threshold)

    def handle_event(self, event):
        self._wait()
        return self.real.handle_event(event)


@pytest.fixture(scope="module")
def real_cloud(tiny_bundle):
    from edgelesspart.runtime.cloud import CloudPart

    return CloudPart(tiny_bundle)


@pytest.fixture()
def saturated(real_cloud, encoded):
    """A cloud server with 1 slot and 1 waiting place, both taken by calls held at the gate."""
    from cloud_functions.http_entry import CloudLimits
    from cloud_functions.local_server import create_app
    from edge_runtime.wsgi import BackgroundServer

    cloud = GatedCloud(real_cloud)
    limits = CloudLimits(max_inflight=1, max_queue=1, queue_timeout_s=20.0, retry_after_s=3)
    app = create_app(cloud=cloud, limits=limits)
    server = BackgroundServer(app, threads=8).start()
    service = app.extensions["edgelesspart"]
    pool = ThreadPoolExecutor(2)
    post = lambda: requests.post(  # noqa: E731
        f"{server.url}/v1/continue", data=encoded, headers={"Content-Type": TENSOR},
        timeout=TIMEOUT,
    )
    held = [pool.submit(post) for _ in range(2)]
    deadline = time.monotonic() + 5
    while not (cloud.entered == 1 and service.admission.waiting == 1):
        assert time.monotonic() < deadline, "the two calls did not take the slot and the queue"
        time.sleep(0.01)
    try:
        yield server, service, cloud, held
    finally:
        cloud.gate.set()
        pool.shutdown(wait=True)
        server.stop()


def test_saturated_continue_is_429_json_with_retry_after(saturated, encoded):
    server, service, cloud, held = saturated
    # WHEN one more call arrives
    response = requests.post(f"{server.url}/v1/continue", data=encoded,
                             headers={"Content-Type": TENSOR}, timeout=TIMEOUT)
    # THEN it is refused with 429, Retry-After and a JSON message
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    assert "saturated" in response.json()["error"]["message"]
    # AND the held calls are answered once the gate opens
    cloud.gate.set()
    assert [f.result(TIMEOUT).status_code for f in held] == [200, 200]
    assert service.stats()["rejected"] == 1


def test_saturated_invoke_is_too_many_requests_for_boto3(saturated, event):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    server, service, cloud, held = saturated
    client = boto3.client(
        "lambda", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="x",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 0}),
    )
    # WHEN boto3 invokes the function while every slot is taken
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName="f", Payload=json.dumps(event))
    # THEN boto3 surfaces Lambda's TooManyRequestsException with a Retry-After
    err = info.value.response
    assert err["Error"]["Code"] == "TooManyRequestsException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert err["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"
    assert "saturated" in err["Error"]["Message"]


def test_probes_answer_while_saturated(saturated):
    server, service, cloud, held = saturated
    assert requests.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200
    stats = requests.get(f"{server.url}/v1/stats", timeout=TIMEOUT)
    assert stats.status_code == 200
    assert requests.get(f"{server.url}/metrics", timeout=TIMEOUT).status_code == 200


def test_a_burst_never_grows_the_waiting_room(saturated, encoded):
    server, service, cloud, held = saturated
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(
            lambda _: requests.post(f"{server.url}/v1/continue", data=encoded,
                                    headers={"Content-Type": TENSOR}, timeout=TIMEOUT),
            range(16),
        ))
    assert [r.status_code for r in replies] == [429] * 16
    assert service.admission.peak <= 2 and cloud.entered == 1
    assert 'edgelesspart_cloud_rejected_total{reason="queue_full"} 16' in requests.get(
        f"{server.url}/metrics", timeout=TIMEOUT).text


def test_serve_cloud_takes_its_admission_sizes_from_flags(tiny_bundle, monkeypatch, capsys):
    import edge_runtime.wsgi
    from edgelesspart.cli import main

    served: list = []
    monkeypatch.setattr(edge_runtime.wsgi, "serve", lambda app, **kw: served.append((app, kw)))
    assert main(["serve-cloud", str(tiny_bundle), "--max-inflight", "2", "--max-queue", "3"]) == 0
    app, kwargs = served[0]
    admission = app.extensions["edgelesspart"].admission
    assert (admission.limit, admission.queue) == (2, 3)
    assert kwargs["threads"] == 2 + 3 + 4
    assert main(["serve-cloud", str(tiny_bundle), "--max-inflight", "0"]) == 2
    assert "limit" in capsys.readouterr().err
