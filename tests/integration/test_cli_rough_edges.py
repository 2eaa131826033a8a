"""What a new user meets on the command line: a taken port, an edge without a cloud part."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("command", ["serve-edge", "serve-cloud"])
def test_a_taken_port_is_one_line_and_exit_2(tiny_bundle, command):
    # GIVEN a port something else already listens on
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # WHEN the service is started on it
        done = subprocess.run(
            [sys.executable, "-m", "edgelesspart.cli", command, str(tiny_bundle),
             "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    # THEN it exits 2 with one line naming the address, no traceback, no "listening" claim
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert errors == [f"edgelesspart {command}: error: {errors[-1].split(': error: ')[1]}"]
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0] and "--port" in errors[0]
    assert " on http://" not in done.stdout


def test_edge_only_startup_line_says_edge_only(tiny_bundle):
    # GIVEN a free port taken for a moment, then released, so the edge binds and we can stop it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "edgelesspart.cli", "serve-edge", str(tiny_bundle),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(20)
    assert f"on http://127.0.0.1:{port} (edge only: no cloud part;" in line
    assert "None" not in line
