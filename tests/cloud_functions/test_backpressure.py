"""Admission control of the cloud server: both ways in (``/v1/continue`` and the Lambda Invoke
API) answer 429 with ``Retry-After`` when saturated, and the probes keep answering; with a token,
unauthenticated calls are refused (401/403) before they can take a slot; the backlog of
asynchronous (``Event``) invocations is bounded.

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


SECRET = "backpressure secret"


def _saturate(real_cloud, encoded, token=None):
    """A cloud server with 1 slot and 1 waiting place, both taken by calls held at the gate
    (signed with ``token`` when one is set)."""
    from cloud_functions.http_entry import CloudLimits
    from cloud_functions.local_server import create_app
    from edgelesspart.runtime import signing
    from service_http.wsgi import BackgroundServer

    cloud = GatedCloud(real_cloud)
    limits = CloudLimits(max_inflight=1, max_queue=1, queue_timeout_s=20.0, retry_after_s=3)
    app = create_app(cloud=cloud, limits=limits, token=token)
    server = BackgroundServer(app, threads=8).start()
    service = app.extensions["edgelesspart"]
    pool = ThreadPoolExecutor(2)
    post = lambda: requests.post(  # noqa: E731
        f"{server.url}/v1/continue", data=encoded, timeout=TIMEOUT,
        headers={"Content-Type": TENSOR, **(signing.sign_body(token, encoded) if token else {})},
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


@pytest.fixture()
def saturated(real_cloud, encoded):
    yield from _saturate(real_cloud, encoded)


@pytest.fixture()
def saturated_with_token(real_cloud, encoded):
    yield from _saturate(real_cloud, encoded, token=SECRET)


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


def _lambda(server):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "lambda", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="x",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 0}),
    )


def test_unauthenticated_calls_are_401_not_429_and_take_no_slot(saturated_with_token, encoded,
                                                                 event):
    from botocore.exceptions import ClientError

    from edgelesspart.runtime import signing

    server, service, cloud, held = saturated_with_token
    # WHEN 12 unsigned, badly signed or wrong-bearer calls arrive while every slot is taken
    bad_headers = [{}, {"Authorization": "Bearer nope"}, signing.sign_body("wrong", encoded),
                   {signing.TIMESTAMP_HEADER: "9" * 400, signing.SIGNATURE_HEADER: "v1=00"}] * 3
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(
            lambda h: requests.post(f"{server.url}/v1/continue", data=encoded, timeout=TIMEOUT,
                                    headers={"Content-Type": TENSOR, **h}),
            bad_headers,
        ))
    # THEN each is refused for what it is (401), not as overload, and none took a slot
    assert [r.status_code for r in replies] == [401] * 12
    assert all(r.json()["error"]["code"] == "unauthorized" for r in replies)
    # AND on the Invoke API an unsigned event is AccessDenied, not TooManyRequests
    with pytest.raises(ClientError) as info:
        _lambda(server).invoke(FunctionName="f", Payload=json.dumps(event))
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"
    assert service.admission.peak <= 2 and service.stats()["rejected"] == 0
    # AND a signed call still meets the full gate (429), so the gate itself is unchanged
    signed = requests.post(f"{server.url}/v1/continue", data=encoded, timeout=TIMEOUT,
                           headers={"Content-Type": TENSOR, **signing.sign_body(SECRET, encoded)})
    assert signed.status_code == 429 and service.stats()["rejected"] == 1
    cloud.gate.set()
    assert [f.result(TIMEOUT).status_code for f in held] == [200, 200]


def test_the_event_backlog_is_bounded_and_answers_lambdas_429(real_cloud, event):
    from botocore.exceptions import ClientError

    from cloud_functions.http_entry import CloudLimits
    from cloud_functions.local_server import create_app
    from service_http.wsgi import BackgroundServer

    # GIVEN a server taking at most 3 Event invocations at once (2 run, 1 queued) at the gate
    cloud = GatedCloud(real_cloud)
    app = create_app(cloud=cloud, limits=CloudLimits(max_pending_events=3, retry_after_s=2))
    backlog = app.extensions["edgelesspart_events"]
    service = app.extensions["edgelesspart"]
    with BackgroundServer(app, threads=4) as server:
        client = _lambda(server)
        invoke = lambda: client.invoke(  # noqa: E731
            FunctionName="f", InvocationType="Event", Payload=json.dumps(event))
        try:
            # WHEN 3 are accepted and a 4th and 5th arrive while they are held
            assert [invoke()["StatusCode"] for _ in range(3)] == [202] * 3
            assert backlog.pending == 3
            for _ in range(2):
                with pytest.raises(ClientError) as info:
                    invoke()
                # THEN those are Lambda's 429 TooManyRequestsException with Retry-After
                err = info.value.response
                assert err["Error"]["Code"] == "TooManyRequestsException"
                assert err["ResponseMetadata"]["HTTPStatusCode"] == 429
                assert err["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "2"
                assert "3 asynchronous invocations" in err["Error"]["Message"]
            assert backlog.pending == 3 and backlog.peak == 3
            assert service.rejected.value(reason="event_backlog_full") == 2
        finally:
            cloud.gate.set()
        # AND once they finish the slots are released and Events are accepted again
        deadline = time.monotonic() + TIMEOUT
        while backlog.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backlog.pending == 0 and cloud.entered == 3
        assert invoke()["StatusCode"] == 202


def test_the_event_backlog_defaults_to_twice_the_queue(tiny_bundle):
    from cloud_functions.http_entry import CloudLimits
    from cloud_functions.local_server import EventBacklog, create_app

    assert CloudLimits().event_backlog == 32 and CloudLimits(max_queue=0).event_backlog == 1
    app = create_app(tiny_bundle, limits=CloudLimits(max_queue=5))
    assert app.extensions["edgelesspart_events"].limit == 10
    # a task that fails still gives its place back
    backlog = EventBacklog(limit=1, workers=1)
    assert backlog.submit(lambda: 1 / 0)
    backlog.shutdown(wait=True)
    assert backlog.pending == 0


def test_serve_cloud_takes_its_admission_sizes_from_flags(tiny_bundle, monkeypatch, capsys):
    import service_http.wsgi
    from edgelesspart.cli import main

    served: list = []
    monkeypatch.setattr(service_http.wsgi, "serve", lambda app, **kw: served.append((app, kw)))
    assert main(["serve-cloud", str(tiny_bundle), "--max-inflight", "2", "--max-queue", "3"]) == 0
    app, kwargs = served[0]
    admission = app.extensions["edgelesspart"].admission
    assert (admission.limit, admission.queue) == (2, 3)
    assert kwargs["threads"] == 2 + 3 + 4
    assert main(["serve-cloud", str(tiny_bundle), "--max-inflight", "0"]) == 2
    assert "limit" in capsys.readouterr().err
