"""``edgelesspart replay`` against a live edge service with a live cloud behind it (loopback).

The edge and cloud apps run under waitress on real sockets; the replay posts real PNG files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from edgelesspart.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def serve(app):
    from edge_runtime.wsgi import BackgroundServer

    return BackgroundServer(app, threads=8).start()


@pytest.fixture(scope="module")
def services(tiny_bundle):
    from cloud_functions.local_server import create_app as cloud_app
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig

    cloud = serve(cloud_app(tiny_bundle))
    edge = serve(create_app(tiny_bundle, EdgeConfig(cloud=cloud.url, offload_timeout_s=10.0)))
    yield edge, cloud
    edge.stop()
    cloud.stop()


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """The 16 digits the ``digits`` fixture holds, as PNG files in one folder per class."""
    from conftest import digit_pngs
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("replay-pngs")
    labels = load_digits().target[:16]
    for index, (png, label) in enumerate(zip(digit_pngs(16), labels)):
        folder = root / str(int(label))
        folder.mkdir(exist_ok=True)
        (folder / f"{index:05d}.png").write_bytes(png)
    return root


def test_replay_measures_a_live_edge_service(services, png_folder, edge_confidence, tmp_path,
                                              capsys):
    edge, cloud = services
    # GIVEN a threshold half the digits clear at an edge exit
    ordered = np.sort(edge_confidence)
    threshold = float((ordered[7] + ordered[8]) / 2)
    expected_edge = int(np.sum(edge_confidence >= threshold))
    cloud_before = requests.get(f"{cloud.url}/v1/stats", timeout=10).json()["requests"]
    report_path = tmp_path / "replay.json"
    # WHEN the CLI replays the folder against the edge with two requests in flight
    code = main(["replay", edge.url, str(png_folder), "--threshold", f"{threshold:.9f}",
                 "--concurrency", "2", "--json", str(report_path), "--quiet"])
    out = capsys.readouterr().out
    # THEN every image is answered, and the mix is what the edge exits decide
    assert code == 0, out
    report = json.loads(report_path.read_text())
    assert report["answered"] == 16 and report["errors"] == 0
    assert report["edge_share"] == pytest.approx(expected_edge / 16)
    assert sum(report["exit_mix"].values()) == 16
    # AND the cloud calls and bytes come from the edge's metrics and match the cloud's counter
    cloud_after = requests.get(f"{cloud.url}/v1/stats", timeout=10).json()["requests"]
    assert report["cloud_calls"] == 16 - expected_edge == cloud_after - cloud_before
    assert report["metrics_source"] == "metrics" and report["bytes_sent"] > 0
    # AND accuracy is measured against the folder labels, cost against measured cloud time
    assert 0.0 <= report["accuracy"] <= 1.0 and report["extra"]["labelled"] == 16
    assert report["cost"] > 0 and report["cloud_ms_mean"] > 0
    assert report["latency_p95_ms"] >= report["latency_p50_ms"] > 0
    for words in ("exit mix", "edge share", "accuracy", "p50", "p95", "cloud calls", "cost"):
        assert words in out


def test_replay_uses_the_services_default_threshold(services, png_folder, tmp_path, capsys):
    edge, _ = services
    served = requests.get(f"{edge.url}/v1/bundle", timeout=10).json()["threshold"]
    path = tmp_path / "r.json"
    assert main(["replay", edge.url, str(png_folder), "--limit", "4", "--json", str(path),
                 "--quiet"]) == 0
    capsys.readouterr()
    report = json.loads(path.read_text())
    assert report["samples"] == 4 and report["threshold"] == pytest.approx(served)
