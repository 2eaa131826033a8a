"""AWS's Lambda Runtime Interface Emulator (RIE) for tests: the binary and a running instance.

The RIE binary ships inside the ``aws-sam-cli`` wheel (REFERENCE.md §1.3-1.4). It is downloaded
once with ``pip download --no-deps`` (never installed) and extracted into the git-ignored
``.bin/``; a test that needs it is skipped with the reason if that is impossible. RIE serves only
the function name ``function`` and one invocation at a time.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".bin" / "aws-lambda-rie-x86_64"
SAM_VERSION = "1.170.0"
MEMBER = "samcli/local/rapid/aws-lambda-rie-x86_64"
INVOKE = "http://127.0.0.1:{}/2015-03-31/functions/function/invocations"


def rie_binary() -> Path:
    """The RIE binary in .bin/ (downloaded and extracted once), or skip the test."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the Lambda RIE binary used here is for Linux x86_64 only")
    if BIN.is_file() and os.access(BIN, os.X_OK):
        return BIN
    with tempfile.TemporaryDirectory(prefix="sam-wheel-") as tmp:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps",
                 "--disable-pip-version-check", f"aws-sam-cli=={SAM_VERSION}", "-d", tmp],
                capture_output=True, text=True, timeout=240,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.skip("pip download of aws-sam-cli timed out; cannot get the Lambda RIE binary")
        wheels = list(Path(tmp).glob("aws_sam_cli-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"cannot download aws-sam-cli=={SAM_VERSION} for the RIE binary: "
                        f"{done.stderr.strip()[-300:]}")  # fmt: skip
        BIN.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            BIN.write_bytes(wheel.read(MEMBER))
    BIN.chmod(BIN.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return BIN


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    """Wait until ``port`` accepts connections; fail if ``process`` exits first."""
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


@contextlib.contextmanager
def running_rie(
    rie: Path, runtime: list[str], *, cwd: Path, env: dict[str, str], log: Path
) -> Iterator[int]:
    """RIE on free loopback ports running ``runtime`` (the runtime client command); yields the
    invoke port and stops the whole process group afterwards."""
    port, api_port = free_port(), free_port()
    command = [str(rie), "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
               "--runtime-api-address", f"127.0.0.1:{api_port}", *runtime]  # fmt: skip
    with open(log, "w") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for_port(port, process, log)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
