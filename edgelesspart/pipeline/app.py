"""HTTP front of the dispatcher: the shared serving contract (Flask app factory).

Routes: those of :mod:`service_http.contract` (``POST /v1/infer`` with tensors, JSON, base64
or images, one answer per row naming its exit, stage and node; ``/v1/bundle``, ``/readyz``,
``/openapi.json``), ``GET /metrics`` (Prometheus text: per-stage busy seconds, queue
length, bytes in/out, restarts seen; dispatcher counters), ``GET /v1/metrics`` (the same as
JSON), ``GET /v1/pipeline`` (stages, segments, codecs, placement), ``GET /healthz``. A full
in-flight window answers 429 with ``Retry-After``; a stage that still fails after Ray's
restarts and retries answers 503 -- never a silent loss. Errors are the shared JSON errors of
:mod:`service_http.errors`. Nothing happens at import; :func:`create_app` wires a started
:class:`~edgelesspart.pipeline.dispatcher.Pipeline`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edgelesspart.errors import PipelineBusy, PipelineError

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
    return "\n".join(lines) + "\n"


def answer_or_refuse(call: Any, x: np.ndarray) -> Any:
    """``call(x)``, with a full window as 429 and a failed stage as 503 ``pipeline_unavailable``."""
    from service_http.errors import ServiceError, TooManyRequests

    try:
        return call(x)
    except PipelineBusy as exc:
        raise TooManyRequests(str(exc)) from exc
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
