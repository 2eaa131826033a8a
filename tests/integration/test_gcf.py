"""The GCF package served by the real ``functions-framework`` server answers the edge's offloads.

``package-cloud --provider gcf`` writes a source directory; it is served from that directory
alone (``PYTHONPATH`` = the package, TensorFlow blocked through ``sitecustomize``) by the
``functions-framework`` CLI (gunicorn) on 127.0.0.1, and the edge service offloads to it over
HTTP with signed requests, as it would to a deployed function URL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOKEN = "gcf-test-secret"
TIMEOUT = 15
BLOCK_TF = """
import importlib.abc, sys

class _BlockHeavy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras"):
            raise ImportError(name + " is not in a Cloud Functions image")
        return None

sys.meta_path.insert(0, _BlockHeavy())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, deadline_s: float = 90.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"functions-framework exited: {proc.stdout.read()[-3000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError("functions-framework did not become healthy in time")


@pytest.fixture(scope="module")
def gcf_source(tiny_bundle, tmp_path_factory) -> Path:
    from edgelesspart.cli import main

    out = tmp_path_factory.mktemp("gcf")
    assert main(["package-cloud", str(tiny_bundle), "--provider", "gcf", "--out", str(out)]) == 0
    (out / "function" / "sitecustomize.py").write_text(BLOCK_TF)  # test-only, not shipped
    return out / "function"


@pytest.fixture(scope="module")
def gcf(gcf_source):
    port = _free_port()
    binary = Path(sys.executable).with_name("functions-framework")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(gcf_source),
        "EDGELESSPART_TOKEN": TOKEN,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.Popen(
        [
            str(binary),
            "--target",
            "edgelesspart",
            "--source",
            str(gcf_source / "main.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=gcf_source,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_package_is_a_functions_framework_source_directory(gcf_source):
    names = {p.relative_to(gcf_source).as_posix() for p in gcf_source.rglob("*") if p.is_file()}
    assert {"main.py", "requirements.txt", "bundle/manifest.json"} <= names
    assert "cloud_functions/gcf_entry.py" in names and "edgelesspart/runtime/executor.py" in names
    requirements = (gcf_source / "requirements.txt").read_text()
    assert "functions-framework==" in requirements and "ai-edge-litert==" in requirements
    assert "tensorflow" not in requirements
    assert not any(n.endswith(".keras") for n in names)  # LiteRT segments only
    assert "@functions_framework.http" in (gcf_source / "main.py").read_text()
    assert (gcf_source.parent / "function.zip").stat().st_size < 100 * 2**20


def test_edge_offloads_to_the_function_over_http(gcf, tiny_bundle, digits, full_model_labels):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig
    from edge_runtime.wsgi import BackgroundServer

    # GIVEN the edge service pointed at the function URL, signing with the shared token
    config = EdgeConfig(
        cloud=gcf, cloud_token=TOKEN, threshold=2.0, threshold_max=2.0, offload_timeout_s=10.0
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = requests.get(f"{gcf}/v1/stats", headers=auth, timeout=TIMEOUT).json()["requests"]
    with BackgroundServer(create_app(str(tiny_bundle), config), threads=4) as edge:
        # WHEN samples that no edge exit may answer are posted to the edge
        x = digits[:6]
        reply = requests.post(f"{edge.url}/v1/infer", json={"inputs": x.tolist()}, timeout=TIMEOUT)
    # THEN every one is offloaded to the function and answered with the full model's label
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["offloaded"] == 6 and body["degraded"] == 0
    labels = [a["label"] for a in body["answers"]]
    assert labels == list(np.asarray(full_model_labels[:6]))
    after = requests.get(f"{gcf}/v1/stats", headers=auth, timeout=TIMEOUT).json()["requests"]
    assert after > before


def test_function_refuses_unsigned_offloads(gcf):
    from edgelesspart.runtime.codecs import encode_tensor

    body = encode_tensor(np.zeros((1, 16, 16, 16), np.float32), "raw")
    reply = requests.post(
        f"{gcf}/v1/continue",
        data=body,
        timeout=TIMEOUT,
        headers={"Content-Type": "application/x-edgelesspart-tensor"},
    )
    assert reply.status_code == 401
    assert reply.headers["Content-Type"].startswith("application/json")


def test_package_and_evaluate_default_to_the_plans_cloud_provider(tiny_bundle, tmp_path):
    # GIVEN the tiny bundle (cloud stage on "host": no provider) and a copy planned for Lambda
    import shutil
    from dataclasses import replace

    from edgelesspart.profiling.devices import bundle_cloud_provider
    from edgelesspart.runtime.manifest import load_manifest, write_manifest

    copy = tmp_path / "lambda-bundle"
    shutil.copytree(tiny_bundle, copy)
    manifest = load_manifest(copy, verify=False)
    stages = (*manifest.plan.stages[:-1], replace(manifest.plan.stages[-1], device="lambda-2gb"))
    write_manifest(copy, replace(manifest, plan=replace(manifest.plan, stages=stages)))
    # THEN package-cloud and evaluate both pick gcf for the first and lambda for the second
    assert bundle_cloud_provider(tiny_bundle) == "gcf"
    assert bundle_cloud_provider(copy) == "lambda"
