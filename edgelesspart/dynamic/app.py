"""HTTP front of a width-switching service: the pipeline dispatcher or the single-node edge.

Routes: those of the shared serving contract (:mod:`service_http.contract`: ``POST /v1/infer``
with tensors, JSON, base64 or images, one answer per row with the width of every stage;
``/v1/bundle``, ``/healthz``, ``/readyz``, ``/openapi.json``),
``GET /metrics`` (Prometheus text: width per stage, width changes, SLO attainment, counters),
``GET /v1/metrics`` (the same as JSON plus the recent decisions with their reasons),
``GET /healthz``. A full queue answers 429 with ``Retry-After`` (the edge narrows before it
gets there); a failed stage answers 503. :func:`create_app` wires a started
:class:`~edgelesspart.dynamic.pipeline.DynamicPipeline` or
:class:`~edgelesspart.dynamic.edge.WidthEdge`; nothing happens at import.
"""

from __future__ import annotations

import hashlib
import json
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
    if metrics.get("slo_attainment") is not None and metrics.get("slo_ms") is not None:
        lines += [
            "# TYPE edgelesspart_dynamic_slo_attainment gauge",
            f'edgelesspart_dynamic_slo_attainment{{slo_ms="{metrics["slo_ms"]:g}"}} '
            f"{metrics['slo_attainment']}",
        ]
    return "\n".join(lines) + "\n"


def create_app(
    service: Any, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY
) -> Flask:
    """The Flask app of a started width service: the shared serving contract
    (:func:`service_http.contract.contract_app` over a :class:`WidthBackend`) plus
    ``GET /v1/metrics`` (kept in ``app.extensions``)."""
    from flask import jsonify

    from service_http.contract import contract_app

    app = contract_app(
        EXTENSION, WidthBackend(service), token=token, max_body=max_body, title="serve-widths"
    )
    app.extensions[EXTENSION + ".service"] = service

    @app.get("/v1/metrics")
    def metrics_json():
        return jsonify(service.metrics())

    return app


def width_bundle_id(manifest: Any) -> str:
    """A width bundle's id: the SHA-256 of its manifest (``dynamic.json`` has none of its own)."""
    text = json.dumps(manifest.to_dict(), sort_keys=True).encode("utf-8")
    return "widths-" + hashlib.sha256(text).hexdigest()[:16]


class WidthBackend:
    """The contract's backend over a :class:`~edgelesspart.dynamic.edge.WidthEdge` (one node)
    or a started :class:`~edgelesspart.dynamic.pipeline.DynamicPipeline` (a chain on Ray).

    Every answer carries ``widths``, the width each stage computed the request at. Without
    exit heads ``exit`` is ``final`` and a threshold override is refused; a chain with exit
    heads (:func:`edgelesspart.dynamic.exits.add_width_exits`) and a cloud tail answers row by
    row: the exit or stage that answered, ``cloud`` for the cloud tail, ``degraded`` with the
    reason when the cloud failed and the last edge exit answered.
    """

    kind = "widths"

    def __init__(self, service: Any, *, max_batch: int = 64) -> None:
        from edgelesspart.runtime.codecs import decode_tensor, from_base64
        from edgelesspart.runtime.manifest import InputSpec
        from edgelesspart.runtime.preprocess import image_to_tensor
        from service_http.contract import InferTarget, threshold_checker

        self.service = service
        self.manifest = service.manifest
        self.edge = hasattr(service, "infer")
        spec = self.manifest.stages[0].input
        self.input = InputSpec(spec, dict(self.manifest.preprocessing))
        self.names = [f"stage{s.index}" for s in self.manifest.stages]
        self.bundle_id = width_bundle_id(self.manifest)
        self.target = InferTarget(
            bundle_id=self.bundle_id,
            rank=len(spec.shape),
            row_nbytes=spec.nbytes,
            max_batch=int(max_batch),
            decode_tensor=lambda body, limit: decode_tensor(body, max_bytes=limit),
            decode_base64=from_base64,
            decode_image=lambda body: image_to_tensor(body, self.input),
            check_threshold=threshold_checker(0.0, 1.0) if self.manifest.exits else None,
        )

    @property
    def composed(self) -> bool:
        """Exits or a cloud tail: rows answered one by one, each by its own exit."""
        return getattr(self.service, "threshold", None) is not None or (
            getattr(self.service, "offloader", None) is not None
        )

    def default_threshold(self) -> float | None:
        """The exits' threshold (``None`` without exits)."""
        return getattr(self.service, "threshold", None)

    def answer(self, x: np.ndarray, threshold: float | None) -> Any:
        """Answer the batch at the current widths (429 when the queue or window is full)."""
        from edgelesspart.pipeline.app import answer_or_refuse
        from edgelesspart.runtime.preprocess import validate_input
        from service_http.contract import Served, answer_row, as_batch

        rows = as_batch(np.asarray(x), len(self.target_shape))
        rows = validate_input(rows, self.manifest.stages[0].input)  # 422 before a stage runs
        if self.composed:
            results = [
                answer_or_refuse(lambda b: self.service.result(
                    self.service.submit(b, threshold=threshold)), rows[k : k + 1])
                for k in range(rows.shape[0])
            ]  # fmt: skip
            answers = [self._composed_row(r) for r in results]
            offloaded = sum(1 for r in results if r.offloaded)
            degraded = sum(1 for r in results if r.degraded)
            total = max(float(r.latency_ms) for r in results)
            return Served(answers, offloaded, degraded, {"total_ms": total})
        result = answer_or_refuse(lambda b: _answer(self.service, b), rows)
        probs = np.asarray(result.probs).reshape(rows.shape[0], -1)
        widths = list(result.widths)
        if len(widths) == 1 and len(self.names) > 1:  # the single-node edge: one width for all
            widths = widths * len(self.names)
        per_stage = dict(zip(self.names, widths))
        node = "edge" if self.edge else self.names[-1]
        timings = {"total": float(result.latency_ms)}
        answers = [
            answer_row(p, self.manifest.classes, exit="final", stage=self.names[-1],
                       timings=timings, node=node, widths=per_stage)
            for p in probs
        ]  # fmt: skip
        return Served(answers, 0, 0, {"total_ms": float(result.latency_ms)})

    def _composed_row(self, res: Any) -> dict[str, Any]:
        from service_http.contract import answer_row

        per_stage = dict(zip(self.names, res.widths))
        timings = {"chain": float(res.latency_ms - res.offload_ms), "total": float(res.latency_ms)}
        if res.cloud is not None:
            row = dict(res.cloud)
            row.update({"node": "cloud", "widths": per_stage, "degraded": False, "reason": None,
                        "timings": {**timings, "offload": float(res.offload_ms)}})  # fmt: skip
            return row
        return answer_row(
            res.probs, self.manifest.classes, exit=res.exit, stage=res.stage, timings=timings,
            degraded=res.degraded, reason=res.reason, node=res.stage, widths=per_stage,
        )  # fmt: skip

    @property
    def target_shape(self) -> tuple[int, ...]:
        """Shape of one input row."""
        return tuple(self.manifest.stages[0].input.shape)

    def bundle_summary(self) -> dict[str, Any]:
        """The width bundle: stages, widths each holds, the current widths, accuracy per width."""
        metrics = self.service.metrics()
        return {
            "bundle_id": self.bundle_id,
            "model": self.manifest.training.get("model", "chain_cnn"),
            "classes": list(self.manifest.classes),
            "input": self.input.to_dict(),
            "stages": list(self.names),
            "edge_stage": self.names[-1],
            "edge_stages": list(self.names),
            "segments": [],
            "exits": [
                {"name": e["name"], "stage": f"stage{e['stage']}"} for e in self.manifest.exits
            ],  # fmt: skip
            "threshold": self.default_threshold(),
            "max_batch": self.target.max_batch,
            "cloud": getattr(self.service, "cloud", None),
            "widths": list(self.manifest.widths),
            "current_widths": metrics.get("widths"),
            "slo_ms": metrics.get("slo_ms"),
            "uniform_accuracy": dict(self.manifest.uniform_accuracy),
        }

    def health(self) -> dict[str, Any]:
        """Ready when the stage actors (or the edge) are up; the current widths."""
        ready = True if self.edge else bool(getattr(self.service, "actors", []))
        return {"ready": ready, "widths": self.service.metrics().get("widths")}

    def metrics_text(self) -> str:
        """Width per stage, switches, SLO attainment (Prometheus text)."""
        return prometheus_text(self.service.metrics())


def _answer(service: Any, x: np.ndarray) -> Any:
    """``service.infer`` for the edge; submit + result for the pipeline."""
    if hasattr(service, "infer"):
        return service.infer(x)
    return service.result(service.submit(x))
