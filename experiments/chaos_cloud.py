"""A cloud part with a chaos switch, run as its own process by ``fault_harness.py``.

It is the real local cloud server (:func:`cloud_functions.local_server.create_app`: the HTTP
entry plus the Lambda Invoke API) behind a small WSGI middleware that misbehaves on demand for
``POST /v1/continue``:

* ``ok``      pass the request through;
* ``slow``    sleep ``--slow`` seconds (past the edge's timeout), then pass through;
* ``error``   answer 500 with a JSON error;
* ``garbage`` answer 200 with junk: bytes that are not JSON, JSON without ``answers``, the wrong
  number of answers, or truncated JSON (in turn);
* ``malformed`` run the request for real, then corrupt one field of every answer (in turn:
  ``timings`` not a mapping, ``label`` a string, ``confidence`` NaN, ``exit`` null): valid JSON,
  the right number of answers, wrong types;
* ``unauthorized`` answer 401 (an edge with the wrong token);
* ``notfound`` answer 404 (an edge with the wrong URL).

``POST /_chaos`` with ``{"mode": ...}`` switches the mode; ``GET /_chaos`` returns the mode and
how many ``/v1/continue`` calls arrived in each mode. Killing and restarting are done from the
outside (SIGKILL, then a new process on the same port). Loopback only; test tooling, not a
service.

Usage::

    .venv/bin/python experiments/chaos_cloud.py BUNDLE --port 9000 [--slow 1.0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

MODES = ("ok", "slow", "error", "garbage", "malformed", "unauthorized", "notfound")
#: How ``malformed`` corrupts an answer, in turn.
CORRUPTIONS = (
    ("timings", 7),
    ("label", "3"),
    ("confidence", float("nan")),
    ("exit", None),
)
REFUSALS = {
    "unauthorized": (
        "401 Unauthorized",
        b'{"error": {"code": "unauthorized", "message": "bad token"}}',
    ),
    "notfound": ("404 Not Found", b'{"error": {"code": "not_found", "message": "no such route"}}'),
}
GARBAGE = (
    b"\x00\xffthis is not json",
    b'{"bundle_id": "x", "timings": {}}',
    b'{"answers": [{"label": 1, "confidence": 0.5}, {"label": 2, "confidence": 0.5},'
    b' {"label": 3, "confidence": 0.5}, {"label": 4, "confidence": 0.5}]}',
    b'{"answers": [{"label": 1, "conf',
)


class ChaosMiddleware:
    """WSGI middleware that makes ``/v1/continue`` slow, failing or garbled on demand."""

    def __init__(self, app: Callable, slow_s: float = 1.0) -> None:
        self.app = app
        self.slow_s = float(slow_s)
        self.mode = "ok"
        self.seen = {mode: 0 for mode in MODES}
        self._lock = threading.Lock()
        self._garbage = itertools.cycle(GARBAGE)
        self._corruption = itertools.cycle(CORRUPTIONS)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == "/_chaos":
            return self._control(environ, start_response, method)
        if path != "/v1/continue" or method != "POST":
            return self.app(environ, start_response)
        with self._lock:
            mode = self.mode
            self.seen[mode] += 1
            junk = next(self._garbage)
            corruption = next(self._corruption)
        if mode in REFUSALS:
            return _reply(start_response, *REFUSALS[mode])
        if mode == "malformed":
            return self._malformed(environ, start_response, corruption)
        if mode == "slow":
            time.sleep(self.slow_s)
        elif mode == "error":
            body = b'{"error": {"type": "Chaos", "message": "injected 500"}, "status": 500}'
            return _reply(start_response, "500 Internal Server Error", body)
        elif mode == "garbage":
            return _reply(start_response, "200 OK", junk)
        return self.app(environ, start_response)

    def _malformed(
        self, environ: dict[str, Any], start_response: Callable, corruption: tuple[str, Any]
    ) -> list[bytes]:
        """The real answer with ``corruption`` (field, value) applied to every answer."""
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured["status"] = status
            return lambda _data: None

        body = b"".join(self.app(environ, capture))
        if not captured.get("status", "").startswith("200"):
            return _reply(start_response, captured.get("status", "500 Error"), body)
        data = json.loads(body)
        key, value = corruption
        for answer in data.get("answers", []):
            answer[key] = value
        return _reply(start_response, "200 OK", json.dumps(data).encode())

    def _control(self, environ: dict[str, Any], start_response: Callable, method: str):
        if method == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            wanted = json.loads(environ["wsgi.input"].read(size) or b"{}").get("mode")
            if wanted not in MODES:
                body = json.dumps({"error": f"mode must be one of {MODES}"}).encode()
                return _reply(start_response, "400 Bad Request", body)
            with self._lock:
                self.mode = wanted
        with self._lock:
            state = {"mode": self.mode, "seen": dict(self.seen)}
        return _reply(start_response, "200 OK", json.dumps(state).encode())


def _reply(start_response: Callable, status: str, body: bytes) -> list[bytes]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


def main(argv: list[str] | None = None) -> int:
    """Serve the chaos cloud on 127.0.0.1 until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slow", type=float, default=1.0, help="seconds of a slow answer")
    parser.add_argument("--threads", type=int, default=24)
    args = parser.parse_args(argv)

    from cloud_functions.local_server import create_app
    from service_http.wsgi import serve

    app = ChaosMiddleware(create_app(args.bundle), slow_s=args.slow)
    serve(app, host="127.0.0.1", port=args.port, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
