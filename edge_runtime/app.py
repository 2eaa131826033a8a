"""Flask app factory of the edge service.

Routes: ``POST /v1/infer``, ``GET /v1/bundle``, ``GET /healthz``, ``GET /metrics``,
``GET /openapi.json``. With a token, every route but ``EdgeConfig.public_routes`` (default:
``/healthz``) needs ``Authorization: Bearer <token>``. Nothing happens at import;
:func:`create_app` loads the bundle's edge stage and keeps the
:class:`~edge_runtime.service.EdgeService` in ``app.extensions["edgelesspart"]``.

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

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.config import EdgeConfig
from edge_runtime.openapi import TENSOR_MEDIA, openapi_document
from edge_runtime.service import EdgeService
from edgelesspart.errors import ConfigError
from service_http.admission import Admission
from service_http.auth import check_bearer, guarded
from service_http.errors import (
    BadRequest,
    BundleMismatch,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMedia,
    register_error_handlers,
)

if TYPE_CHECKING:
    from flask import Flask, Request

EXTENSION = "edgelesspart"
BUNDLE_HEADER = "X-EdgeLessPart-Bundle"
THRESHOLD_HEADER = "X-EdgeLessPart-Threshold"
TENSOR_TYPES = (TENSOR_MEDIA, "application/octet-stream")
IMAGE_TYPES = ("image/png", "image/jpeg")
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
    service: EdgeService, headers: Any, body: bytes
) -> tuple[np.ndarray, float | None] | None:
    """A well-formed tensor or image ``POST /v1/infer`` as ``(batch, threshold)``, else None.

    ``headers`` maps lower-case header names to values. No side effects: a request this
    refuses (``None``) or raises on is handed to the Flask route, which answers it. Checks:
    media type, bearer token, threshold header, decoding, bundle id, batch size.
    """
    config = service.config
    mimetype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mimetype not in TENSOR_TYPES and mimetype not in IMAGE_TYPES:
        return None
    if guarded("/v1/infer", config.token, config.public_routes):
        check_bearer(config.token, headers.get("authorization"))
    if mimetype in TENSOR_TYPES:
        x = _decode(body, service)
    else:
        from edgelesspart.runtime.preprocess import image_to_tensor

        x = image_to_tensor(body, service.bundle.manifest.input)
    threshold = _threshold(headers.get("x-edgelesspart-threshold"), service)
    _check_bundle(headers.get("x-edgelesspart-bundle"), service)
    _check_batch(x, service)
    return x, threshold


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
    """Parse the body of ``POST /v1/infer`` into a batch and an optional threshold override.

    Raises:
        ServiceError: empty or unreadable body, unknown media type, bundle mismatch, bad
            threshold, too many rows. Codec and input errors propagate as library errors.
    """
    body = request.get_data(cache=False)
    if not body:
        raise BadRequest(
            "Empty request body: send a tensor (application/x-edgelesspart-tensor), JSON "
            '{"inputs": [...]} or {"tensor_b64": "..."}, or a PNG/JPEG image.'
        )
    threshold_raw: Any = request.args.get("threshold", request.headers.get(THRESHOLD_HEADER))
    claimed = request.headers.get(BUNDLE_HEADER)
    mimetype = request.mimetype
    if mimetype in TENSOR_TYPES:
        x = _decode(body, service)
    elif mimetype == "application/json":
        payload = _json_body(body)
        if "threshold" in payload:
            threshold_raw = _json_threshold(payload["threshold"])
        claimed = payload.get("bundle_id", claimed)
        x = _json_input(payload, service)
    elif mimetype in IMAGE_TYPES:
        from edgelesspart.runtime.preprocess import image_to_tensor

        x = image_to_tensor(body, service.bundle.manifest.input)
    else:
        raise UnsupportedMedia(
            f"Content-Type {mimetype or '(none)'!r} is not supported; use one of "
            f"{', '.join(TENSOR_TYPES + ('application/json',) + IMAGE_TYPES)}."
        )
    _check_bundle(claimed, service)
    _check_batch(x, service)
    return x, _threshold(threshold_raw, service)


def _decode(body: bytes, service: EdgeService) -> np.ndarray:
    """Decode a wire-format tensor, refusing one bigger than ``max_batch`` float64 rows."""
    from edgelesspart.runtime.codecs import decode_tensor

    spec = service.bundle.manifest.input.tensor
    limit = service.config.max_batch * max(spec.nbytes, 1) * 2  # float64 rows are cast, not refused
    x, header = decode_tensor(body, max_bytes=limit)
    meta = header.get("meta") or {}
    if isinstance(meta, dict) and meta.get("bundle_id") is not None:
        _check_bundle(str(meta["bundle_id"]), service)
    return x


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # also: too deeply nested, too many digits
        raise BadRequest(f"Request body is not valid JSON: {exc}.", code="bad_json") from exc
    if not isinstance(payload, dict):
        raise BadRequest(
            f'JSON body must be an object like {{"inputs": [...]}}, got {type(payload).__name__}.',
            code="bad_json",
        )
    return payload


def _json_input(payload: dict[str, Any], service: EdgeService) -> np.ndarray:
    if "tensor_b64" in payload:
        from edgelesspart.runtime.codecs import from_base64

        encoded = payload["tensor_b64"]
        if not isinstance(encoded, str):
            raise BadRequest("tensor_b64 must be a base64 string.", code="bad_base64")
        return _decode(from_base64(encoded), service)
    if "inputs" in payload:
        return _inputs_array(payload["inputs"])
    raise BadRequest(
        f'JSON body needs "tensor_b64" or "inputs"; got keys {sorted(payload)}.', code="bad_json"
    )


def _inputs_array(inputs: Any) -> np.ndarray:
    """JSON ``inputs`` as a float32 array; numbers beyond float32 are refused, not made Inf."""
    try:
        wide = np.asarray(inputs, dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise BadRequest(
            f"inputs must be a rectangular nested list of numbers ({exc}).", code="bad_inputs"
        ) from exc
    if wide.ndim == 0:
        raise BadRequest("inputs must be a nested list, not a single number.", code="bad_inputs")
    limit = float(np.finfo(np.float32).max)
    finite = wide[np.isfinite(wide)]
    if finite.size and float(np.abs(finite).max()) > limit:
        raise InvalidInput(
            f"inputs has values beyond the float32 range (|x| > {limit:.3g}); scale the input "
            "as the bundle's preprocessing says."
        )
    return wide.astype(np.float32)


def _check_bundle(claimed: str | None, service: EdgeService) -> None:
    if claimed is not None and str(claimed) != service.bundle.bundle_id:
        raise BundleMismatch(
            f"Request is for bundle {claimed!r} but this service serves "
            f"{service.bundle.bundle_id!r}; fetch GET /v1/bundle and rebuild the client."
        )


def _check_batch(x: np.ndarray, service: EdgeService) -> None:
    rank = len(service.bundle.manifest.input.tensor.shape)
    rows = int(x.shape[0]) if x.ndim == rank + 1 else 1
    if rows > service.config.max_batch:
        raise PayloadTooLarge(
            f"Batch of {rows} rows is over this service's limit of {service.config.max_batch}; "
            "split the request."
        )
    if rows == 0:
        raise BadRequest("The batch is empty (0 rows); send at least one row.", code="empty_batch")


def _json_threshold(value: Any) -> float:
    """A JSON ``threshold`` field: a number, never ``true``/``false``, a string or null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(
            f"JSON field 'threshold' must be a number, got {type(value).__name__}; e.g. "
            '{"threshold": 0.8}.',
            code="bad_threshold",
        )
    return value


def _threshold(raw: Any, service: EdgeService) -> float | None:
    if raw is None:
        return None
    try:
        return service.config.check_threshold(raw)
    except ConfigError as exc:
        raise BadRequest(str(exc), code="bad_threshold") from exc
