"""HTTP front of the dispatcher, in the style of ``serve-edge`` (Flask app factory).

Routes: ``POST /v1/infer`` (an encoded tensor, ``application/x-edgelesspart-tensor``, or JSON
``{"inputs": nested lists}``), ``GET /metrics`` (Prometheus text: per-stage busy seconds, queue
length, bytes in/out; per-stage health: up, restarts, re-placements, failures; dispatcher
counters), ``GET /v1/metrics`` (the same as JSON, with each stage's state and last failure
reason), ``GET /v1/pipeline`` (stages, segments, codecs, placement), ``GET /healthz`` (liveness:
the dispatcher answers) and ``GET /readyz`` (readiness: 503 while any stage is down). A full
in-flight window answers 429 with ``Retry-After``; a stage still down at the request's deadline
answers 503 with ``Retry-After``; stages that are up but too slow answer 504 -- every request
gets an answer. Errors are the shared JSON errors of
:mod:`service_http.errors`. Nothing happens at import; :func:`create_app` wires a started
:class:`~edgelesspart.pipeline.dispatcher.Pipeline`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgelesspart.errors import DeadlineExceeded, PipelineBusy, PipelineError, StageUnavailable

if TYPE_CHECKING:
    from flask import Flask

EXTENSION = "edgelesspart_pipeline"
TENSOR_TYPES = ("application/x-edgelesspart-tensor", "application/octet-stream")
DEFAULT_MAX_BODY = 32 * 2**20
PUBLIC_ROUTES = ("/healthz", "/readyz")


def _read_input(request: Any) -> np.ndarray:
    from edgelesspart.runtime.codecs import decode_tensor
    from service_http.errors import BadRequest, UnsupportedMedia

    ctype = (request.mimetype or "").lower()
    if ctype in TENSOR_TYPES:
        array, _ = decode_tensor(request.get_data(cache=False))
        return array
    if ctype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "inputs" not in body:
            raise BadRequest('Send JSON {"inputs": [...]} or an encoded tensor body.')
        try:
            return np.asarray(body["inputs"], dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"'inputs' is not a numeric array: {exc}.") from exc
    raise UnsupportedMedia(
        f"Content type {ctype or 'none'!r} is not read here; send {TENSOR_TYPES[0]} or JSON."
    )


def prometheus_text(metrics: dict[str, Any]) -> str:
    """The dispatcher metrics in Prometheus text exposition format."""
    lines = []
    for key in ("submitted", "completed", "failed", "rejected"):
        lines.append(f"# TYPE edgelesspart_pipeline_{key}_total counter")
        lines.append(f"edgelesspart_pipeline_{key}_total {metrics[key]}")
    lines.append("# TYPE edgelesspart_pipeline_in_flight gauge")
    lines.append(f"edgelesspart_pipeline_in_flight {metrics['in_flight']}")
    series = {
        "items_total": "items",
        "busy_seconds_total": "busy_s",
        "host_cpu_seconds_total": "host_cpu_s",
        "link_seconds_total": "link_s",
        "bytes_in_total": "bytes_in",
        "bytes_out_total": "bytes_out",
        "queue_length": "queue",
        "restarts_seen": "restarts_seen",
        "host_bound_items_total": "host_bound_items",
    }
    for metric, field in series.items():
        kind = "gauge" if metric in ("queue_length", "restarts_seen") else "counter"
        lines.append(f"# TYPE edgelesspart_stage_{metric} {kind}")
        for stage, values in metrics["stages"].items():
            lines.append(f'edgelesspart_stage_{metric}{{stage="{stage}"}} {values[field]}')
    lines += health_lines("stage", metrics["stages"])
    for key in ("retried", "late", "unavailable", "deadline_exceeded"):
        lines.append(f"# TYPE edgelesspart_pipeline_{key}_total counter")
        lines.append(f"edgelesspart_pipeline_{key}_total {metrics.get(key, 0)}")
    lines.append("# TYPE edgelesspart_pipeline_ready gauge")
    lines.append(f"edgelesspart_pipeline_ready {int(bool(metrics.get('ready')))}")
    return "\n".join(lines) + "\n"


def health_lines(label: str, stages: dict[str, dict[str, Any]]) -> list[str]:
    """Prometheus lines of the supervisor's per-stage health (up, restarts, re-placements,
    re-creations, failures); the last failure reason is in the JSON metrics."""
    lines = []
    for key, kind in (("up", "gauge"), ("restarts", "counter"), ("replacements", "counter"),
                      ("recreations", "counter"), ("failures", "counter")):  # fmt: skip
        metric = f"edgelesspart_{label}_{key}" + ("_total" if kind == "counter" else "")
        lines.append(f"# TYPE {metric} {kind}")
        for name, values in stages.items():
            lines.append(f'{metric}{{{label}="{name}"}} {int(values.get(key) or 0)}')
    return lines


def base_app(name: str, service: Any, *, token: str | None, max_body: int) -> Flask:
    """A Flask app with the shared JSON errors, a body limit and the bearer token on every route
    but :data:`PUBLIC_ROUTES`; ``service`` is kept in ``app.extensions[name]``."""
    from flask import Flask, request

    from service_http.auth import check_bearer
    from service_http.errors import register_error_handlers

    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = int(max_body)
    app.extensions[name] = service
    register_error_handlers(app)

    @app.before_request
    def _auth() -> None:
        if token and request.path not in PUBLIC_ROUTES:
            check_bearer(token, request.headers.get("Authorization"))

    return app


def answer_or_refuse(call: Any, x: np.ndarray) -> Any:
    """``call(x)``, with a full window as 429, a stage down past the deadline as 503
    ``stage_unavailable`` (with ``Retry-After``), a missed deadline as 504 ``deadline_exceeded``
    and any other chain failure as 503 ``pipeline_unavailable``."""
    from service_http.errors import ServiceError, TooManyRequests

    try:
        return call(x)
    except PipelineBusy as exc:
        raise TooManyRequests(str(exc)) from exc
    except StageUnavailable as exc:
        retry = str(max(1, round(exc.retry_after_s)))
        raise ServiceError(
            str(exc), status=503, code="stage_unavailable", headers={"Retry-After": retry}
        ) from exc
    except DeadlineExceeded as exc:
        raise ServiceError(str(exc), status=504, code="deadline_exceeded") from exc
    except PipelineError as exc:
        raise ServiceError(str(exc), status=503, code="pipeline_unavailable") from exc


def readiness(ready: bool, stages: dict[str, dict[str, Any]]) -> tuple[Any, int]:
    """The ``/readyz`` body and status: 200 when every stage is up, else 503."""
    from flask import jsonify

    down = {n: v.get("state") for n, v in stages.items() if not v.get("up")}
    body = {"ready": bool(ready), "down": down,
            "stages": {n: v.get("state") for n, v in stages.items()}}  # fmt: skip
    return jsonify(body), 200 if ready else 503


def create_app(
    pipeline: Any, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> Flask:
    """The dispatcher's Flask app for a started pipeline (kept in ``app.extensions``)."""
    from flask import Response, jsonify, request

    app = base_app(EXTENSION, pipeline, token=token, max_body=max_body)

    @app.post("/v1/infer")
    def infer():
        result = answer_or_refuse(pipeline.infer, _read_input(request))
        probs = np.asarray(result.probs)
        return jsonify(
            {
                "seq": result.seq,
                "exit": result.exit,
                "answered_by": result.stage,
                "top1": probs.argmax(axis=-1).tolist(),
                "probs": probs.tolist(),
                "latency_ms": round(result.latency_ms, 3),
                "attempts": result.attempts,
            }
        )

    @app.get("/metrics")
    def metrics_text():
        return Response(prometheus_text(pipeline.metrics()), mimetype="text/plain")

    @app.get("/v1/metrics")
    def metrics_json():
        return jsonify(pipeline.metrics())

    @app.get("/v1/pipeline")
    def describe():
        return jsonify(
            {
                "bundle_id": pipeline.manifest.bundle_id,
                "window": pipeline.window,
                "stages": [s.to_dict() for s in pipeline.stages],
                "workers": pipeline.workers,
            }
        )

    @app.get("/healthz")
    def healthz():  # liveness: the dispatcher process answers; readiness is /readyz
        return jsonify({"status": "ok", "ready": pipeline.ready()})

    @app.get("/readyz")
    def readyz():
        health = pipeline.supervisor.metrics() if pipeline.supervisor is not None else {}
        return readiness(pipeline.ready(), health)

    return app
