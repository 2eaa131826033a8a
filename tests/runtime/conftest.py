"""Fixtures for the runtime-core tests: sample inputs and a tiny fake cloud on 127.0.0.1.

``fake_cloud`` is a real HTTP server (``http.server``, HTTP/1.1 keep-alive) on a free loopback
port. It speaks both cloud paths the offloaders use: ``POST /v1/continue`` (binary tensor body)
and the Lambda Invoke API ``POST /2015-03-31/functions/{name}/invocations`` (JSON event with
``tensor_b64``), so the real ``requests`` and ``boto3`` clients are exercised. Its ``mode``
selects a behaviour (answer, fail with a status, be slow, send garbage, ...), and it records
every request it receives.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgelesspart.runtime import codecs

LAMBDA_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


@dataclass
class Seen:
    """One request the fake cloud received."""

    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class FakeCloud:
    """State shared between the test and the server's handler threads."""

    url: str = ""
    port: int = 0
    mode: str = "ok"
    status: int = 500
    delay_s: float = 0.0
    cloud: Any = None  # a CloudPart for mode "cloud"
    reply: Any = None  # rows -> response body, for mode "reply" (malformed answers)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.seen)


def _fake_answers(rows: int) -> list[dict]:
    return [
        {"label": i % 10, "class_name": str(i % 10), "confidence": 0.99, "exit": "final",
         "stage": "cloud", "timings": {"total": 0.1}, "degraded": False, "reason": None}
        for i in range(rows)
    ]  # fmt: skip


def _continue(state: FakeCloud, body: bytes) -> tuple[int, dict, dict]:
    if state.mode == "cloud":
        try:
            return 200, state.cloud.continue_request(body), {}
        except Exception as exc:  # mirror an HTTP entry's 4xx JSON error
            return 400, {"error": {"type": type(exc).__name__, "message": str(exc)}}, {}
    array, _ = codecs.decode_tensor(body)
    rows = len(array)
    if state.mode == "reply":
        return 200, state.reply(rows), {}
    if state.mode == "wrong-count":
        rows += 1
    return 200, {"answers": _fake_answers(rows)}, {}


def _invoke(state: FakeCloud, body: bytes) -> tuple[int, dict, dict]:
    event = json.loads(body)
    if state.mode == "cloud":
        return 200, state.cloud.handle_event(event), {}
    if state.mode == "function-error":
        error = {"errorMessage": "boom", "errorType": "RuntimeError", "stackTrace": []}
        return 200, error, {"X-Amz-Function-Error": "Unhandled"}
    if state.mode == "handler-error":
        return 200, {"error": {"type": "BundleError", "message": "wrong bundle"}, "status": 409}, {}
    if state.mode == "too-large":
        return (
            413,
            {"message": "Request must be smaller than 6291456 bytes", "Type": "User"},
            {"x-amzn-ErrorType": "RequestTooLargeException"},
        )
    return _continue(state, codecs.from_base64(event["tensor_b64"]))


def _make_handler(state: FakeCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            return None

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                state.seen.append(Seen(self.path, dict(self.headers), body, self.client_address[1]))
            if state.delay_s:
                time.sleep(state.delay_s)
            if state.mode == "status":
                self._reply(state.status, {"error": {"type": "X", "message": "nope"}}, {})
            elif state.mode == "garbage":
                self._send(200, b"<html>not json</html>", {"Content-Type": "text/html"})
            elif self.path == "/v1/continue":
                self._reply(*_continue(state, body))
            elif LAMBDA_PATH.match(self.path.split("?")[0]):
                self._reply(*_invoke(state, body))
            else:
                self._reply(404, {"error": {"type": "NotFound", "message": self.path}}, {})

        def _reply(self, status: int, data: dict, headers: dict) -> None:
            self._send(status, json.dumps(data).encode(), headers)

        def _send(self, status: int, payload: bytes, headers: dict) -> None:
            self.send_response(status)
            self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def fake_cloud() -> Any:
    """A running fake cloud on 127.0.0.1 (port 0 -> a free port); stopped after the test."""
    state = FakeCloud()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    server.block_on_close = False
    state.port = server.server_address[1]
    state.url = f"http://127.0.0.1:{state.port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture(scope="session")
def digits_x() -> np.ndarray:
    """64 real digit images (32x32x3 float32 in [0, 1]); seeded noise if scikit-learn is absent."""
    try:
        from edgelesspart.model.datasets import load_dataset

        return np.ascontiguousarray(load_dataset("digits", seed=0).x_test[:64], np.float32)
    except ImportError:
        return np.random.default_rng(0).random((64, 32, 32, 3), dtype=np.float32)


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny bundle (for tampering tests)."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
