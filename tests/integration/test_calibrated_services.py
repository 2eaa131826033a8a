"""The manifest's ``serving`` entry drives both services, over real loopback HTTP.

A copy of the tiny bundle gets a ``serving`` entry (per-exit temperatures, the entropy
confidence measure and a threshold), as ``edgelesspart build`` writes it. Then:

* the threshold in the manifest is the default of the edge service, of the cloud's HTTP entry and
  of the Lambda handler, unless the operator sets one;
* the edge service (``/v1/infer``), the cloud's HTTP entry (``/v1/continue``) and the Lambda
  handler answer with the same calibrated confidences, equal to the temperature-scaled exit
  probabilities computed here from the raw bundle.
"""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TIMEOUT = 15
SERVING = {
    "threshold": 0.35,
    "confidence": "entropy",
    "temperatures": {"exit_1": 2.0, "exit_2": 0.7, "exit_3": 1.6, "final": 1.3},
}


def serve(app):
    from edge_runtime.wsgi import BackgroundServer

    return BackgroundServer(app, threads=4).start()


def expected_confidence(raw_trace, exit_name: str) -> np.ndarray:
    """What a service must answer at ``exit_name``: calibrated, then scored by the measure."""
    from edgelesspart.runtime.confidence import apply_temperature, score

    probs = apply_temperature(raw_trace.probs[exit_name], SERVING["temperatures"][exit_name])
    return score(probs, SERVING["confidence"])


@pytest.fixture(scope="module")
def calibrated_bundle(tiny_bundle, tmp_path_factory):
    path = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("calibrated") / "bundle")
    manifest = path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["serving"] = SERVING
    manifest.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def raw_trace(tiny_bundle, digits):
    """The exits' uncalibrated probabilities (the bundle without a serving entry)."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(tiny_bundle, pool_size=1)
    return ProgressiveExecutor(bundle, "edge").trace(digits)


@pytest.fixture(scope="module")
def cloud(calibrated_bundle):
    from cloud_functions.local_server import create_app

    server = serve(create_app(calibrated_bundle))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(calibrated_bundle, cloud):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig

    config = EdgeConfig(cloud=cloud.url, threshold_max=2.0, offload_timeout_s=5.0)
    server = serve(create_app(calibrated_bundle, config))
    yield server
    server.stop()


def infer(url, x, **params):
    response = requests.post(
        f"{url}/v1/infer", json={"inputs": np.asarray(x).tolist()}, params=params, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    return response.json()["answers"]


def boundary_payload(bundle_path, x, threshold):
    """The edge's boundary tensor for ``x``, encoded as the edge would send it."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.codecs import encode_tensor
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(bundle_path, pool_size=1)
    result = ProgressiveExecutor(bundle, "edge").run(x, threshold=2.0)
    meta = {"bundle_id": bundle.bundle_id, "threshold": threshold}
    return encode_tensor(result.boundary, "raw", meta=meta)


# --- the manifest's threshold is the default ------------------------------------------------------


def test_manifest_threshold_is_the_default_of_edge_cloud_and_lambda(calibrated_bundle, edge):
    from cloud_functions.handler import Container
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig
    from edgelesspart.runtime.cloud import CloudPart

    # GIVEN services started without a threshold THEN they use the manifest's
    info = requests.get(f"{edge.url}/v1/bundle", timeout=TIMEOUT).json()
    assert info["threshold"] == SERVING["threshold"]
    assert CloudPart(calibrated_bundle).threshold == SERVING["threshold"]
    assert Container(calibrated_bundle).load().threshold == SERVING["threshold"]
    # AND an operator's threshold still wins
    app = create_app(calibrated_bundle, EdgeConfig(threshold=0.9))
    assert app.extensions["edgelesspart"].config.threshold == 0.9
    assert CloudPart(calibrated_bundle, threshold=0.9).threshold == 0.9


def test_default_threshold_decides_early_exits_on_the_edge(edge, digits, raw_trace):
    # GIVEN no per-request threshold WHEN the edge answers THEN a row stops at exit_1 exactly
    # when its calibrated exit_1 confidence reaches the manifest's threshold
    answers = infer(edge.url, digits)
    at_exit_1 = np.array([a["exit"] == "exit_1" for a in answers])
    np.testing.assert_array_equal(
        at_exit_1, expected_confidence(raw_trace, "exit_1") >= SERVING["threshold"]
    )


# --- identical calibrated confidences -------------------------------------------------------------


def test_edge_and_cloud_function_apply_the_same_temperatures(
    calibrated_bundle, edge, cloud, digits, raw_trace
):
    from cloud_functions.handler import Container, invoke

    # WHEN the edge answers every row at its first exit THEN with calibrated exit_1 confidence
    edge_answers = infer(edge.url, digits, threshold=0.0)
    assert {a["exit"] for a in edge_answers} == {"exit_1"}
    edge_conf = np.array([a["confidence"] for a in edge_answers])
    np.testing.assert_allclose(edge_conf, expected_confidence(raw_trace, "exit_1"), rtol=1e-5)
    assert not np.allclose(edge_conf, raw_trace.probs["exit_1"].max(axis=1), atol=1e-3)

    # WHEN the same rows reach the cloud at threshold 0, over HTTP and through the Lambda handler
    payload = boundary_payload(calibrated_bundle, digits, threshold=0.0)
    http = requests.post(
        f"{cloud.url}/v1/continue", data=payload, timeout=TIMEOUT,
        headers={"Content-Type": "application/x-edgelesspart-tensor"},
    )  # fmt: skip
    assert http.status_code == 200, http.text
    event = {"tensor_b64": base64.b64encode(payload).decode("ascii")}
    lam = invoke(Container(calibrated_bundle), event, None)
    # THEN both answer at the cloud exit with the same calibrated confidences
    expected = expected_confidence(raw_trace, "exit_3")
    for answers in (http.json()["answers"], lam["answers"]):
        assert {a["exit"] for a in answers} == {"exit_3"}
        np.testing.assert_allclose([a["confidence"] for a in answers], expected, rtol=1e-5)

    # AND rows the edge offloads come back with the calibrated final classifier's confidence
    offloaded = infer(edge.url, digits, threshold=1.5)
    assert {(a["exit"], a["stage"]) for a in offloaded} == {("final", "cloud")}
    np.testing.assert_allclose(
        [a["confidence"] for a in offloaded], expected_confidence(raw_trace, "final"), rtol=1e-5
    )
