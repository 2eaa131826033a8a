"""HTTP front of the dispatcher: the shared serving contract (Flask app factory).

Routes: those of :mod:`service_http.contract` (``POST /v1/infer`` with tensors, JSON, base64
or images, one answer per row naming its exit, stage and node; ``/v1/bundle``, ``/openapi.json``,
``GET /healthz`` (liveness: the dispatcher answers) and ``GET /readyz`` (readiness: 503 while any
stage is down)), ``GET /metrics`` (Prometheus text: per-stage busy seconds, queue length, bytes
in/out; per-stage health: up, restarts, re-placements, failures; dispatcher counters),
``GET /v1/metrics`` (the same as JSON, with each stage's state and last failure reason),
``GET /v1/pipeline`` (stages, segments, codecs, placement). A full in-flight window answers 429
with ``Retry-After``; a stage still down at the request's deadline answers 503 with
``Retry-After``; stages that are up but too slow answer 504 -- every request gets an answer.
Errors are the shared JSON errors of
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
DEFAULT_MAX_BODY = 32 * 2**20


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
    from service_http.contract import PUBLIC_ROUTES
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


def create_app(
    pipeline: Any,
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    offloader: Any = None,
    cloud: str | None = None,
) -> Flask:
    """The dispatcher's Flask app for a started pipeline: the shared serving contract
    (:func:`service_http.contract.contract_app` over a
    :class:`~edgelesspart.pipeline.contract.PipelineBackend`, with the cloud tail ``offloader``)
    plus ``GET /v1/metrics`` and ``GET /v1/pipeline``."""
    from flask import jsonify

    from edgelesspart.pipeline.contract import PipelineBackend
    from service_http.contract import contract_app

    backend = PipelineBackend(
        pipeline, offloader=offloader, cloud=cloud, refuse=answer_or_refuse, render=prometheus_text
    )
    app = contract_app(EXTENSION, backend, token=token, max_body=max_body, title="serve-pipeline")
    app.extensions[EXTENSION + ".pipeline"] = pipeline

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
                "cloud": cloud,
            }
        )

    return app
