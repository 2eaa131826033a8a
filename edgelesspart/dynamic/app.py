"""HTTP front of a width-switching service: the pipeline dispatcher or the single-node edge.

Routes (the style of ``serve-edge`` and ``serve-pipeline``): ``POST /v1/infer`` (an encoded
tensor, ``application/x-edgelesspart-tensor``, or JSON ``{"inputs": nested lists}``),
``GET /metrics`` (Prometheus text: width per stage, width changes, SLO attainment, counters),
``GET /v1/metrics`` (the same as JSON plus the recent decisions with their reasons),
``GET /healthz``. A full queue answers 429 with ``Retry-After`` (the edge narrows before it
gets there); a failed stage answers 503. :func:`create_app` wires a started
:class:`~edgelesspart.dynamic.pipeline.DynamicPipeline` or
:class:`~edgelesspart.dynamic.edge.WidthEdge`; nothing happens at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from flask import Flask

EXTENSION = "edgelesspart_dynamic"
DEFAULT_MAX_BODY = 32 * 2**20


def prometheus_text(metrics: dict[str, Any]) -> str:
    """Width per stage, width changes, SLO attainment and request counters, Prometheus text."""
    lines = []
    for key in ("submitted", "completed", "rejected"):
        lines += [
            f"# TYPE edgelesspart_dynamic_{key}_total counter",
            f"edgelesspart_dynamic_{key}_total {metrics[key]}",
        ]
    lines += ["# TYPE edgelesspart_dynamic_width gauge"]
    for stage in metrics["stages"]:
        lines.append(f'edgelesspart_dynamic_width{{stage="{stage["stage"]}"}} {stage["width"]}')
    lines += ["# TYPE edgelesspart_dynamic_width_switches_total counter"]
    for stage in metrics["stages"]:
        lines.append(
            f'edgelesspart_dynamic_width_switches_total{{stage="{stage["stage"]}"}} '
            f"{stage['switches']}"
        )
    lines += [
        "# TYPE edgelesspart_dynamic_decisions_recent gauge",
        f"edgelesspart_dynamic_decisions_recent {len(metrics['decisions'])}",
    ]
    if metrics.get("slo_attainment") is not None:
        lines += [
            "# TYPE edgelesspart_dynamic_slo_attainment gauge",
            f'edgelesspart_dynamic_slo_attainment{{slo_ms="{metrics["slo_ms"]:g}"}} '
            f"{metrics['slo_attainment']}",
        ]
    return "\n".join(lines) + "\n"


def create_app(
    service: Any, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> Flask:
    """The Flask app of a started width service (kept in ``app.extensions``)."""
    from flask import Response, jsonify, request

    from edgelesspart.pipeline.app import _read_input, answer_or_refuse, base_app

    app = base_app(EXTENSION, service, token=token, max_body=max_body)

    @app.post("/v1/infer")
    def infer():
        answer = answer_or_refuse(lambda x: _answer(service, x), _read_input(request))
        probs = np.asarray(answer.probs)
        return jsonify(
            {
                "seq": answer.seq,
                "top1": probs.argmax(axis=-1).tolist(),
                "probs": probs.tolist(),
                "widths": list(answer.widths),
                "latency_ms": round(answer.latency_ms, 3),
            }
        )

    @app.get("/metrics")
    def metrics_text():
        return Response(prometheus_text(service.metrics()), mimetype="text/plain")

    @app.get("/v1/metrics")
    def metrics_json():
        return jsonify(service.metrics())

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "widths": service.metrics()["widths"]})

    return app


def _answer(service: Any, x: np.ndarray) -> Any:
    """``service.infer`` for the edge; submit + result for the pipeline."""
    if hasattr(service, "infer"):
        return service.infer(x)
    return service.result(service.submit(x))
