"""``build --nodes 2 --cloud-device lambda-2gb`` end to end: the plan (two edge stages and a cloud
tail, costed), ``evaluate`` on the bundle (edge-stage exit mix, offload share, cost), and the
chain served on Ray with its cloud part on loopback answering the rows no edge exit answered."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
pytestmark = [pytest.mark.needs_tf, pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def ray_local():
    from bundle_factory import start_local_ray

    start_local_ray()  # private (address="local"), one per module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def chain_cloud(tmp_path_factory):
    from edgelesspart.cli import main

    out = tmp_path_factory.mktemp("chain-cloud") / "bundle"
    argv = [
        "build", "--nodes", "2", "--edge-device", "rpi4", "--cloud-device", "lambda-2gb",
        "--link", "wifi", "--model", "small_cnn", "--epochs", "1", "--limit", "150",
        "--max-cut-points", "6", "--exits-per-part", "1", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_build_plans_edge_stages_and_a_costed_cloud_tail(chain_cloud, capsys):
    from edgelesspart.runtime.cloud import CloudPart
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(chain_cloud)
    stages = manifest.plan.stages
    # THEN two edge stages on rpi4 and a cloud stage on lambda-2gb, joined at the hand-off
    assert [(s.name, s.device, s.options["tier"]) for s in stages] == [
        ("stage0", "rpi4", "edge"), ("stage1", "rpi4", "edge"), ("cloud", "lambda-2gb", "cloud")
    ]  # fmt: skip
    tail = manifest.plan.parameters["cloud_tail"]
    assert tail["handoff"] == stages[2].start == stages[1].end
    assert tail["wire_bytes"] <= tail["payload_limit"] and tail["provider"] == "lambda"
    assert tail["latency_ms"] > tail["cloud_ms"] > 0 and tail["cost_per_million"] > 0
    # AND the cloud part loads the cloud stage only
    cloud = CloudPart(chain_cloud)
    assert list(cloud.bundle.stages) == ["cloud"]
    cloud.close()
    # AND evaluate reports the edge-stage exit mix, the offload share and the cost
    from edgelesspart.cli import main

    capsys.readouterr()
    assert main(["evaluate", str(chain_cloud), "--thresholds", "0.5,0.9,1.01"]) == 0
    shown = capsys.readouterr().out
    assert "chain + cloud tail" in shown and "offload" in shown
    report = json.loads((chain_cloud / "evaluation.json").read_text())
    by_t = {row["threshold"]: row for row in report["rows"]}
    assert by_t[1.01]["offload_share"] == 1.0 and by_t[1.01]["edge_exit_mix"] == {}
    assert by_t[0.5]["offload_share"] <= by_t[0.9]["offload_share"] <= 1.0
    assert by_t[1.01]["cost_per_million"] == pytest.approx(report["price_per_offload"] * 1e6)
    for row in report["rows"]:
        kept = sum(row["edge_exit_mix"].values()) / report["samples"]
        assert kept + row["offload_share"] == pytest.approx(1.0)
        assert set(row["edge_stage_share"]) <= {"stage0", "stage1"}


def test_the_chain_serves_with_its_cloud_tail(ray_local, chain_cloud):
    from cloud_functions.local_server import create_app as cloud_app
    from edgelesspart.pipeline.app import create_app
    from edgelesspart.pipeline.contract import edge_stage_names, make_offloader
    from edgelesspart.pipeline.dispatcher import Pipeline, default_stages, stages_with
    from edgelesspart.runtime.manifest import load_manifest
    from service_http.wsgi import BackgroundServer

    manifest = load_manifest(chain_cloud)
    edge = set(edge_stage_names(manifest))
    stages = stages_with([s for s in default_stages(manifest) if s.name in edge], threshold=0.8)
    x = np.random.default_rng(0).random((3, *manifest.input.tensor.shape), dtype=np.float32)
    with BackgroundServer(cloud_app(chain_cloud)) as cloud:
        offloader = make_offloader(cloud.url, codec=stages[-1].codec_out or "raw", timeout_s=10)
        with Pipeline(chain_cloud, stages, window=4) as pipe:
            with BackgroundServer(create_app(pipe, offloader=offloader, cloud=cloud.url)) as srv:
                body = requests.post(
                    srv.url + "/v1/infer", json={"inputs": x.tolist()},
                    params={"threshold": 1.0}, timeout=60,
                ).json()  # fmt: skip
    assert [s.name for s in pipe.stages] == ["stage0", "stage1"]
    assert body["rows"] == 3 and body["offloaded"] == 3 and body["degraded"] == 0, body
    assert all(a["stage"] == "cloud" and a["node"] == "cloud" for a in body["answers"])
