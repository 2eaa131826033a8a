"""HTTP front of a SlimEdge deployment on Ray (``edgelesspart serve-views``), Flask app factory.

Routes: those of the shared serving contract (:mod:`service_http.contract`): ``POST /v1/infer``
reads whole images (PNG/JPEG, tensors, JSON ``inputs``/``tensor_b64``), cut into the views as
the build cut them, or JSON ``{"views": [view0, view1, ...]}`` (one sample, every view a nested
``(H, W, C)`` list); each answer names the views that were fused. ``GET /metrics``
(Prometheus text: per device alive, ratio, missed deadlines and swaps; failures, re-plans,
answers and degraded answers), ``GET /v1/metrics`` (the same as JSON, with every re-plan),
``GET /v1/deployment`` (devices, plan, failure plans), ``GET /healthz`` (liveness) and
``GET /readyz`` (503 while any device is lost or the aggregator is down; answers continue,
degraded, from the survivors). A lost device rejoins once a node offers its resource again.
Errors are the shared JSON errors. :func:`service_from_deployment` starts the
:class:`~edgelesspart.slimedge.ray_runtime.SlimEdgeService` of an exported deployment directory.
"""

from __future__ import annotations

import hashlib
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


def _views_json(payload: dict[str, Any], manifest: dict[str, Any]) -> np.ndarray | None:
    """JSON ``{"views": [view0, view1, ...]}`` (one sample) as a ``(1, n, H, W, C)`` batch;
    ``None`` for a payload of another kind."""
    from service_http.errors import BadRequest, InvalidInput

    if "views" not in payload:
        return None
    n, shape = int(manifest["views"]), tuple(manifest["view_shape"])
    if not isinstance(payload["views"], list):
        raise BadRequest('Send JSON {"views": [view0, view1, ...]}: one (H, W, C) list per view.')
    if len(payload["views"]) != n:
        raise InvalidInput(f"The deployment has {n} views; got {len(payload['views'])}.")
    views = []
    for v, raw in enumerate(payload["views"]):
        try:
            array = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"View {v} is not a numeric array: {exc}.") from exc
        if array.shape != shape:
            raise InvalidInput(f"View {v} has shape {list(array.shape)}; expected {list(shape)}.")
        views.append(array)
    return np.stack(views)[None]


def image_shape(manifest: dict[str, Any]) -> tuple[int, int, int] | None:
    """``(H, W, C)`` of the full image the views are cut from (``None``: not recorded)."""
    pre = (manifest.get("image") or {}).get("preprocessing") or {}
    if not {"height", "width", "channels"} <= set(pre):
        return None
    return int(pre["height"]), int(pre["width"]), int(pre["channels"])


def cut_views(images: np.ndarray, manifest: dict[str, Any]) -> list[np.ndarray]:
    """Cut a batch of full images into the deployment's views (each view's recorded region of
    the grayscale image, as the build made them, without the sensor noise)."""
    from edgelesspart.errors import InputError

    regions = (manifest.get("image") or {}).get("regions") or []
    if len(regions) != int(manifest["views"]):
        raise InputError(
            "This deployment records no view regions, so a whole image cannot be cut into its "
            'views; send JSON {"views": [...]} instead.'
        )
    shape = tuple(manifest["view_shape"])
    gray = images[..., :1] if shape[-1] == 1 else images
    views = []
    for r in regions:
        top, left, size = int(r["top"]), int(r["left"]), int(r["size"])
        views.append(np.ascontiguousarray(gray[:, top : top + size, left : left + size, :]))
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
    """The Flask app over a started :class:`SlimEdgeService`: the shared serving contract
    (:func:`service_http.contract.contract_app` over a :class:`ViewsBackend`) plus
    ``GET /v1/metrics`` and ``GET /v1/deployment`` (kept in ``app.extensions``)."""
    from flask import jsonify

    from service_http.contract import contract_app

    backend = ViewsBackend(service, manifest)
    app = contract_app(EXTENSION, backend, token=token, max_body=max_body, title="serve-views")
    app.extensions[EXTENSION + ".service"] = service

    @app.get("/v1/metrics")
    def metrics_json():
        with backend.lock:
            return jsonify(metrics(service, manifest))

    @app.get("/v1/deployment")
    def describe():
        keys = ("views", "view_shape", "num_classes", "fusion", "devices", "plan", "failure_plans")
        return jsonify({k: manifest[k] for k in keys if k in manifest})

    return app


def deployment_id(manifest: dict[str, Any]) -> str:
    """A deployment's id: the SHA-256 of its ``deployment.json`` content."""
    clean = {k: v for k, v in manifest.items() if k != "root"}
    text = json.dumps(clean, sort_keys=True).encode("utf-8")
    return "views-" + hashlib.sha256(text).hexdigest()[:16]


class ViewsBackend:
    """The contract's backend over a SlimEdge service: an input row is one full image (cut
    into the views as the build did) or, in JSON ``{"views": [...]}``, the views themselves.

    Each answer comes from the fusion (``exit`` ``fusion``, ``stage`` ``aggregator``), names the
    views (devices) that answered in ``node``, and is ``degraded`` when a device was missing.
    """

    kind = "views"

    def __init__(self, service: Any, manifest: dict[str, Any], *, max_batch: int = 16) -> None:
        from edgelesspart.runtime.codecs import decode_tensor, from_base64
        from edgelesspart.runtime.manifest import InputSpec, TensorSpec
        from edgelesspart.runtime.preprocess import image_to_tensor
        from service_http.contract import InferTarget

        self.service = service
        self.manifest = manifest
        self.lock = threading.Lock()  # the dispatcher's failure bookkeeping is single-threaded
        self.n = int(manifest["views"])
        self.view_shape = tuple(int(d) for d in manifest["view_shape"])
        shape = image_shape(manifest)
        self.image = shape
        self.classes = tuple(manifest.get("classes") or
                             (str(i) for i in range(int(manifest["num_classes"]))))  # fmt: skip
        row = shape or self.view_shape
        spec = None
        if shape is not None:
            pre = dict(manifest["image"]["preprocessing"])
            spec = InputSpec(TensorSpec(shape), pre)
        self.bundle_id = deployment_id(manifest)
        self.target = InferTarget(
            bundle_id=self.bundle_id,
            rank=len(row),
            row_nbytes=TensorSpec(tuple(row)).nbytes * (1 if shape else self.n),
            max_batch=int(max_batch),
            decode_tensor=lambda body, limit: decode_tensor(body, max_bytes=limit),
            decode_base64=from_base64,
            decode_image=None if spec is None else (lambda body: image_to_tensor(body, spec)),
            json_inputs=lambda payload: _views_json(payload, manifest),
        )

    def default_threshold(self) -> float | None:
        """No exits: no threshold."""
        return None

    def _views(self, x: np.ndarray) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """Rows as lists of ``(1, H, W, C)`` views: from ``(N, n, h, w, c)`` view stacks or
        ``(N, H, W, C)`` images."""
        from edgelesspart.errors import InputError

        x = np.asarray(x, dtype=np.float32)
        if x.ndim == len(self.view_shape) + 2 and tuple(x.shape[1:]) == (self.n, *self.view_shape):
            return x, [[row[v][None] for v in range(self.n)] for row in x]
        if self.image is not None and x.ndim == 3:
            x = x[None]
        if self.image is not None and x.ndim == 4 and tuple(x.shape[1:]) == self.image:
            if not np.isfinite(x).all():
                raise InputError("The image holds NaN or Inf values; send finite pixels.")
            views = cut_views(x, self.manifest)
            return x, [[views[v][i : i + 1] for v in range(self.n)] for i in range(x.shape[0])]
        expected = list(self.image) if self.image else [self.n, *self.view_shape]
        raise InputError(
            f"Input of shape {list(x.shape)} is neither a batch of images {expected} nor of "
            f"{self.n} views {list(self.view_shape)}."
        )

    def answer(self, x: np.ndarray, threshold: float | None) -> Any:
        """Fuse each row from the views whose devices answer (503 once every device is lost)."""
        import time

        from edgelesspart.errors import StageUnavailable
        from service_http.contract import Served, answer_row
        from service_http.errors import ServiceError

        _, rows = self._views(x)
        answers, degraded = [], 0
        start = time.perf_counter()
        for views in rows:
            t0 = time.perf_counter()
            with self.lock:
                before = self.service.stats.degraded_answers
                alive = list(self.service.alive)
                try:
                    probs = np.asarray(self.service.infer(views))
                except StageUnavailable as exc:
                    retry = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
                    raise ServiceError(
                        str(exc), status=503, code="aggregator_unavailable", headers=retry
                    ) from exc
                except PlanError as exc:
                    raise ServiceError(
                        str(exc), status=503, code="views_unavailable", headers={"Retry-After": "5"}
                    ) from exc
                short = self.service.stats.degraded_answers > before
                now = list(self.service.alive)
            ms = (time.perf_counter() - t0) * 1000.0
            reason = None
            if short:
                degraded += 1
                reason = (f"fused from the views of the devices that answered in time "
                          f"(alive before {alive}, now {now}) of {self.n}")  # fmt: skip
            answers.append(
                answer_row(probs[0], self.classes, exit="fusion", stage="aggregator",
                           timings={"total": ms}, degraded=short, reason=reason,
                           node={"views": now, "ratios": list(self.service.ratios)})
            )  # fmt: skip
        total = (time.perf_counter() - start) * 1000.0
        return Served(answers, 0, degraded, {"total_ms": total})

    def bundle_summary(self) -> dict[str, Any]:
        """The deployment: views, devices, the chosen plan, and how images become views."""
        return {
            "bundle_id": self.bundle_id,
            "model": f"slimedge-{self.n}views",
            "classes": list(self.classes),
            "input": {"shape": list(self.image or [self.n, *self.view_shape]),
                      "dtype": "float32",
                      "preprocessing": (self.manifest.get("image") or {}).get("preprocessing")},
            "stages": [f"view{v}" for v in range(self.n)] + ["aggregator"],
            "edge_stage": "aggregator",
            "edge_stages": ["aggregator"],
            "segments": [],
            "exits": [],
            "threshold": None,
            "max_batch": self.target.max_batch,
            "cloud": None,
            "views": self.n,
            "view_shape": list(self.view_shape),
            "devices": [d.get("name") for d in self.manifest.get("devices", [])],
        }  # fmt: skip

    def health(self) -> dict[str, Any]:
        """Ready while every device and the aggregator are up (answers go on, degraded, from
        the survivors while not ready); ``lost`` names the lost views."""
        with self.lock:
            ready, alive = self.service.ready(), list(self.service.alive)
        lost = [v for v in range(len(self.service.workers)) if v not in alive]
        return {"ready": bool(ready), "alive": alive, "lost": lost}

    def metrics_text(self) -> str:
        """Per device alive, ratio, missed deadlines, swaps; failures and re-plans."""
        with self.lock:
            m = metrics(self.service, self.manifest)
        return prometheus_text(m)
