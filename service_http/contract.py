"""The serving contract every EdgeLessPart server keeps: ``serve-edge``, ``serve-pipeline``,
``serve-widths`` and ``serve-views``.

One request format, one answer format, one set of errors and one set of routes:

* ``POST /v1/infer`` reads a tensor in the codec wire format (``application/x-edgelesspart-
  tensor`` or ``application/octet-stream``), JSON ``{"inputs": nested lists}`` or
  ``{"tensor_b64": "..."}`` (optionally with ``"threshold"`` and ``"bundle_id"``), or one
  PNG/JPEG image. The threshold may be overridden with ``?threshold=``, the
  ``X-EdgeLessPart-Threshold`` header or the JSON field, where the server has exits; a server
  without exits refuses an override with 400 ``threshold_not_applicable``.
* The 200 body is :func:`infer_envelope`: ``answers`` (one :func:`answer_row` per input row:
  ``label``, ``class_name``, ``confidence``, ``exit``, ``stage``, ``timings``, ``degraded``,
  ``reason``; plus ``node`` and ``widths`` where they apply), ``bundle_id``, ``threshold``,
  ``rows``, ``offloaded``, ``degraded``, ``timings``, ``request_id``.
* Errors are the JSON errors of :mod:`service_http.errors`.
* ``GET /v1/bundle`` (what is served), ``GET /healthz`` (liveness), ``GET /readyz``
  (readiness, 503 when not ready), ``GET /metrics`` (Prometheus text, with the common
  ``edgelesspart_requests_total`` and ``edgelesspart_answers_total`` series) and
  ``GET /openapi.json``.

``serve-edge`` implements the contract in :mod:`edge_runtime.app` (its fast tensor route is its
own); the Ray-based servers build their app with :func:`contract_app` around a
:class:`ContractBackend`. This module imports no EdgeLessPart build or runtime code: what decodes
a tensor or an image is handed in through :class:`InferTarget`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from service_http.errors import (
    BadRequest,
    BundleMismatch,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMedia,
    register_error_handlers,
)

if TYPE_CHECKING:
    from flask import Flask

TENSOR_MEDIA = "application/x-edgelesspart-tensor"
TENSOR_TYPES = (TENSOR_MEDIA, "application/octet-stream")
IMAGE_TYPES = ("image/png", "image/jpeg")
JSON_MEDIA = "application/json"
BUNDLE_HEADER = "X-EdgeLessPart-Bundle"
THRESHOLD_HEADER = "X-EdgeLessPart-Threshold"
PUBLIC_ROUTES = ("/healthz", "/readyz")
#: The routes every server answers (the contract test suite checks each of them).
CONTRACT_ROUTES = ("/v1/infer", "/v1/bundle", "/healthz", "/readyz", "/metrics", "/openapi.json")
#: The keys of every row of ``answers`` (``node`` and ``widths`` are added where they apply).
ANSWER_KEYS = ("label", "class_name", "confidence", "exit", "stage", "timings", "degraded",
               "reason")  # fmt: skip
ENVELOPE_KEYS = ("answers", "bundle_id", "threshold", "rows", "offloaded", "degraded", "timings",
                 "request_id")  # fmt: skip


@dataclass(frozen=True)
class InferTarget:
    """What one server's ``POST /v1/infer`` accepts.

    Attributes:
        bundle_id: the served bundle (a request for another one is refused with 409).
        rank: rank of one input row (3 for ``(H, W, C)`` images).
        row_nbytes: bytes of one float32 row (bounds the decoded tensor).
        max_batch: most rows in one request (413 beyond).
        decode_tensor: ``(body, max_bytes) -> (array, header)``, the codec wire format.
        decode_base64: base64 text -> bytes of the wire format.
        decode_image: PNG/JPEG bytes -> ``(1, ...)`` batch, or ``None`` (415 for images).
        check_threshold: raw override -> checked float, or ``None`` when the server has no
            exits (an override is then refused).
        json_inputs: extra JSON reader for server-specific keys (``serve-views`` reads
            ``{"views": [...]}``); returns ``None`` when the payload is not its kind.
    """

    bundle_id: str
    rank: int
    row_nbytes: int
    max_batch: int
    decode_tensor: Callable[[bytes, int], tuple[np.ndarray, dict[str, Any]]]
    decode_base64: Callable[[str], bytes]
    decode_image: Callable[[bytes], np.ndarray] | None = None
    check_threshold: Callable[[Any], float] | None = None
    json_inputs: Callable[[dict[str, Any]], np.ndarray | None] | None = None


# ---------------------------------------------------------------------------- request decoding


def read_infer(request: Any, target: InferTarget) -> tuple[np.ndarray, float | None]:
    """Parse the body of ``POST /v1/infer`` (a Flask request) into a batch and a threshold.

    Raises:
        ServiceError: empty or unreadable body, unknown media type, bundle mismatch, bad
            threshold, too many rows. Codec and input errors propagate as library errors.
    """
    body = request.get_data(cache=False)
    return read_infer_body(
        body,
        request.mimetype or "",
        target,
        threshold=request.args.get("threshold", request.headers.get(THRESHOLD_HEADER)),
        claimed=request.headers.get(BUNDLE_HEADER),
    )


def read_infer_body(
    body: bytes,
    mimetype: str,
    target: InferTarget,
    *,
    threshold: Any = None,
    claimed: str | None = None,
) -> tuple[np.ndarray, float | None]:
    """:func:`read_infer` on a body and its media type (no Flask needed)."""
    if not body:
        raise BadRequest(
            "Empty request body: send a tensor (application/x-edgelesspart-tensor), JSON "
            '{"inputs": [...]} or {"tensor_b64": "..."}, or a PNG/JPEG image.'
        )
    mimetype = mimetype.lower()
    if mimetype in TENSOR_TYPES:
        x = decode_wire(body, target)
    elif mimetype == JSON_MEDIA:
        payload = json_body(body)
        if "threshold" in payload:
            threshold = json_threshold(payload["threshold"])
        claimed = payload.get("bundle_id", claimed)
        x = json_input(payload, target)
    elif mimetype in IMAGE_TYPES:
        if target.decode_image is None:
            raise UnsupportedMedia(
                "This bundle records no image preprocessing, so images cannot be read; send a "
                f"tensor ({TENSOR_MEDIA}) or JSON inputs."
            )
        x = target.decode_image(body)
    else:
        raise UnsupportedMedia(
            f"Content-Type {mimetype or '(none)'!r} is not supported; use one of "
            f"{', '.join(TENSOR_TYPES + (JSON_MEDIA,) + IMAGE_TYPES)}."
        )
    check_bundle(claimed, target.bundle_id)
    check_batch(x, target.rank, target.max_batch)
    return x, check_threshold_override(threshold, target)


def decode_wire(body: bytes, target: InferTarget) -> np.ndarray:
    """Decode a wire-format tensor, refusing one bigger than ``max_batch`` float64 rows."""
    limit = target.max_batch * max(target.row_nbytes, 1) * 2  # float64 rows are cast, not refused
    x, header = target.decode_tensor(body, limit)
    meta = header.get("meta") or {}
    if isinstance(meta, dict) and meta.get("bundle_id") is not None:
        check_bundle(str(meta["bundle_id"]), target.bundle_id)
    return x


def json_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body (400 ``bad_json`` otherwise)."""
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


def json_input(payload: dict[str, Any], target: InferTarget) -> np.ndarray:
    """The batch a JSON body carries: ``tensor_b64``, ``inputs`` or a server-specific key."""
    if "tensor_b64" in payload:
        encoded = payload["tensor_b64"]
        if not isinstance(encoded, str):
            raise BadRequest("tensor_b64 must be a base64 string.", code="bad_base64")
        return decode_wire(target.decode_base64(encoded), target)
    if "inputs" in payload:
        return inputs_array(payload["inputs"])
    if target.json_inputs is not None:
        x = target.json_inputs(payload)
        if x is not None:
            return x
    raise BadRequest(
        f'JSON body needs "tensor_b64" or "inputs"; got keys {sorted(payload)}.', code="bad_json"
    )


def inputs_array(inputs: Any) -> np.ndarray:
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


def check_bundle(claimed: str | None, bundle_id: str) -> None:
    """409 ``bundle_mismatch`` when a request names another bundle than the served one."""
    if claimed is not None and str(claimed) != bundle_id:
        raise BundleMismatch(
            f"Request is for bundle {claimed!r} but this service serves {bundle_id!r}; fetch "
            "GET /v1/bundle and rebuild the client."
        )


def check_batch(x: np.ndarray, rank: int, max_batch: int) -> None:
    """413 for more than ``max_batch`` rows, 400 ``empty_batch`` for none."""
    rows = int(x.shape[0]) if x.ndim == rank + 1 else 1
    if rows > max_batch:
        raise PayloadTooLarge(
            f"Batch of {rows} rows is over this service's limit of {max_batch}; split the request."
        )
    if rows == 0:
        raise BadRequest("The batch is empty (0 rows); send at least one row.", code="empty_batch")


def as_batch(x: np.ndarray, rank: int) -> np.ndarray:
    """``x`` with a leading batch axis (one sample of ``rank`` becomes a batch of one)."""
    return x[None] if x.ndim == rank else x


def json_threshold(value: Any) -> float:
    """A JSON ``threshold`` field: a number, never ``true``/``false``, a string or null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(
            f"JSON field 'threshold' must be a number, got {type(value).__name__}; e.g. "
            '{"threshold": 0.8}.',
            code="bad_threshold",
        )
    return value


def check_threshold_override(raw: Any, target: InferTarget) -> float | None:
    """The checked threshold override, ``None`` when none was sent."""
    if raw is None:
        return None
    if target.check_threshold is None:
        raise BadRequest(
            "This server has no early exits, so a confidence threshold does not apply; send the "
            "request without ?threshold=, X-EdgeLessPart-Threshold or a JSON threshold.",
            code="threshold_not_applicable",
        )
    try:
        return target.check_threshold(raw)
    except ValueError as exc:  # ConfigError is a ValueError
        raise BadRequest(str(exc), code="bad_threshold") from exc


def threshold_checker(low: float, high: float) -> Callable[[Any], float]:
    """A ``check_threshold`` accepting a number (or numeric string) in ``[low, high]``."""

    def check(raw: Any) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"threshold must be a number, got {raw!r}.") from exc
        if not low <= value <= high:
            raise ValueError(
                f"threshold {value:g} is outside this service's range [{low:g}, {high:g}]."
            )
        return value

    return check


# ---------------------------------------------------------------------------- answers


def answer_row(
    probs: np.ndarray | None,
    classes: tuple[str, ...] | list[str],
    *,
    exit: str | None,
    stage: str | None,
    timings: dict[str, float] | None = None,
    degraded: bool = False,
    reason: str | None = None,
    confidence: float | None = None,
    node: Any = None,
    widths: dict[str, float] | None = None,
) -> dict[str, Any]:
    """One row of ``answers`` from its class probabilities (``None``: no answer at all).

    ``confidence`` defaults to the top-1 probability; ``node`` (who computed it) and ``widths``
    (width per stage) are added only where they apply.
    """
    if probs is None:
        label, name, conf = None, None, 0.0
    else:
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        label = int(p.argmax())
        name = str(classes[label]) if label < len(classes) else str(label)
        conf = float(p[label])
    row: dict[str, Any] = {
        "label": label,
        "class_name": name,
        "confidence": float(conf if confidence is None else confidence),
        "exit": exit,
        "stage": stage,
        "timings": {str(k): float(v) for k, v in (timings or {}).items()},
        "degraded": bool(degraded),
        "reason": reason,
    }
    if node is not None:
        row["node"] = node
    if widths is not None:
        row["widths"] = {str(k): float(v) for k, v in widths.items()}
    return row


@dataclass(frozen=True)
class Served:
    """What a backend answers for one request: the rows and the request's totals."""

    answers: list[dict[str, Any]]
    offloaded: int = 0
    degraded: int = 0
    timings: dict[str, float] | None = None


def infer_envelope(served: Served, bundle_id: str, threshold: float | None) -> dict[str, Any]:
    """The 200 body of ``POST /v1/infer`` (the same keys as ``serve-edge``'s)."""
    return {
        "answers": served.answers,
        "bundle_id": bundle_id,
        "threshold": threshold,
        "rows": len(served.answers),
        "offloaded": int(served.offloaded),
        "degraded": int(served.degraded),
        "timings": dict(served.timings or {}),
        "request_id": uuid.uuid4().hex,
    }


# ---------------------------------------------------------------------------- the app


class ContractBackend(Protocol):
    """What :func:`contract_app` needs from a server (pipeline, widths, views)."""

    kind: str
    target: InferTarget

    def answer(self, x: np.ndarray, threshold: float | None) -> Served:
        """Answer every row of ``x`` (raise library errors, mapped to HTTP by the app)."""

    def default_threshold(self) -> float | None:
        """The threshold answers use when a request names none (``None``: no exits)."""

    def bundle_summary(self) -> dict[str, Any]:
        """``GET /v1/bundle`` (must hold ``bundle_id``, ``classes``, ``input``, ``stages``)."""

    def health(self) -> dict[str, Any]:
        """Server-specific health fields (``ready`` decides ``/readyz``)."""

    def metrics_text(self) -> str:
        """Server-specific Prometheus lines appended to the common ones."""


def contract_app(
    name: str,
    backend: ContractBackend,
    *,
    token: str | None = None,
    max_body: int = 32 * 2**20,
    title: str = "EdgeLessPart",
) -> Flask:
    """A Flask app serving the whole contract for ``backend``; it is kept in
    ``app.extensions[name]`` and servers add their own extra routes to the app returned."""
    from flask import Flask, Response, g, jsonify, request

    from service_http.auth import check_bearer
    from service_http.metrics import CONTENT_TYPE, Registry

    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = int(max_body)
    app.json.sort_keys = False
    app.extensions[name] = backend
    register_error_handlers(app)
    registry = Registry()
    requests_total = registry.counter(
        "edgelesspart_requests_total", "HTTP requests by route and status."
    )
    answers_total = registry.counter(
        "edgelesspart_answers_total", "Answered rows by exit and stage."
    )
    degraded_total = registry.counter(
        "edgelesspart_degraded_answers_total", "Rows answered degraded, by server kind."
    )
    latency = registry.histogram(
        "edgelesspart_request_latency_seconds", "Wall time of a request by route."
    )
    app.extensions[name + ".registry"] = registry

    @app.before_request
    def _start() -> None:
        g.edgelesspart_start = time.perf_counter()
        if token and request.path not in PUBLIC_ROUTES:
            check_bearer(token, request.headers.get("Authorization"))

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        requests_total.inc(route=route, status=str(response.status_code))
        start = g.get("edgelesspart_start")
        if start is not None:
            latency.observe(time.perf_counter() - start, route=route)
        return response

    @app.post("/v1/infer")
    def infer():
        x, threshold = read_infer(request, backend.target)
        served = backend.answer(x, threshold)
        for row in served.answers:
            answers_total.inc(exit=str(row.get("exit")), stage=str(row.get("stage")))
            if row.get("degraded"):
                degraded_total.inc(kind=backend.kind)
        used = backend.default_threshold() if threshold is None else threshold
        return jsonify(infer_envelope(served, backend.target.bundle_id, used))

    @app.get("/v1/bundle")
    def bundle():
        return jsonify({"kind": backend.kind, **backend.bundle_summary()})

    @app.get("/healthz")
    def healthz():  # liveness: the process answers (readiness, with its reasons, is /readyz)
        return jsonify(health_body(backend, live=True)), 200

    @app.get("/readyz")
    def readyz():
        body = health_body(backend, live=True)
        return jsonify(body), 200 if body["ready"] else 503

    @app.get("/metrics")
    def metrics():
        text = registry.render() + backend.metrics_text()
        return Response(text, content_type=CONTENT_TYPE)

    @app.get("/openapi.json")
    def openapi():
        from service_http.openapi import openapi_document

        return jsonify(
            openapi_document(
                f"{title} {backend.kind}",
                _version(),
                backend.target.bundle_id,
                thresholds=backend.target.check_threshold is not None,
            )
        )

    return app


def health_body(backend: ContractBackend, *, live: bool) -> dict[str, Any]:
    """The ``/healthz`` and ``/readyz`` body: ``status``, ``live``, ``ready``, ``bundle_id`` and
    the backend's own fields."""
    extra = dict(backend.health())
    ready = bool(extra.pop("ready", True))
    return {
        "status": "ok" if ready else "degraded",
        "live": live,
        "ready": ready,
        "bundle_id": backend.target.bundle_id,
        "kind": backend.kind,
        **extra,
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("edgelesspart")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "0"
