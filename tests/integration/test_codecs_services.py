"""Both services speak every codec, over real loopback sockets (waitress), HTTP and boto3.

One cloud server (HTTP entry + local Lambda Invoke API) serves the whole module; per codec and
transport only a small edge app is started. For each available codec the client sends its
input to the edge in that codec, the edge offloads every row (threshold > 1: no early exit)
in that codec, and the test checks that:

* every row gets a non-degraded answer from the cloud's final classifier, with exactly the
  label the cloud part gives on the decoded boundary tensor, i.e. the full model's label for
  lossless codecs;
* the edge's ``edgelesspart_offload_bytes_sent_total`` and the cloud's
  ``edgelesspart_cloud_bytes_received_total`` both grow by exactly the bytes on the wire: the
  ``encode_tensor`` payload over HTTP, the JSON event holding its base64 over boto3.

Expected payloads are rebuilt here from the same LiteRT edge stage; the codecs are
deterministic, so sizes match to the byte.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from edgelesspart.runtime.codecs import (
    LOSSLESS,
    available_codecs,
    decode_tensor,
    encode_tensor,
    to_base64,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TIMEOUT = 15
FUNCTION = "edgelesspart-cloud"
TENSOR = {"Content-Type": "application/x-edgelesspart-tensor"}
NO_EXITS = 2.0
ROWS = 4
SENT = "edgelesspart_offload_bytes_sent_total"
RECEIVED = "edgelesspart_cloud_bytes_received_total"


def serve(app):
    from edge_runtime.wsgi import BackgroundServer

    return BackgroundServer(app, threads=4).start()


def edge_app(bundle, cloud_url: str, transport: str, codec: str | None):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig

    where = (
        {"cloud": cloud_url}
        if transport == "http"
        else {"cloud": f"lambda://{FUNCTION}", "lambda_endpoint": cloud_url}
    )
    config = EdgeConfig(codec=codec, threshold=NO_EXITS, pool_size=1, offload_retries=0,
                        offload_timeout_s=10.0, **where)  # fmt: skip
    return create_app(bundle, config)


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of a service's Prometheus text (0 when the series does not exist yet)."""
    text = requests.get(f"{url}/metrics", timeout=TIMEOUT).text
    pairs = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{pairs}}}" if pairs else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def wire_bytes(payload: bytes, transport: str) -> int:
    """What goes on the wire for one offload: the payload, or the Lambda JSON event."""
    if transport == "http":
        return len(payload)
    event = {"tensor_b64": to_base64(payload), "threshold": NO_EXITS}
    return len(json.dumps(event).encode("utf-8"))


@pytest.fixture(scope="module")
def cloud(tiny_bundle):
    from cloud_functions.local_server import create_app

    server = serve(create_app(tiny_bundle))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge_stage(tiny_bundle):
    """The bundle's edge stage in this process, to rebuild the boundary the service sends."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(tiny_bundle, stages=["edge"], pool_size=1)
    return ProgressiveExecutor(bundle, "edge")


def expected_offload(edge_stage, x: np.ndarray, codec: str, bundle_id: str) -> bytes:
    """The payload the edge service builds for ``x``: its boundary, its meta, in ``codec``."""
    boundary = edge_stage.run(x, threshold=NO_EXITS).boundary
    meta = {"bundle_id": bundle_id, "rows": len(x), "threshold": NO_EXITS}
    return encode_tensor(boundary, codec, meta=meta)


@pytest.mark.parametrize("transport", ["http", "lambda"])
@pytest.mark.parametrize("codec", available_codecs())
def test_every_codec_crosses_edge_and_cloud(
    codec, transport, tiny_bundle, cloud, cloud_part, edge_stage, digits, bundle_id,
    full_model_labels,
):  # fmt: skip
    # GIVEN an edge service that offloads in `codec` over HTTP or boto3, and a client that
    # sends its input to the edge in the same codec
    request_body = encode_tensor(digits[:ROWS], codec, meta={"bundle_id": bundle_id})
    seen, _ = decode_tensor(request_body)
    offload = expected_offload(edge_stage, seen, codec, bundle_id)
    route = "continue" if transport == "http" else "invoke"
    received_before = metric(cloud.url, RECEIVED, route=route)
    with serve(edge_app(tiny_bundle, cloud.url, transport, codec)) as edge:
        assert requests.get(f"{edge.url}/v1/bundle", timeout=TIMEOUT).json()["codec"] == codec
        # WHEN the rows are classified
        response = requests.post(f"{edge.url}/v1/infer", data=request_body, headers=TENSOR,
                                 timeout=TIMEOUT)  # fmt: skip
        sent = metric(edge.url, SENT)
    # THEN the cloud's final classifier answered every row, nothing degraded
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["offloaded"] == ROWS and body["degraded"] == 0
    answers = body["answers"]
    assert [(a["stage"], a["exit"], a["degraded"]) for a in answers] == [
        ("cloud", "final", False)
    ] * ROWS
    # AND each label is the cloud part's on the decoded boundary (the full model's if lossless)
    decoded, header = decode_tensor(offload)
    assert header["codec"] == codec
    labels = [a["label"] for a in answers]
    assert labels == [a.label for a in cloud_part.run(decoded, NO_EXITS)]
    if codec in LOSSLESS:
        assert labels == full_model_labels[:ROWS].tolist()
    # AND both services counted exactly the bytes that crossed the link
    assert sent == wire_bytes(offload, transport)
    assert metric(cloud.url, RECEIVED, route=route) - received_before == sent


def test_edge_defaults_to_the_codec_the_bundle_was_built_with(
    tiny_bundle, cloud, edge_stage, digits, bundle_id, tmp_path
):
    from codec_bundle import with_codec_table

    from edgelesspart.runtime.manifest import load_manifest

    # GIVEN a bundle whose manifest names the codec measured and chosen at build time
    bundle = with_codec_table(tiny_bundle, tmp_path / "bundle")
    chosen = load_manifest(bundle).codec["name"]
    assert chosen in available_codecs() and load_manifest(bundle).bundle_id == bundle_id
    # WHEN its edge service starts without a codec setting and offloads two rows
    with serve(edge_app(bundle, cloud.url, "http", None)) as edge:
        served = requests.get(f"{edge.url}/v1/bundle", timeout=TIMEOUT).json()["codec"]
        response = requests.post(f"{edge.url}/v1/infer", json={"inputs": digits[:2].tolist()},
                                 timeout=TIMEOUT)  # fmt: skip
        sent = metric(edge.url, SENT)
    # THEN it uses the manifest's codec, and sends exactly that codec's payload
    assert served == chosen
    assert response.status_code == 200 and response.json()["degraded"] == 0
    assert sent == len(expected_offload(edge_stage, digits[:2], chosen, bundle_id))


def _frame_naming(codec: str, bundle_id: str) -> bytes:
    """A well-formed payload (valid checksum) whose header names ``codec``."""
    from edgelesspart.runtime import wire

    body = np.zeros((1, 16, 16, 16), np.float32).tobytes()
    return wire.build_frame(dtype="float32", shape=(1, 16, 16, 16), codec=codec, params={},
                            meta={"bundle_id": bundle_id}, body=body)  # fmt: skip


def test_cloud_refuses_an_unknown_codec_naming_it(cloud, bundle_id):
    import boto3
    from botocore.config import Config

    payload = _frame_naming("zfp8", bundle_id)
    # WHEN the HTTP entry receives it
    response = requests.post(f"{cloud.url}/v1/continue", data=payload, headers=TENSOR,
                             timeout=TIMEOUT)  # fmt: skip
    # THEN 400, and the message names the codec and the supported ones
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "'zfp8'" in message and "Supported codecs: raw, fp16" in message
    # AND the Lambda Invoke API answers a handled 400 error naming it too
    client = boto3.client(
        "lambda", endpoint_url=cloud.url, region_name="us-east-1", aws_access_key_id="x",
        aws_secret_access_key="x", config=Config(retries={"max_attempts": 0}, read_timeout=10),
    )  # fmt: skip
    event = json.dumps({"tensor_b64": to_base64(payload)})
    result = json.loads(client.invoke(FunctionName=FUNCTION, Payload=event)["Payload"].read())
    assert result["status"] == 400 and "'zfp8'" in result["error"]["message"]


def test_edge_refuses_to_start_with_an_unknown_codec(tiny_bundle, cloud):
    from edgelesspart.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Unknown codec 'zfp8'\. Supported codecs: raw"):
        edge_app(tiny_bundle, cloud.url, "http", "zfp8")
