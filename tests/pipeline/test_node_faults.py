"""Faults on a real multi-node Ray cluster with stage files over 1 MiB (not inlined by Ray).

One ``ray.cluster_utils.Cluster`` for the module (a head advertising ``head`` plus one node
advertising ``n1``; one CPU each; private temp dir, loopback), always shut down. Stage 1 lives on
``n1``; the other stages are pinned to the head (unpinned, Ray may put them on ``n1`` too).
The fault experiment (``experiments/fault_pipeline.py``) runs the same
faults at several MB per stage and reports the figures; this is the CI-sized check.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

import numpy as np
import pytest

from edgelesspart.pipeline import raykit
from edgelesspart.pipeline.dispatcher import Pipeline, default_stages, stages_with
from edgelesspart.runtime.manifest import load_manifest

pytestmark = [pytest.mark.needs_tf, pytest.mark.integration, pytest.mark.slow]
ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
WIDTH = 640  # 640 x 640 float32 weights: about 1.6 MB per stage file


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory):
    """A 3-stage dense chain whose every stage file is over 1 MiB."""
    from edgelesspart._lazy import keras
    from edgelesspart.pipeline.export import export_chain
    from edgelesspart.runtime.plan import Plan, Stage

    k = keras()
    k.utils.set_random_seed(0)
    x = k.Input((16, 16, 3), name="x")
    h = k.layers.Flatten(name="flat")(x)
    for i in range(4):
        h = k.layers.Dense(WIDTH, activation="relu", name=f"d{i}")(h)
    model = k.Model(x, k.layers.Dense(10, activation="softmax", name="probs")(h))
    bounds = ("input", "d1", "d2", "output")
    plan = Plan(
        constraint="pipeline",
        placement="none",
        stages=tuple(
            Stage(f"stage{i}", "host", bounds[i], bounds[i + 1], options={"codec_out": c})
            for i, c in enumerate(("raw", "raw", None))
        ),
        cut_points=("d1", "d2"),
        rationale="test: stages over 1 MiB",
    )
    inputs = np.random.default_rng(0).random((3, 16, 16, 3), dtype=np.float32)
    out = tmp_path_factory.mktemp("faults") / "big-chain"
    export_chain(model, plan, out, probe=inputs[:2], classes=tuple("0123456789"),
                 preprocessing={"height": 16, "width": 16, "channels": 3, "scale": 1.0,
                                "offset": 0.0},
                 model_info={"name": "dense_chain", "source": "test"})  # fmt: skip
    return out, inputs, np.asarray(model(inputs, training=False))


@pytest.fixture(scope="module")
def cluster():
    """Head + node ``n1`` on loopback, private temp dir; yields (cluster, nodes, node args)."""
    from ray.cluster_utils import Cluster

    raykit.loopback_only()
    tmp = raykit.private_temp_dir()
    node = {"num_cpus": 1, "node_ip_address": raykit.LOOPBACK, "temp_dir": tmp}
    head = {**node, "include_dashboard": False, "resources": {"head": 2}}
    c = Cluster(initialize_head=True, head_node_args=head)
    nodes = {"n1": c.add_node(**node, resources={"n1": 1})}
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    try:
        yield c, nodes, node
    finally:
        ray.shutdown()
        c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _pipeline(bundle, **kwargs) -> Pipeline:
    placement = {"stage0": "head", "stage1": "n1", "stage2": "head"}
    stages = stages_with(default_stages(load_manifest(bundle)), placement=placement)
    return Pipeline(bundle, stages, window=4, **kwargs)


def _wait(predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_stage_files_are_too_big_to_be_inlined(big_bundle):
    path, _, _ = big_bundle
    stages = [p for p in path.rglob("*.tflite") if "reference" not in p.parts]  # not the full model
    sizes = [p.stat().st_size for p in stages]
    assert len(sizes) == 3 and min(sizes) > 2**20


def test_a_killed_stage_actor_restarts_with_its_bytes_and_answers(cluster, big_bundle):
    path, inputs, expected = big_bundle
    with _pipeline(path, deadline_s=60) as pipe:
        first = pipe.infer(inputs[:1])
        # WHEN the actor of stage 1 (files over 1 MiB) is killed; Ray restarts it
        ray.kill(pipe.actors[1], no_restart=False)
        # THEN the next inputs are answered (late, after a retry) with the right outputs
        results = [pipe.infer(inputs[i : i + 1]) for i in range(3)]
        assert _wait(pipe.ready, 60)
        health = pipe.metrics()["stages"]["stage1"]
    np.testing.assert_allclose(first.probs, expected[:1], atol=1e-5)
    np.testing.assert_allclose(np.concatenate([r.probs for r in results]), expected, atol=1e-5)
    assert health["state"] == "up" and health["restarts"] + health["recreations"] >= 1


def test_a_lost_node_is_replaced_and_every_request_is_answered(cluster, big_bundle):
    from edgelesspart.pipeline.app import create_app
    from service_http.wsgi import BackgroundServer

    c, nodes, node = cluster
    path, inputs, expected = big_bundle
    ray_log, our_log = _Collect(), _Collect()
    logging.getLogger("ray").addHandler(ray_log)
    logging.getLogger("edgelesspart.pipeline").addHandler(our_log)
    replies: list[tuple[int, dict]] = []
    stop = threading.Event()
    try:
        with _pipeline(path, deadline_s=90) as pipe, BackgroundServer(create_app(pipe)) as srv:
            body = {"inputs": inputs[:1].tolist()}

            def client() -> None:
                while not stop.is_set():
                    r = requests.post(srv.url + "/v1/infer", json=body, timeout=120)
                    replies.append((r.status_code, r.json()))
                    time.sleep(0.05)

            assert requests.get(srv.url + "/readyz", timeout=10).status_code == 200
            worker = threading.Thread(target=client, daemon=True)
            worker.start()
            assert _wait(lambda: len(replies) >= 2, 60)
            # WHEN the node of stage 1 is removed while requests stream
            c.remove_node(nodes.pop("n1"))
            # THEN /readyz turns 503 while the stage is down (liveness stays 200)
            assert _wait(lambda: requests.get(srv.url + "/readyz", timeout=10).status_code == 503,
                         60)  # fmt: skip
            down = requests.get(srv.url + "/readyz", timeout=10).json()
            assert requests.get(srv.url + "/healthz", timeout=10).status_code == 200
            # AND once a replacement node with the same resource joins, it is ready again
            nodes["n1"] = c.add_node(**node, resources={"n1": 1})
            assert _wait(lambda: requests.get(srv.url + "/readyz", timeout=10).status_code == 200,
                         90)  # fmt: skip
            count = len(replies)
            assert _wait(lambda: len(replies) >= count + 2, 60)
            stop.set()
            worker.join(timeout=150)
            metrics = requests.get(srv.url + "/v1/metrics", timeout=30).json()
            text = requests.get(srv.url + "/metrics", timeout=30).text
    finally:
        stop.set()
        logging.getLogger("ray").removeHandler(ray_log)
        logging.getLogger("edgelesspart.pipeline").removeHandler(our_log)
    # THEN every request was answered 200 with the right output, some of them late
    assert [s for s, _ in replies] == [200] * len(replies)
    rows = [b["answers"][0] for _, b in replies]
    assert {r["label"] for r in rows} == {int(expected[0].argmax())}
    np.testing.assert_allclose([r["confidence"] for r in rows], expected[0].max(), atol=1e-5)
    assert any(r["attempts"] > 1 for r in rows)
    assert "stage1" in down["down"]
    # AND the metrics tell what happened to stage 1, with the reason
    s1 = metrics["stages"]["stage1"]
    assert s1["state"] == "up" and s1["failures"] >= 1 and s1["last_failure"]
    assert s1["recreations"] + s1["restarts"] >= 1
    assert metrics["failed"] == 0 and metrics["late"] >= 1
    assert 'edgelesspart_stage_up{stage="stage1"} 1' in text
    # AND the log has a few lines for the failure (down, re-created, up), no Ray "Unhandled
    # error" floods
    assert not [line for line in ray_log.lines if "Unhandled error" in line]
    assert all("stage1" in line for line in our_log.lines), our_log.lines
    assert 2 <= len(our_log.lines) <= 6, our_log.lines
