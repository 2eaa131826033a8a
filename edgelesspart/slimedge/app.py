"""HTTP front of a SlimEdge deployment on Ray (``edgelesspart serve-views``), Flask app factory.

Routes: ``POST /v1/infer`` (JSON ``{"views": [view0, view1, ...]}``: one sample, every view as
a nested ``(H, W, C)`` list; the answer names the views that were fused), ``GET /metrics``
(Prometheus text: per device alive, ratio, missed deadlines and swaps; failures, re-plans,
answers and degraded answers), ``GET /v1/metrics`` (the same as JSON, with every re-plan),
``GET /v1/deployment`` (devices, plan, failure plans), ``GET /healthz`` (liveness: 503 only
once every device is lost) and ``GET /readyz`` (503 while any device is lost or the aggregator is
down; answers continue, degraded, from the survivors). A lost device rejoins once a node offers
its resource again. Errors are the shared JSON errors of :mod:`service_http.errors` through
:func:`edgelesspart.pipeline.app.base_app`. :func:`service_from_deployment` starts the
:class:`~edgelesspart.slimedge.ray_runtime.SlimEdgeService` of an exported deployment directory.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgelesspart.errors import BundleError, PlanError

if TYPE_CHECKING:
    from flask import Flask

EXTENSION = "edgelesspart_slimedge"
DEFAULT_MAX_BODY = 8 * 2**20
DEFAULT_MAX_DROP = 0.02


def load_deployment(path: str | Path) -> dict[str, Any]:
    """``deployment.json`` of an exported deployment, with its directory under ``"root"``."""
    root = Path(path)
    try:
        manifest = json.loads((root / "deployment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"{root} is not a SlimEdge deployment (deployment.json unreadable: {exc}); build one "
            "with `edgelesspart build --views N --devices ...`."
        ) from exc
    return {**manifest, "root": str(root)}


def service_from_deployment(
    manifest: dict[str, Any],
    *,
    resources: list[str | None] | None = None,
    emulate: bool = False,
    deadline_s: float = 2.0,
    max_missed: int = 2,
    request_deadline_s: float = 30.0,
    revive: bool = True,
) -> Any:
    """Start the Ray service of a deployment (Ray must be connected): the chosen plan's
    segments, the precomputed single-failure plans, NSGA-II for several failures."""
    from edgelesspart.slimedge import optimize
    from edgelesspart.slimedge.curves import CurveModel, ViewCurves
    from edgelesspart.slimedge.ray_runtime import SlimEdgeService

    root = Path(manifest["root"])
    read = lambda rel: (root / rel).read_bytes()  # noqa: E731
    library = {(s["view"], float(s["ratio"])): read(s["tflite"])
               for s in manifest["segments"].values()}  # fmt: skip
    slots = [optimize.DeviceSlot.from_dict(d) for d in manifest["devices"]]
    precomputed = {
        int(k): optimize.SlimPlan.from_dict(p) for k, p in manifest["failure_plans"].items()
    }
    drop = float(manifest.get("max_accuracy_drop") or DEFAULT_MAX_DROP)
    model = CurveModel(ViewCurves.load(root / "curves.json"))
    planner = optimize.failure_planner(model, slots, precomputed, max_drop=drop)
    return SlimEdgeService(
        library,
        read(manifest["fusion"]["tflite"]),
        manifest["plan"]["ratios"],
        planner,
        factors=[s.factor for s in slots] if emulate else None,
        deadline_s=deadline_s,
        max_missed=max_missed,
        resources=resources,
        request_deadline_s=request_deadline_s,
        revive=revive,
    )


def _read_views(request: Any, manifest: dict[str, Any]) -> list[np.ndarray]:
    from service_http.errors import BadRequest, InvalidInput, UnsupportedMedia

    if (request.mimetype or "").lower() != "application/json":
        raise UnsupportedMedia('Send JSON {"views": [view0, view1, ...]}, one sample.')
    body = request.get_json(silent=True)
    n, shape = int(manifest["views"]), tuple(manifest["view_shape"])
    if not isinstance(body, dict) or not isinstance(body.get("views"), list):
        raise BadRequest('Send JSON {"views": [view0, view1, ...]}: one (H, W, C) list per view.')
    if len(body["views"]) != n:
        raise InvalidInput(f"The deployment has {n} views; got {len(body['views'])}.")
    views = []
    for v, raw in enumerate(body["views"]):
        try:
            array = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"View {v} is not a numeric array: {exc}.") from exc
        if array.shape != shape:
            raise InvalidInput(f"View {v} has shape {list(array.shape)}; expected {list(shape)}.")
        views.append(array[None])
    return views


def metrics(service: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Per device state and the failure/re-plan counters (one heartbeat per alive device)."""
    states = {s["view"]: s for s in service.states()} if service.alive else {}
    stats = service.stats
    devices = []
    for v, slot in enumerate(manifest["devices"]):
        state = states.get(v, {})
        devices.append({"view": v, "device": slot["name"], "alive": v in service.alive,
                        "ratio": service.ratios[v], "missed": service.missed[v],
                        "swaps": state.get("swaps", 0),
                        "state": "up" if v in service.alive else "lost",
                        "failures": stats.lost_devices.count(v),
                        "rejoins": stats.rejoined_devices.count(v),
                        "last_failure": stats.last_failure.get(v)})  # fmt: skip
    return {
        "answered": stats.answered,
        "degraded_answers": stats.degraded_answers,
        "failures": len(stats.lost_devices),
        "lost_devices": list(stats.lost_devices),
        "rejoined_devices": list(stats.rejoined_devices),
        "aggregator_retries": stats.aggregator_retries,
        "ready": service.ready(),
        "replans": list(stats.replans),
        "devices": devices,
    }


def prometheus_text(m: dict[str, Any]) -> str:
    """:func:`metrics` in Prometheus text exposition format."""
    lines = []
    for key, name in (("answered", "answered"), ("degraded_answers", "degraded_answers"),
                      ("failures", "device_failures")):  # fmt: skip
        lines += [f"# TYPE edgelesspart_slimedge_{name}_total counter",
                  f"edgelesspart_slimedge_{name}_total {m[key]}"]  # fmt: skip
    lines += ["# TYPE edgelesspart_slimedge_replans_total counter",
              f"edgelesspart_slimedge_replans_total {len(m['replans'])}"]  # fmt: skip
    lines += ["# TYPE edgelesspart_slimedge_ready gauge",
              f"edgelesspart_slimedge_ready {int(bool(m.get('ready')))}"]  # fmt: skip
    for field, kind in (("alive", "gauge"), ("ratio", "gauge"), ("missed", "gauge"),
                        ("swaps", "counter"), ("rejoins", "counter")):  # fmt: skip
        metric = f"edgelesspart_slimedge_device_{field}" + ("_total" if kind == "counter" else "")
        lines.append(f"# TYPE {metric} {kind}")
        for d in m["devices"]:
            value = int(d[field]) if field == "alive" else d[field]
            lines.append(f'{metric}{{view="{d["view"]}",device="{d["device"]}"}} {value}')
    return "\n".join(lines) + "\n"


def create_app(
    service: Any,
    manifest: dict[str, Any],
    *,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> Flask:
    """The Flask app over a started :class:`SlimEdgeService` (kept in ``app.extensions``)."""
    from flask import Response, jsonify, request

    from edgelesspart.errors import StageUnavailable
    from edgelesspart.pipeline.app import base_app
    from service_http.errors import ServiceError

    app = base_app(EXTENSION, service, token=token, max_body=max_body)
    lock = threading.Lock()  # the dispatcher's failure bookkeeping is single-threaded

    @app.post("/v1/infer")
    def infer():
        views = _read_views(request, manifest)
        with lock:
            degraded = service.stats.degraded_answers
            try:
                probs = np.asarray(service.infer(views))
            except StageUnavailable as exc:
                retry = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
                raise ServiceError(
                    str(exc), status=503, code="aggregator_unavailable", headers=retry
                ) from exc
            except PlanError as exc:
                raise ServiceError(
                    str(exc), status=503, code="views_unavailable", headers={"Retry-After": "5"}
                ) from exc
            answer = {"degraded": service.stats.degraded_answers > degraded,
                      "alive": list(service.alive), "ratios": list(service.ratios)}  # fmt: skip
        return jsonify(
            {"top1": int(probs[0].argmax()), "probs": probs[0].tolist(), **answer}
        )  # fmt: skip

    @app.get("/metrics")
    def metrics_text():
        with lock:
            m = metrics(service, manifest)
        return Response(prometheus_text(m), mimetype="text/plain")

    @app.get("/v1/metrics")
    def metrics_json():
        with lock:
            return jsonify(metrics(service, manifest))

    @app.get("/v1/deployment")
    def describe():
        keys = ("views", "view_shape", "num_classes", "fusion", "devices", "plan", "failure_plans")
        return jsonify({k: manifest[k] for k in keys if k in manifest})

    @app.get("/healthz")
    def healthz():
        if not service.alive:
            return jsonify({"status": "down", "alive": []}), 503
        return jsonify({"status": "ok", "alive": list(service.alive)})

    @app.get("/readyz")
    def readyz():
        with lock:
            ready, alive = service.ready(), list(service.alive)
        lost = [v for v in range(len(service.workers)) if v not in alive]
        body = {"ready": ready, "alive": alive, "lost": lost}
        return jsonify(body), 200 if ready else 503

    return app
