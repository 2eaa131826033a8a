"""Serve one hot ``POST`` route without Flask's per-request machinery (WSGI middleware).

Profiling the edge service under load (issue 15, P3) showed Flask's request context, routing,
hooks and ``jsonify`` costing more CPU per request than a batched LiteRT run of a small edge
part. :class:`FastRoute` wraps the Flask app's ``wsgi_app``: a request to its path that the
route's ``prepare`` accepts (the common, well-formed case) is answered here, with the same
admission gate, the same metrics, the same JSON bytes and the same error bodies; any other
request, and any request ``prepare`` refuses or fails on, goes to Flask unchanged (with the
body it already read put back), so every refusal is still rendered by the app's own handlers.

``prepare(environ, body)`` must have no side effects: it may return ``None`` or raise, and the
request is then simply handed to Flask. ``serve(prepared)`` runs inside the admission gate;
what it raises is rendered exactly as the app's error handlers render it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import Any

from service_http.errors import LOG, ServiceError, from_library_error, internal_error

__all__ = ["FastRoute", "service_error"]


def service_error(exc: BaseException) -> ServiceError:
    """The :class:`ServiceError` the app's error handlers would answer ``exc`` with."""
    from edgelesspart.errors import EdgeLessPartError

    if isinstance(exc, EdgeLessPartError):
        exc = from_library_error(exc)
    if isinstance(exc, ServiceError):
        if exc.status < 500:
            LOG.info("request refused: %s %s", exc.status, exc.message)
        return exc
    return internal_error(exc)


class FastRoute:
    """Answer ``POST path`` here when ``prepare`` accepts the request; else call Flask.

    Args:
        app: the Flask app (its ``wsgi_app`` is what other requests go to; its JSON provider
            makes the bodies, so they are byte-for-byte what ``jsonify`` makes).
        path: the route, e.g. ``/v1/infer``.
        prepare: ``(environ, body) -> prepared | None``; no side effects (see module doc).
        serve: ``prepared -> JSON-ready dict`` (the 200 body).
        admission: the route's :class:`~service_http.admission.Admission` (``enter``/``leave``).
        metrics: an object with ``requests`` (counter) and ``latency`` (histogram), as the
            app's ``after_request`` hook counts them.
    """

    def __init__(
        self,
        app: Any,
        path: str,
        prepare: Callable[[dict[str, Any], bytes], Any],
        serve: Callable[[Any], dict[str, Any]],
        admission: Any,
        metrics: Any,
    ) -> None:
        from werkzeug.http import HTTP_STATUS_CODES

        self._app = app
        self._next = app.wsgi_app
        self.path = path
        self._prepare, self._serve = prepare, serve
        self._admission, self._metrics = admission, metrics
        self._status = {code: f"{code} {text.upper()}" for code, text in HTTP_STATUS_CODES.items()}
        self.served = 0  # requests answered here (not by Flask): tests and benchmarks read it

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if (
            environ.get("PATH_INFO") != self.path
            or environ.get("REQUEST_METHOD") != "POST"
            or environ.get("SCRIPT_NAME")
            or self._app.debug  # debug: Flask's pretty JSON and its debugger
        ):
            return self._next(environ, start_response)
        start = time.perf_counter()
        body = self._read(environ)
        if body is None:
            return self._next(environ, start_response)
        try:
            prepared = self._prepare(environ, body)
        except Exception:  # noqa: BLE001 - Flask parses it again and renders the refusal
            prepared = None
        if prepared is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self._next(environ, start_response)
        return self._answer(prepared, start, start_response)

    def _read(self, environ: dict[str, Any]) -> bytes | None:
        """The body when its length is declared and within the app's limit, else ``None``."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        limit = self._app.config.get("MAX_CONTENT_LENGTH")
        if length <= 0 or (limit is not None and length > limit):
            return None  # Flask answers the empty body or the 413
        return environ["wsgi.input"].read(length)

    def _dumps(self, obj: Any) -> bytes:
        """``obj`` as ``jsonify`` writes it (the app's JSON provider, compact, a newline)."""
        return (self._app.json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")

    def _answer(self, prepared: Any, start: float, start_response: Callable) -> Iterable[bytes]:
        admitted = False
        try:
            self._admission.enter()
            admitted = True
            status, data, headers = 200, self._dumps(self._serve(prepared)), {}
        except Exception as exc:  # noqa: BLE001 - rendered as the app's handlers render it
            err = service_error(exc)  # also a 200 body that cannot be JSON: a 500, as in Flask
            status, data, headers = err.status, self._dumps(err.to_dict()), err.headers
        finally:
            if admitted:
                self._admission.leave()
        header_list = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        header_list += list(headers.items())
        start_response(self._status.get(status, f"{status} UNKNOWN"), header_list)
        self.served += 1
        self._metrics.requests.inc(route=self.path, status=str(status))
        self._metrics.latency.observe(time.perf_counter() - start, route=self.path)
        return [data]
