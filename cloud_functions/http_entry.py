"""HTTP entry of the cloud part: a Flask app factory usable with any HTTP function host.

Routes: ``POST /v1/continue`` (body = an encoded tensor in the codec wire format; answers
``{"answers": [...], "bundle_id", "timings", "cold_start", ...}``), ``GET /healthz``,
``GET /metrics`` (Prometheus text) and ``GET /v1/stats`` (the request counters as JSON, so
tests and operators can see how many calls actually reached the cloud).

Auth: with a ``token`` (shared secret) ``/v1/continue`` needs either an HMAC signature of the
body (``X-EdgeLessPart-Signature`` + ``X-EdgeLessPart-Timestamp``, what the edge's
``HttpOffloader`` sends; see :mod:`edgelesspart.runtime.signing`) or ``Authorization: Bearer
<token>`` (for curl over TLS). A signature covers the body only (the tensor, its ``meta`` with
``bundle_id`` and ``threshold``) and the timestamp, not the URL or other headers, so a signed
request must not carry ``?threshold=`` or ``X-EdgeLessPart-Threshold``: it is refused with 400
``unsigned_threshold`` (put the threshold in the tensor's ``meta`` before signing). A bearer
request may use them (the token is the whole credential).

Order of work on ``/v1/continue``: auth first (cheap, before anything is loaded or queued), then
the cheap checks (content type, empty body, threshold), then admission control (a bounded number
of requests at work, the rest get 429 with ``Retry-After``), then the cloud part. An
unauthenticated flood is refused with 401 without taking an admission slot.

Deploy it with any WSGI host (waitress, gunicorn ``-k gthread``, Google Cloud Functions' Flask
adapter); ``edgelesspart serve-cloud`` serves it together with the Lambda Invoke API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_functions.handler import Container
from edgelesspart.errors import ConfigError
from edgelesspart.runtime import signing
from edgelesspart.runtime.batching import BatchSettings
from edgelesspart.runtime.executor import check_threshold
from service_http.admission import Admission
from service_http.auth import check_bearer, guarded, parse_routes
from service_http.errors import BadRequest, Unauthorized, UnsupportedMedia, register_error_handlers
from service_http.metrics import CONTENT_TYPE, Registry

if TYPE_CHECKING:
    from flask import Flask

EXTENSION = "edgelesspart"
TENSOR_TYPES = ("application/x-edgelesspart-tensor", "application/octet-stream")
THRESHOLD_HEADER = "X-EdgeLessPart-Threshold"
CONTINUE_ROUTE = "/v1/continue"
#: The Lambda Invoke API's routes (served by :mod:`cloud_functions.local_server`).
INVOKE_PREFIX = "/2015-03-31/"
DEFAULT_MAX_CONTENT_LENGTH = 8 * 1024 * 1024
#: How a request proved knowledge of the token (``check_auth``'s answers).
BY_SIGNATURE, BY_BEARER = "signature", "bearer"


@dataclass(frozen=True)
class CloudLimits:
    """Admission control of a cloud app: requests at work, waiting, wait time, Retry-After, and
    the Lambda ``Event`` invocations accepted but not finished (``None``: ``2 x max_queue``)."""

    max_inflight: int = 4
    max_queue: int = 16
    queue_timeout_s: float = 1.0
    retry_after_s: int = 1
    max_pending_events: int | None = None

    @property
    def event_backlog(self) -> int:
        """Largest number of ``Event`` invocations accepted (202) and not finished (>= 1)."""
        if self.max_pending_events is not None:
            return max(1, int(self.max_pending_events))
        return max(1, 2 * int(self.max_queue))


class CloudService:
    """What a cloud app keeps in ``app.extensions["edgelesspart"]``: the container and counters."""

    def __init__(
        self, container: Container, token: str | None = None, limits: CloudLimits | None = None
    ) -> None:
        self.container = container
        self.token = token
        self.registry = Registry()
        self.limits = limits = limits or CloudLimits()
        self.rejected = self.registry.counter(
            "edgelesspart_cloud_rejected_total", "Requests refused with 429, by reason."
        )
        self.admission = Admission(
            limits.max_inflight,
            limits.max_queue,
            limits.queue_timeout_s,
            limits.retry_after_s,
            on_reject=lambda reason: self.rejected.inc(reason=reason),
        )
        self.requests = self.registry.counter(
            "edgelesspart_cloud_requests_total", "Requests that reached the cloud part, by route."
        )
        self.rows = self.registry.counter(
            "edgelesspart_cloud_rows_total", "Rows the cloud part answered."
        )
        self.bytes_received = self.registry.counter(
            "edgelesspart_cloud_bytes_received_total",
            "Request body bytes received on the tensor routes, by route (continue: the encoded "
            "tensor; invoke: the Lambda JSON event with the tensor in base64).",
        )
        self.latency = self.registry.histogram(
            "edgelesspart_cloud_latency_seconds", "Wall time of a cloud request by route."
        )

    def stats(self) -> dict[str, Any]:
        """The counters as JSON: total, per route (``continue``, ``invoke``), rows answered."""
        per_route = {
            "continue": self.requests.value(route="continue"),
            "invoke": self.requests.value(route="invoke"),
        }
        return {
            "requests": int(sum(per_route.values())),
            **{k: int(v) for k, v in per_route.items()},
            "rows": int(self.rows.total()),
            "bytes_received": int(self.bytes_received.total()),
            "rejected": int(self.rejected.total()),
        }

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold an admission slot for the block (429 ``TooManyRequests`` if none comes)."""
        self.admission.enter()
        try:
            yield
        finally:
            self.admission.leave()

    def count(self, route: str, start: float, rows: int = 0) -> None:
        """Record one request on ``route`` that started at ``start`` (perf_counter)."""
        self.requests.inc(route=route)
        self.rows.inc(rows)
        self.latency.observe(time.perf_counter() - start, route=route)

    def check_token(self, header: str | None) -> None:
        """Refuse a request without the configured bearer token."""
        check_bearer(self.token, header)

    def check_auth(self, headers: Any, body: bytes) -> str | None:
        """Refuse a request that has neither a valid body signature nor the bearer token.

        Returns:
            How the request proved itself: :data:`BY_SIGNATURE`, :data:`BY_BEARER`, or ``None``
            when no token is configured (no auth).

        Raises:
            Unauthorized: a token is configured and the request proves no knowledge of it.
        """
        if not self.token:
            return None
        if signing.SIGNATURE_HEADER not in headers:
            self.check_token(headers.get("Authorization"))
            return BY_BEARER
        problem = signing.check_body(self.token, body, headers)
        if problem:
            raise Unauthorized(
                f"Request signature refused: {problem}. Sign the body with the shared secret "
                f"(HMAC-SHA256 of '<timestamp>.' + body, header {signing.SIGNATURE_HEADER})."
            )
        return BY_SIGNATURE


def create_app(
    bundle_path: str | Path | None = None,
    *,
    cloud: Any = None,
    token: str | None = None,
    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
    limits: CloudLimits | None = None,
    public_routes: tuple[str, ...] | str | None = None,
    batch: BatchSettings | None = None,
) -> Flask:
    """Build the cloud HTTP app.

    Args:
        bundle_path: the (cloud) bundle; default ``$EDGELESSPART_BUNDLE`` or ``./bundle``
            next to the handler.
        cloud: an already built ``CloudPart`` (tests) instead of loading ``bundle_path``.
        token: shared secret required on ``/v1/continue`` (``None``: no auth): a body
            signature or the bearer token.
        max_content_length: largest request body in bytes.
        limits: admission control (default :class:`CloudLimits`).
        public_routes: routes open without the token when one is set (default ``/healthz``
            only; ``/metrics`` and ``/v1/stats`` then need ``Authorization: Bearer <token>``).
        batch: dynamic batching of concurrent requests into one run of the cloud stages
            (default: off; ignored when ``cloud`` is given).
    """
    from flask import Flask

    container = Container(bundle_path, cloud=cloud, batch=batch)
    container.load()
    app = Flask("cloud_functions")
    app.config["MAX_CONTENT_LENGTH"] = max_content_length
    app.json.sort_keys = False
    service = CloudService(container, token, limits)
    app.extensions[EXTENSION] = service
    register_error_handlers(app)
    _guard_routes(app, service, parse_routes(public_routes))
    _register_routes(app, service)
    return app


def _guard_routes(app: Flask, service: CloudService, public: tuple[str, ...]) -> None:
    """Bearer token on every non-public route that has no auth of its own (metrics, stats)."""
    from flask import request

    own_auth = (CONTINUE_ROUTE, INVOKE_PREFIX)  # body signature / signed event, checked there

    @app.before_request
    def _check_token() -> None:
        path = request.path
        if guarded(path, service.token, public) and not path.startswith(own_auth):
            check_bearer(service.token, request.headers.get("Authorization"))


def _register_routes(app: Flask, service: CloudService) -> None:
    from flask import Response, jsonify, request

    @app.post("/v1/continue")
    def continue_request():
        start = time.perf_counter()
        body = request.get_data(cache=False)
        service.bytes_received.inc(len(body), route="continue")
        proof = service.check_auth(request.headers, body)  # before any slot or load
        if request.mimetype not in TENSOR_TYPES:
            raise UnsupportedMedia(
                f"Content-Type {request.mimetype or '(none)'!r} is not supported; send the "
                f"encoded tensor as {TENSOR_TYPES[0]}."
            )
        if not body:
            raise BadRequest("Empty request body: send an encoded tensor.", code="empty_body")
        threshold = _threshold(request, signed=proof == BY_SIGNATURE)
        with service.admitted():
            cloud, cold, init_ms = service.container.acquire()
            try:
                result = dict(cloud.continue_request(body, threshold=threshold))
            finally:
                service.count("continue", start)
        result.update(cold_start=cold, init_ms=init_ms)
        service.rows.inc(len(result.get("answers", [])))
        return jsonify(result)

    @app.get("/healthz")
    def health():
        cloud = service.container.load()
        return jsonify(status="ok", live=True, ready=True, bundle_id=_bundle_id(cloud))

    @app.get("/metrics")
    def metrics():
        return Response(service.registry.render(), content_type=CONTENT_TYPE)

    @app.get("/v1/stats")
    def stats():
        return jsonify(service.stats())


def _threshold(request: Any, *, signed: bool) -> float | None:
    """The ``?threshold=`` / ``X-EdgeLessPart-Threshold`` override, if any.

    Raises:
        BadRequest: it is not a number, or the request is signed (the signature covers the body
            only, so a threshold outside it could be changed by anyone on the way).
    """
    given = [raw for raw in (request.args.get("threshold"), request.headers.get(THRESHOLD_HEADER))
             if raw is not None]
    if not given:
        return None
    if signed:
        raise BadRequest(
            "This request is signed, and the signature covers the body only: send the threshold "
            "inside the signed tensor (meta.threshold), not as ?threshold= or "
            f"{THRESHOLD_HEADER}.",
            code="unsigned_threshold",
        )
    raw = given[0]
    try:
        return check_threshold(float(raw))
    except (ValueError, ConfigError) as exc:
        raise BadRequest(
            f"threshold must be a number >= 0, got {raw[:40]!r}.", code="bad_threshold"
        ) from exc


def _bundle_id(cloud: Any) -> str | None:
    bundle_id = getattr(cloud, "bundle_id", None)
    if bundle_id is None:
        bundle_id = getattr(getattr(cloud, "bundle", None), "bundle_id", None)
    return bundle_id
