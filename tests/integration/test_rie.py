"""The Lambda handler under AWS's own runtime: the Runtime Interface Emulator + awslambdaric.

The RIE binary ships inside the ``aws-sam-cli`` wheel (REFERENCE.md §1.3-1.4). At setup it is
downloaded once with ``pip download --no-deps`` (never installed) and extracted into the
git-ignored ``.bin/``; the test is skipped with the reason if that is impossible. RIE serves
only the function name ``function`` and one invocation at a time, so calls are sequential.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".bin" / "aws-lambda-rie-x86_64"
SAM_VERSION = "1.170.0"
MEMBER = "samcli/local/rapid/aws-lambda-rie-x86_64"
INVOKE = "http://127.0.0.1:{}/2015-03-31/functions/function/invocations"


def _download_rie() -> Path:
    """Extract the RIE from the aws-sam-cli wheel into .bin/ (cached), or skip."""
    if BIN.is_file() and os.access(BIN, os.X_OK):
        return BIN
    with tempfile.TemporaryDirectory(prefix="sam-wheel-") as tmp:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps",
                 "--disable-pip-version-check", f"aws-sam-cli=={SAM_VERSION}", "-d", tmp],
                capture_output=True, text=True, timeout=240,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("pip download of aws-sam-cli timed out; cannot get the Lambda RIE binary")
        wheels = list(Path(tmp).glob("aws_sam_cli-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"cannot download aws-sam-cli=={SAM_VERSION} for the RIE binary: "
                        f"{done.stderr.strip()[-300:]}")
        BIN.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            BIN.write_bytes(wheel.read(MEMBER))
    BIN.chmod(BIN.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return BIN


@pytest.fixture(scope="session")
def rie() -> Path:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the Lambda RIE binary used here is for Linux x86_64 only")
    return _download_rie()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"RIE exited early:\n{log.read_text()[-2000:]}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"RIE did not listen on {port} within {seconds} s")


@pytest.fixture()
def lambda_runtime(rie, tiny_bundle, tmp_path):
    """RIE running ``python -m awslambdaric cloud_functions.handler.handler`` on free ports."""
    port, api_port = _free_port(), _free_port()
    log = tmp_path / "rie.log"
    env = {
        **os.environ,
        "EDGELESSPART_BUNDLE": str(tiny_bundle),
        "AWS_LAMBDA_FUNCTION_NAME": "edgelesspart-cloud",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "60",
        "LAMBDA_TASK_ROOT": str(REPO),
        "PYTHONPATH": str(REPO),
    }
    command = [
        str(rie), "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
        "--runtime-api-address", f"127.0.0.1:{api_port}",
        sys.executable, "-m", "awslambdaric", "cloud_functions.handler.handler",
    ]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_port(port, process, log)
        yield port, log
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_handler_under_the_real_lambda_runtime(lambda_runtime, tiny_bundle):
    from edgelesspart.runtime.codecs import encode_tensor, to_base64
    from edgelesspart.runtime.manifest import load_manifest

    port, log = lambda_runtime
    bundle_id = load_manifest(tiny_bundle).bundle_id
    boundary = np.random.default_rng(2).random((2, 16, 16, 16), dtype=np.float32)
    event = {"tensor_b64": to_base64(encode_tensor(boundary, meta={"bundle_id": bundle_id})),
             "threshold": 2.0}
    # WHEN the handler is invoked twice through RIE (which starts the runtime lazily)
    first = requests.post(INVOKE.format(port), json=event, timeout=90)
    second = requests.post(INVOKE.format(port), json=event, timeout=60)
    bad = requests.post(INVOKE.format(port), json={"threshold": 1}, timeout=60)
    # THEN the first is a cold start that reports its init time, the second is warm
    assert first.status_code == 200, first.text
    cold, warm = first.json(), second.json()
    assert cold["cold_start"] is True and cold["init_ms"] > 0
    assert warm["cold_start"] is False
    assert [a["exit"] for a in cold["answers"]] == ["final", "final"]
    assert cold["bundle_id"] == bundle_id
    # AND a bad event is a handled 4xx error body
    assert bad.status_code == 200 and bad.json()["status"] == 400
    # AND the request ids RIE assigned are the ones in the answers and in our log lines
    text = log.read_text()
    assert f"START RequestId: {cold['request_id']}" in text
    assert f"[{cold['request_id']}] cold start" in text
    assert f"[{warm['request_id']}] answered 2 rows" in text
