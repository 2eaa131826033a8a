"""``serve-pipeline --cloud``: rows no edge stage's exit answered go to the cloud function from
the last edge stage, with the two-part service's contract (breaker, degraded answers from the
last local exit, nothing lost). The tiny exit bundle's edge stage runs as a Ray actor; its cloud
part runs in the local Lambda-API/HTTP server on loopback. One local Ray for the module."""

from __future__ import annotations

import argparse
import socket

import numpy as np
import pytest

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
pytestmark = [pytest.mark.integration]

TIMEOUT = 60


@pytest.fixture(scope="module")
def ray_local():
    from bundle_factory import start_local_ray

    start_local_ray()  # private (address="local"), one per module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cloud(tiny_bundle):
    from cloud_functions.local_server import create_app
    from service_http.wsgi import BackgroundServer

    with BackgroundServer(create_app(tiny_bundle), threads=8) as server:
        yield server


@pytest.fixture(scope="module")
def edge_confidence(tiny_bundle, digits) -> np.ndarray:
    """Per row, the best top-1 confidence over the edge exits."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    trace = ProgressiveExecutor(Bundle.load(tiny_bundle, pool_size=1), "edge").trace(digits)
    edge = [e for e in trace.exits if trace.exit_stage[e] == "edge"]
    return np.max([trace.probs[e].max(axis=1) for e in edge], axis=0)


def _edge_chain(tiny_bundle, threshold=0.8):
    from edgelesspart.pipeline.contract import edge_stage_names
    from edgelesspart.pipeline.dispatcher import Pipeline, default_stages, stages_with
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(tiny_bundle)
    edge = set(edge_stage_names(manifest, cloud_tail=True))
    stages = [s for s in default_stages(manifest) if s.name in edge]
    return Pipeline(tiny_bundle, stages_with(stages, threshold=threshold), window=4).start()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _infer(url, x, **params):
    response = requests.post(
        f"{url}/v1/infer", json={"inputs": np.asarray(x).tolist()}, params=params, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_unanswered_rows_are_answered_by_the_cloud_tail(
    ray_local, cloud, tiny_bundle, digits, full_model_labels, edge_confidence
):
    from edgelesspart.pipeline.app import create_app
    from edgelesspart.pipeline.contract import make_offloader
    from service_http.wsgi import BackgroundServer

    pipe = _edge_chain(tiny_bundle)
    offloader = make_offloader(cloud.url, timeout_s=10.0)
    try:
        with BackgroundServer(create_app(pipe, offloader=offloader, cloud=cloud.url)) as server:
            # GIVEN the chain's edge stage with threshold 0.8 and the cloud tail on loopback
            info = requests.get(server.url + "/v1/bundle", timeout=TIMEOUT).json()
            assert info["edge_stages"] == ["edge"] and info["cloud"] == cloud.url
            # WHEN the most confident row (at a threshold it clears) and, at threshold 1, 4 rows
            confident = int(np.argmax(edge_confidence))
            clears = round(float(edge_confidence[confident]) - 1e-4, 6)  # a threshold it clears
            local = _infer(server.url, digits[confident : confident + 1], threshold=clears)
            tail = _infer(server.url, digits[:4], threshold=1.0)
            text = requests.get(server.url + "/metrics", timeout=TIMEOUT).text
    finally:
        pipe.close()
    # THEN the confident row stayed on the chain, answered at an edge exit by the edge node
    row = local["answers"][0]
    assert (
        local["offloaded"] == 0 and row["stage"] == "edge" and row["exit"] in ("exit_1", "exit_2")
    )
    assert row["node"] != "cloud" and not row["degraded"]
    # AND the other rows left the last edge stage for the cloud, which answered all of them
    assert tail["offloaded"] == 4 and tail["degraded"] == 0 and tail["rows"] == 4
    for k, answer in enumerate(tail["answers"]):
        assert answer["stage"] == "cloud" and answer["node"] == "cloud" and not answer["degraded"]
        assert answer["label"] == int(full_model_labels[k])  # the whole model's answer
        assert answer["timings"]["offload"] > 0 and "chain" in answer["timings"]
    assert 'edgelesspart_offloads_total{outcome="ok"} 1' in text
    assert "edgelesspart_offloaded_rows_total 4" in text


def test_a_dead_cloud_degrades_to_the_last_local_exit_and_opens_the_breaker(
    ray_local, tiny_bundle, digits
):
    from edgelesspart.pipeline.app import create_app
    from edgelesspart.pipeline.contract import make_offloader
    from service_http.wsgi import BackgroundServer

    pipe = _edge_chain(tiny_bundle)
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    offloader = make_offloader(dead, timeout_s=1.0, retries=0, breaker_failures=2)
    try:
        with BackgroundServer(create_app(pipe, offloader=offloader, cloud=dead)) as server:
            # GIVEN a cloud tail that refuses connections
            bodies = [_infer(server.url, digits[:3], threshold=1.0) for _ in range(3)]
            health = requests.get(server.url + "/healthz", timeout=TIMEOUT).json()
    finally:
        pipe.close()
    # THEN every row is answered, degraded, from the edge stage's last exit, with the reason
    for body in bodies:
        assert body["rows"] == 3 and body["degraded"] == 3 and body["offloaded"] == 3
        for answer in body["answers"]:
            assert answer["degraded"] and answer["stage"] == "edge" and answer["exit"] == "exit_2"
            assert isinstance(answer["label"], int) and answer["reason"]
    # AND after two failed calls the breaker is open: the third request does not try the cloud
    assert "Circuit breaker" in bodies[2]["answers"][0]["reason"]
    assert health["cloud"]["breaker"] == "open"


def test_options_that_do_not_apply_are_refused_at_start(tiny_bundle, chain_bundle, capsys):
    from edgelesspart.cli import main
    from edgelesspart.commands.serve_pipeline import check_pipeline_options
    from edgelesspart.errors import ConfigError
    from edgelesspart.runtime.manifest import load_manifest

    # --threshold on a chain without early exits
    args = argparse.Namespace(bundle=str(chain_bundle.path), threshold=0.7, cloud=None)
    with pytest.raises(ConfigError, match="--threshold 0.7 does not apply .* no early exits"):
        check_pipeline_options(args, load_manifest(chain_bundle.path))
    # --slo-ms on a bundle without widths: serve-edge refuses before it loads anything
    assert main(["serve-edge", str(tiny_bundle), "--slo-ms", "50"]) == 2
    assert "--slo-ms 50 does not apply" in capsys.readouterr().err
