"""Widths, exits and a cloud tail in one chain (issue 21): a width bundle gains exit heads and a
chain manifest; its edge stage runs as a width-switching Ray actor, its last stage in the cloud
part (``serve-cloud``'s app on loopback HTTP), served by ``serve-pipeline``'s width chain."""

from __future__ import annotations

import argparse
import shutil
import socket

import numpy as np
import pytest

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def composed(width_bundle, tmp_path_factory):
    """A copy of the tiny width bundle with an exit head after stage 0 and a chain manifest."""
    from edgelesspart.dynamic.exits import add_width_exits, write_chain_manifest
    from edgelesspart.model.datasets import load_dataset

    out = tmp_path_factory.mktemp("composed") / "bundle"
    shutil.copytree(width_bundle.path, out)
    data = load_dataset("digits", image_size=16, limit=240)
    manifest = add_width_exits(out, data, epochs=5)
    write_chain_manifest(out)
    return out, manifest


@pytest.fixture(scope="module")
def ray_local():
    from bundle_factory import start_local_ray

    start_local_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cloud(composed):
    from cloud_functions.local_server import create_app
    from service_http.wsgi import BackgroundServer

    with BackgroundServer(create_app(composed[0]), threads=8) as server:
        yield server


def _args(bundle, **over):
    base = dict(
        bundle=str(bundle), slo_ms=None, place=None, codec=None, threshold=None, cloud=None,
        cloud_token=None, lambda_endpoint=None, region=None, cloud_timeout=2.0,
        emulate_link=None, slowdown=1.0, window=8,
    )  # fmt: skip
    base.update(over)
    return argparse.Namespace(**base)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_exit_heads_and_chain_manifest_are_recorded(composed):
    from edgelesspart.dynamic.widths import load_manifest
    from edgelesspart.runtime.manifest import load_manifest as load_chain

    bundle, manifest = composed
    assert [e["stage"] for e in manifest.exits] == [0]
    assert 0.0 <= manifest.exits[0]["accuracy"] <= 1.0
    assert 0.5 <= manifest.serving["threshold"] <= 1.0
    assert load_manifest(bundle).exit_of(0)["file"] == "exit0.tflite"
    chain = load_chain(bundle)  # verifies the full-width files' hashes
    assert [s.options["tier"] for s in chain.plan.stages] == ["edge", "cloud"]


def test_a_head_per_width_and_the_chain_accuracy_with_exits(composed, tmp_path):
    """Each width of stage 0 has its own (narrower) head; the controller's curves with exits
    charge that head's latency and use the chain-with-exits accuracy; a bad head is refused."""
    from edgelesspart.dynamic.controller import curves_from_manifest
    from edgelesspart.dynamic.widths import load_manifest
    from edgelesspart.errors import BundleError

    bundle, manifest = composed
    assert manifest.serving["per_width_heads"] is True
    narrow = manifest.exit_head(0, 0.5)
    assert narrow["file"] == "exit0_w0.5.tflite" and narrow["name"] == "exit_0"
    assert narrow["filters"] < manifest.exit_head(0, 1.0)["filters"]
    accuracy = manifest.serving["stage_accuracy"]
    assert set(accuracy) == {"0", "1"} and all(set(r) == {"1", "0.5"} for r in accuracy.values())
    (curve, _), full = curves_from_manifest(manifest, exits=True)
    stage = manifest.stages[0]
    assert curve.latency_ms[0.5] == pytest.approx(stage.at(0.5).latency_ms + narrow["latency_ms"])
    assert full == accuracy["0"]["1"]
    assert curve.accuracy_drop[0.5] == pytest.approx(max(0.0, full - accuracy["0"]["0.5"]))
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    (bad / "exit0_w0.5.tflite").write_bytes(b"not a head")
    with pytest.raises(BundleError, match="exit_0@0.5"):
        load_manifest(bad)


def test_width_chain_answers_from_exits_the_cloud_and_degrades(
    composed, cloud, ray_local, width_bundle
):
    """threshold 0: the stage-0 exit answers every row; threshold 1: every row goes to the cloud
    tail, whose label is the full-width chain's; a dead cloud: the exit answers, degraded."""
    from edgelesspart.commands.serve_pipeline import width_chain
    from edgelesspart.dynamic.pipeline import _exit_runner
    from edgelesspart.dynamic.stage import WidthStage

    bundle, manifest = composed
    x = width_bundle.x[:6]
    full = WidthStage(bundle, [0, 1]).__call__(x).argmax(axis=1)
    pipe = width_chain(_args(bundle, cloud=cloud.url, slo_ms=50.0)).start()
    try:
        assert pipe.stages == 1 and pipe.threshold == manifest.serving["threshold"]
        early = [pipe.result(pipe.submit(x[i : i + 1], threshold=0.0)) for i in range(6)]
        assert {(a.exit, a.stage, a.offloaded) for a in early} == {("exit_0", "stage0", False)}
        late = [pipe.result(pipe.submit(x[i : i + 1], threshold=1.0)) for i in range(6)]
        assert all(a.offloaded and a.stage == "cloud" and not a.degraded for a in late)
        assert [a.label for a in late] == [int(v) for v in full]
        pipe.set_widths((0.5,))
        narrow = pipe.result(pipe.submit(x[:1], threshold=1.0))
        assert narrow.widths == (0.5,) and narrow.stage == "cloud"
        assert pipe.metrics()["offloads"]["ok"] == 7
        # at width 0.5 the stage answers with its 0.5 head, on its 0.5 features
        exited = pipe.result(pipe.submit(x[:1], threshold=0.0))
        head = _exit_runner(bundle, manifest.exit_head(0, 0.5))
        want, _ = head(WidthStage(bundle, [0], width=0.5)(x[:1]))
        assert exited.exit == "exit_0" and exited.widths == (0.5,)
        np.testing.assert_allclose(exited.probs, want, rtol=1e-5, atol=1e-6)
    finally:
        pipe.close()

    dead = width_chain(_args(bundle, cloud=f"http://127.0.0.1:{_free_port()}", cloud_timeout=0.5))
    dead.start()
    try:
        answer = dead.result(dead.submit(x[:1], threshold=1.0))
        assert answer.degraded and answer.exit == "exit_0" and answer.label is not None
        assert "cloud tail failed" in answer.reason
    finally:
        dead.close()


def test_the_shed_route_answers_from_the_whole_model_or_else_the_edge(
    composed, ray_local, width_bundle
):
    """The share the controller sheds goes to the whole model in the cloud (every stage, on
    loopback HTTP) and gets its label; with the route dead the edge chain answers instead."""
    from cloud_functions.local_server import create_app
    from edgelesspart.commands.serve_pipeline import width_chain
    from edgelesspart.dynamic.stage import WidthStage
    from edgelesspart.runtime.cloud import CloudPart
    from service_http.wsgi import BackgroundServer

    bundle, _ = composed
    x = width_bundle.x[:6]
    full = [int(v) for v in WidthStage(bundle, [0, 1])(x).argmax(axis=1)]
    whole = CloudPart(bundle, stages=["stage0", "stage1"])
    with BackgroundServer(create_app(cloud=whole), threads=4) as server:
        for url, cloud_answers in ((server.url, True), (f"http://127.0.0.1:{_free_port()}", False)):
            args = _args(bundle, slo_ms=60_000.0, shed_cloud=url, cloud_timeout=0.5)
            pipe = width_chain(args).start()
            try:
                pipe.shed = 0.5  # as the controller sets it under overload: every 2nd input
                answers = [pipe.result(pipe.submit(x[i : i + 1], threshold=1.0)) for i in range(6)]
                offloads = pipe.metrics()["offloads"]
                # a shed input never waits at a stage: the controller sees no phantom queue
                assert [s.queue for s in pipe.observe().stages] == [0, 0]
            finally:
                pipe.close()
            assert [a.label for a in answers] == full
            shed = [a for a in answers if a.shed]
            if cloud_answers:
                assert len(shed) == 3 and offloads["shed"] == 3
                assert all(a.stage == "cloud" and a.offloaded and not a.widths for a in shed)
            else:  # nothing lost: the edge chain ran them
                assert not shed and offloads["shed_failed"] == 3
                assert all(a.widths == (1.0, 1.0) for a in answers)


def test_serve_pipeline_width_chain_over_http(composed, cloud, ray_local, width_bundle):
    """The contract over loopback: rows answered by the exit or the cloud, widths per stage."""
    from edgelesspart.commands.serve_pipeline import width_chain
    from edgelesspart.dynamic.app import create_app
    from service_http.wsgi import BackgroundServer

    bundle, _ = composed
    pipe = width_chain(_args(bundle, cloud=cloud.url)).start()
    try:
        with BackgroundServer(create_app(pipe), threads=6) as server:
            x = width_bundle.x[:3].tolist()
            body = requests.post(f"{server.url}/v1/infer", json={"inputs": x},
                                 params={"threshold": 1.0}, timeout=60).json()  # fmt: skip
            assert body["offloaded"] == 3
            assert all(a["node"] == "cloud" and a["widths"] == {"stage0": 1.0, "stage1": 1.0}
                       or a["widths"] == {"stage0": 1.0} for a in body["answers"])  # fmt: skip
            body = requests.post(f"{server.url}/v1/infer", json={"inputs": x},
                                 params={"threshold": 0.0}, timeout=60).json()  # fmt: skip
            assert [a["exit"] for a in body["answers"]] == ["exit_0"] * 3
            summary = requests.get(f"{server.url}/v1/bundle", timeout=10).json()
            assert summary["exits"] == [{"name": "exit_0", "stage": "stage0"}]
            assert summary["cloud"] == cloud.url
    finally:
        pipe.close()


def test_width_chain_refuses_what_the_bundle_cannot_do(width_bundle, composed, tmp_path):
    from edgelesspart.commands.serve_pipeline import width_chain
    from edgelesspart.errors import ConfigError

    with pytest.raises(ConfigError, match="has no exit heads"):
        width_chain(_args(width_bundle.path, threshold=0.5))
    plain = tmp_path / "plain"
    shutil.copytree(width_bundle.path, plain)
    with pytest.raises(ConfigError, match="no manifest.json"):
        width_chain(_args(plain, cloud="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="--place"):
        width_chain(_args(composed[0], place="stage0=a"))
    with pytest.raises(ConfigError, match="needs --slo-ms"):
        width_chain(_args(composed[0], shed_cloud="http://127.0.0.1:9"))
