"""``serve-edge --workers 2`` and ``serve-cloud --workers 2``: pre-forked workers on one port,
metrics summed across them, a killed worker restarted (real processes, real loopback HTTP)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc")
TENSOR = "application/x-edgelesspart-tensor"
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _start(args: list[str], ready_path: str, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGELESSPART_METRICS_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "edgelesspart.cli", *args, "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(url + ready_path, timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server {args} did not start")


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _count(metrics: str, status: str = "200") -> float:
    pattern = r'edgelesspart_requests_total\{route="/v1/infer",status="' + status + r'"\} (\S+)'
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


def test_serve_edge_workers_share_the_port_and_sum_their_metrics(tiny_bundle, digits, tmp_path):
    from edgelesspart.runtime.codecs import encode_tensor

    # GIVEN serve-edge with two pre-forked workers
    proc, url = _start(["serve-edge", str(tiny_bundle), "--workers", "2"], "/healthz", tmp_path)
    try:
        workers = _children(proc.pid)
        # WHEN 24 requests arrive, each on a new connection (the kernel spreads connections)
        body = encode_tensor(np.ascontiguousarray(digits[:1], np.float32), "raw")
        codes = [requests.post(url + "/v1/infer", data=body, timeout=30,
                               headers={"Content-Type": TENSOR, "Connection": "close"}).status_code
                 for _ in range(24)]  # fmt: skip
        time.sleep(1.5)  # every worker publishes its numbers once a second
        metrics = requests.get(url + "/metrics", timeout=10).text
        # THEN two workers answered all of them, and /metrics counts all 24 whichever answers
        assert len(workers) == 2
        assert codes == [200] * 24
        assert _count(metrics) == 24
        assert len(list(tmp_path.glob("*.prom"))) == 2  # both workers served (and published)
        # AND a killed worker is replaced, and the totals do not go down
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(_children(proc.pid)) - {workers[0]}) < 2:
            time.sleep(0.2)
        assert len(set(_children(proc.pid)) - {workers[0]}) == 2
        time.sleep(1.5)
        assert _count(requests.get(url + "/metrics", timeout=10).text) >= 24
    finally:
        _stop(proc)
    assert proc.returncode == 0 and not _children(proc.pid)


def test_serve_cloud_workers_answer_and_sum_their_metrics(tiny_bundle, tmp_path):
    # GIVEN serve-cloud with two pre-forked workers
    proc, url = _start(["serve-cloud", str(tiny_bundle), "--workers", "2"], "/healthz", tmp_path)
    try:
        # WHEN probes arrive on new connections
        codes = [requests.get(url + "/healthz", timeout=10, headers={"Connection": "close"})
                 .status_code for _ in range(10)]  # fmt: skip
        time.sleep(1.5)
        text = requests.get(url + "/metrics", timeout=10).text
        # THEN both workers run and the metrics are one summed exposition (one TYPE per name)
        assert len(_children(proc.pid)) == 2 and codes == [200] * 10
        types = [line for line in text.splitlines() if line.startswith("# TYPE")]
        assert types and len(types) == len(set(types))
    finally:
        _stop(proc)
    assert proc.returncode == 0
