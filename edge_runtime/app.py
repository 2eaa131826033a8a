"""Flask app factory of the edge service.

Routes: ``POST /v1/infer``, ``GET /v1/bundle``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``, ``GET /openapi.json`` -- the serving contract of :mod:`service_http.contract`.
With a token, every route but ``EdgeConfig.public_routes`` (default: ``/healthz``) needs
``Authorization: Bearer <token>``. Nothing happens at import; :func:`create_app` loads the
bundle's edge stage and keeps the :class:`~edge_runtime.service.EdgeService` in
``app.extensions["edgelesspart"]``.

``POST /v1/infer`` reads one of:

* ``application/x-edgelesspart-tensor`` (or ``application/octet-stream``): the codec wire
  format (small JSON header + tensor bytes, see ``edgelesspart.runtime.codecs``);
* ``application/json``: ``{"tensor_b64": ...}`` (the same bytes, base64) or
  ``{"inputs": nested lists}``, optionally with ``"threshold"`` and ``"bundle_id"``;
* ``image/png`` / ``image/jpeg``: one image, preprocessed as the manifest says.

The threshold may be overridden per request (``?threshold=``, header
``X-EdgeLessPart-Threshold`` or the JSON field) within the configured bounds.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.config import EdgeConfig
from edge_runtime.openapi import openapi_document
from edge_runtime.service import EdgeService
from edgelesspart.errors import ConfigError
from service_http.admission import Admission
from service_http.auth import check_bearer, guarded
from service_http.contract import (
    IMAGE_TYPES,
    TENSOR_TYPES,
    InferTarget,
    check_batch,
    check_bundle,
    decode_wire,
    read_infer,
)
from service_http.errors import BadRequest, register_error_handlers

if TYPE_CHECKING:
    from flask import Flask, Request

EXTENSION = "edgelesspart"
__all__ = ["IMAGE_TYPES", "TENSOR_TYPES", "create_app", "infer_body", "read_request"]
ADMITTED_ROUTES = frozenset({"/v1/infer"})


def create_app(
    bundle: str | Path | Any,
    config: EdgeConfig | None = None,
    *,
    offloader: Any = None,
) -> Flask:
    """Build the edge Flask app for a bundle.

    Args:
        bundle: a bundle directory, or an already loaded ``Bundle``.
        config: service settings (default :class:`EdgeConfig` from the environment).
        offloader: an ``Offloader`` to use instead of the one ``config.cloud`` names
            (e.g. ``InProcessOffloader`` in tests).

    Returns:
        The Flask app; the service is in ``app.extensions["edgelesspart"]``.
    """
    from flask import Flask

    config = config or EdgeConfig.from_env()
    if isinstance(bundle, (str, Path)):
        service = EdgeService.load(bundle, config, offloader)
    else:
        service = EdgeService(bundle, config, offloader)
    app = Flask("edge_runtime")
    app.config["MAX_CONTENT_LENGTH"] = config.max_content_length
    app.json.sort_keys = False
    app.extensions[EXTENSION] = service
    register_error_handlers(app)
    _register_hooks(app, service)
    _register_routes(app, service)
    _install_fast_infer(app, service)
    return app


def make_admission(config: EdgeConfig, metrics: Any) -> Admission:
    """The admission gate of ``/v1/infer``: sizes from ``config``, refusals counted."""
    return Admission(
        config.max_inflight,
        config.max_queue,
        config.queue_timeout_s,
        config.retry_after_s,
        on_reject=lambda reason: metrics.rejected.inc(reason=reason),
    )


def _register_hooks(app: Flask, service: EdgeService) -> None:
    from flask import g, request

    admission = make_admission(service.config, service.metrics)
    app.extensions[EXTENSION + ".admission"] = admission

    def live_gauges() -> None:  # before every /metrics rendering (and every publication)
        service.metrics.inflight.set(admission.running, state="running")
        service.metrics.inflight.set(admission.waiting, state="waiting")
        breaker = getattr(service.offloader, "breaker", None)
        if breaker is not None:
            service.metrics.observe_breaker(breaker)

    service.metrics.registry.on_render(live_gauges)

    @app.before_request
    def _start() -> None:
        g.edgelesspart_start = time.perf_counter()
        token = service.config.token
        if guarded(request.path, token, service.config.public_routes):
            check_bearer(token, request.headers.get("Authorization"))
        if request.path in ADMITTED_ROUTES and request.method == "POST":
            admission.enter()
            g.edgelesspart_admitted = True

    @app.teardown_request
    def _release(_exc: BaseException | None) -> None:
        if g.pop("edgelesspart_admitted", False):
            admission.leave()

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"  # bounded: templates
        service.metrics.requests.inc(route=route, status=str(response.status_code))
        start = g.get("edgelesspart_start")
        if start is not None:
            service.metrics.latency.observe(time.perf_counter() - start, route=route)
        return response


def _register_routes(app: Flask, service: EdgeService) -> None:
    from flask import Response, jsonify, request

    @app.post("/v1/infer")
    def infer():
        x, threshold = read_request(request, service)
        return jsonify(infer_body(service, x, threshold))

    @app.get("/v1/bundle")
    def bundle_info():
        return jsonify(bundle_summary(service))

    @app.get("/healthz")
    def health():
        ready = not service.closed
        breaker = getattr(service.offloader, "breaker", None)
        body = {
            "status": "ok" if ready else "stopping",
            "live": True,
            "ready": ready,
            "bundle_id": service.bundle.bundle_id,
            "cloud": {"kind": service.cloud_kind, "breaker": _breaker_state(breaker)},
        }
        return jsonify(body), 200 if ready else 503

    @app.get("/readyz")
    def ready():  # the shared contract's readiness route: the same body and status as /healthz
        return health()

    @app.get("/metrics")
    def metrics():
        from edge_runtime.metrics import CONTENT_TYPE

        return Response(service.metrics.render(), content_type=CONTENT_TYPE)

    @app.get("/openapi.json")
    def openapi():
        from edgelesspart import __version__

        return jsonify(openapi_document("EdgeLessPart edge", __version__, service.bundle.bundle_id))


def infer_body(service: EdgeService, x: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """Run ``POST /v1/infer`` on a parsed batch; the JSON-ready 200 body."""
    return answer_body(service, service.infer(x, threshold), threshold)


def answer_body(service: EdgeService, result: Any, threshold: float | None) -> dict[str, Any]:
    """The JSON-ready 200 body of ``POST /v1/infer`` for an :class:`InferenceResult`."""
    return {
        "answers": result.answers,
        "bundle_id": service.bundle.bundle_id,
        "threshold": service.config.threshold if threshold is None else threshold,
        "rows": len(result.answers),
        "offloaded": result.offloaded,
        "degraded": result.degraded,
        "timings": result.timings,
        "request_id": uuid.uuid4().hex,
    }


def prepare_fast(
    service: EdgeService, headers: Any, body: bytes, *, defer_images: bool = False
) -> tuple[Any, float | None] | None:
    """A well-formed tensor or image ``POST /v1/infer`` as ``(batch, threshold)``, else None.

    ``headers`` maps lower-case header names to values. No side effects: a request this
    refuses (``None``) or raises on is handed to the Flask route, which answers it. Checks:
    media type, bearer token, threshold header, decoding, bundle id, batch size.

    With ``defer_images`` an image is not decoded here: the batch is a callable that decodes
    it (and checks the batch) when called, so the caller can run the CPU-bound decode on a
    worker thread (the event-loop server's hot route). What it raises (an
    :class:`~edgelesspart.errors.InputError` for a body that is not a PNG/JPEG, too many
    pixels, a bundle that takes no images) is what the Flask route answers for that body,
    because the route decodes before any other check that can fail once these passed.
    """
    config = service.config
    mimetype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mimetype not in TENSOR_TYPES and mimetype not in IMAGE_TYPES:
        return None
    if guarded("/v1/infer", config.token, config.public_routes):
        check_bearer(config.token, headers.get("authorization"))
    if mimetype in TENSOR_TYPES:
        x: Any = _decode(body, service)
    elif defer_images:
        x = _image_decoder(body, service)
    else:
        x = _decode_image(body, service)
    threshold = _threshold(headers.get("x-edgelesspart-threshold"), service)
    _check_bundle(headers.get("x-edgelesspart-bundle"), service)
    if not callable(x):
        _check_batch(x, service)
    return x, threshold


def _decode_image(body: bytes, service: EdgeService) -> np.ndarray:
    """One PNG/JPEG body as a checked ``(1, H, W, C)`` batch."""
    from edgelesspart.runtime.preprocess import image_to_tensor

    x = image_to_tensor(body, service.bundle.manifest.input)
    _check_batch(x, service)
    return x


class _ImageDecoder:
    """A callable that decodes ``body`` with :func:`_decode_image` when called.

    ``pixels`` is what the image's header declares (``None`` when it is not a readable PNG or
    JPEG header), so a caller can decide where a decode that large should run.
    """

    __slots__ = ("body", "service", "pixels")

    def __init__(self, body: bytes, service: EdgeService) -> None:
        from edgelesspart.runtime.preprocess import image_pixels

        self.body, self.service = body, service
        self.pixels = image_pixels(body)

    def __call__(self) -> np.ndarray:
        return _decode_image(self.body, self.service)


def _image_decoder(body: bytes, service: EdgeService) -> Any:
    """An :class:`_ImageDecoder` for ``body``."""
    return _ImageDecoder(body, service)


class _EnvironHeaders:
    """The request headers of a WSGI environ, looked up by lower-case name."""

    __slots__ = ("_environ",)

    def __init__(self, environ: dict[str, Any]) -> None:
        self._environ = environ

    def get(self, name: str, default: Any = None) -> Any:
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self._environ.get(key, default)


def _install_fast_infer(app: Flask, service: EdgeService) -> None:
    """Serve well-formed tensor and image requests to ``/v1/infer`` without Flask's machinery.

    Only a tensor-format or PNG/JPEG body, without a query string, is taken: JSON bodies, and
    every request the checks refuse, go to the Flask route, whose hooks and handlers answer
    them as before (see :mod:`service_http.fastroute`). Under the event-loop server the same
    checks run in :func:`edge_runtime.fastpath.hot_route`.
    """
    from service_http.fastroute import FastRoute

    def prepare(environ: dict[str, Any], body: bytes) -> tuple[np.ndarray, float | None] | None:
        if environ.get("QUERY_STRING"):
            return None
        return prepare_fast(service, _EnvironHeaders(environ), body)

    app.wsgi_app = FastRoute(  # type: ignore[method-assign]
        app,
        "/v1/infer",
        prepare,
        lambda prepared: infer_body(service, *prepared),
        app.extensions[EXTENSION + ".admission"],
        service.metrics,
    )


def _breaker_state(breaker: Any) -> str | None:
    if breaker is None:
        return None
    state = breaker.state
    return str(getattr(state, "value", state))


def bundle_summary(service: EdgeService) -> dict[str, Any]:
    """What ``GET /v1/bundle`` answers: the bundle as this edge service serves it."""
    manifest = service.bundle.manifest
    return {
        "kind": "edge",  # the shared contract's server kind (edge, pipeline, widths, views)
        "bundle_id": manifest.bundle_id,
        "model": manifest.model,
        "classes": list(manifest.classes),
        "input": manifest.input.to_dict(),
        "stages": list(manifest.stage_names),
        "edge_stage": service.stage,
        "segments": [{"name": s.name, "stage": s.stage, "exit": s.exit} for s in manifest.segments],
        "exits": [
            {"name": e.name, "stage": e.stage, "cut_point": e.cut_point} for e in manifest.exits
        ],
        "codec": service.config.codec,
        "threshold": service.config.threshold,
        "threshold_range": [service.config.threshold_min, service.config.threshold_max],
        "max_batch": service.config.max_batch,
        "cloud": service.cloud_kind,
    }


def read_request(request: Request, service: EdgeService) -> tuple[np.ndarray, float | None]:
    """Parse the body of ``POST /v1/infer`` into a batch and an optional threshold override
    (the shared contract's decoding, :func:`service_http.contract.read_infer`).

    Raises:
        ServiceError: empty or unreadable body, unknown media type, bundle mismatch, bad
            threshold, too many rows. Codec and input errors propagate as library errors.
    """
    return read_infer(request, infer_target(service))


def infer_target(service: EdgeService) -> InferTarget:
    """What this edge service's ``/v1/infer`` accepts, for the shared contract's decoding."""
    from edgelesspart.runtime.codecs import decode_tensor, from_base64
    from edgelesspart.runtime.preprocess import image_to_tensor

    manifest = service.bundle.manifest
    return InferTarget(
        bundle_id=service.bundle.bundle_id,
        rank=len(manifest.input.tensor.shape),
        row_nbytes=manifest.input.tensor.nbytes,
        max_batch=service.config.max_batch,
        decode_tensor=lambda body, limit: decode_tensor(body, max_bytes=limit),
        decode_base64=from_base64,
        decode_image=lambda body: image_to_tensor(body, manifest.input),
        check_threshold=service.config.check_threshold,
    )


def _decode(body: bytes, service: EdgeService) -> np.ndarray:
    """Decode a wire-format tensor, refusing one bigger than ``max_batch`` float64 rows."""
    return decode_wire(body, infer_target(service))


def _check_bundle(claimed: str | None, service: EdgeService) -> None:
    check_bundle(claimed, service.bundle.bundle_id)


def _check_batch(x: np.ndarray, service: EdgeService) -> None:
    check_batch(x, len(service.bundle.manifest.input.tensor.shape), service.config.max_batch)


def _threshold(raw: Any, service: EdgeService) -> float | None:
    if raw is None:
        return None
    try:
        return service.config.check_threshold(raw)
    except ConfigError as exc:
        raise BadRequest(str(exc), code="bad_threshold") from exc
