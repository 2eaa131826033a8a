"""Build and export a SlimEdge deployment: train, measure curves, plan, write segments.

:func:`build_multiview` trains the multi-view model and measures its per-view curves (the
expensive part, cached by the callers). :func:`export_deployment` writes one directory::

    deployment.json        views, devices, chosen plan, baselines, front, single-failure plans,
                           classes, and how a served image becomes the views (``image``)
    curves.json            the ViewCurves the optimiser used
    segments/view<v>_r<ratio>.tflite / .keras   every measured ratio of every view (the
                           library the runtime swaps from after a failure)
    segments/fusion.tflite / .keras              the fusion head

Each LiteRT segment is checked against its Keras model on a probe batch before anything is
written; the directory appears only when every file is ready.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError
from edgelesspart.slimedge.curves import ViewCurves
from edgelesspart.slimedge.optimize import DeviceSlot, SlimPlan

DEPLOYMENT_VERSION = 1
DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)
LITERT_TOLERANCE = 1e-4


@dataclass
class MultiViewBuild:
    """A trained multi-view model, its data, curves and pruned backbones per ``(view, ratio)``."""

    model: Any
    data: Any
    curves: ViewCurves
    pruned: dict[tuple[int, float], Any]


def build_multiview(
    data: Any,
    *,
    epochs: int = 10,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    finetune_epochs: int = 3,
    mode: str = "mean",
    seed: int = 0,
) -> MultiViewBuild:
    """Train the multi-view model on ``data`` and measure its per-view pruning curves."""
    from edgelesspart.slimedge.curves import measure_view_curves
    from edgelesspart.slimedge.model import train_multiview

    model = train_multiview(data, mode=mode, epochs=epochs, seed=seed)
    curves, pruned = measure_view_curves(
        model, data, ratios, finetune_epochs=finetune_epochs, seed=seed
    )
    test = model.features(data.test)
    everything = model.accuracy_from_features(test, data.y_test, (1,) * model.n_views)
    details = {**curves.details, "test_accuracy": everything}
    curves = ViewCurves(**{**curves.__dict__, "details": details})
    return MultiViewBuild(model, data, curves, pruned)


def slots_for(devices: list[Any], factor_model: str = "slimedge-backbone") -> list[DeviceSlot]:
    """:class:`DeviceSlot` per :class:`~edgelesspart.profiling.devices.DeviceProfile` (generic
    factor)."""
    from edgelesspart.profiling.devices import latency_factor

    return [
        DeviceSlot(d.name, latency_factor(d, factor_model), float(d.memory_bytes)) for d in devices
    ]


def _check(name: str, model: Any, tflite: bytes, probe: np.ndarray) -> None:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=tflite).get_signature_runner("serving_default")
    got = next(iter(runner(x=probe).values()))
    want = np.asarray(model(probe, training=False))
    diff = float(np.max(np.abs(got - want)))
    if not diff <= LITERT_TOLERANCE * max(1.0, float(np.max(np.abs(want)))):
        raise BundleError(
            f"LiteRT segment {name!r} differs from Keras by {diff:.3g}; it is not exported."
        )


def export_deployment(
    out: str | Path,
    build: MultiViewBuild,
    slots: list[DeviceSlot],
    chosen: SlimPlan,
    *,
    baselines: dict[str, SlimPlan],
    failures: dict[int, SlimPlan],
    overwrite: bool = False,
    max_accuracy_drop: float | None = None,
) -> Path:
    """Write the deployment directory (see the module docstring); returns its path.

    ``max_accuracy_drop`` (0..1) is recorded for re-planning after several failures.
    """
    from edgelesspart.model.litert import to_tflite
    from edgelesspart.slimedge.model import fusion_input

    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} exists; pass overwrite=True (--overwrite) to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".slimedge-", dir=out.parent))
    try:
        (tmp / "segments").mkdir()
        files = {}
        for (view, ratio), model in sorted(build.pruned.items()):
            name = f"view{view}_r{ratio:.2f}"
            tflite = to_tflite(model)
            _check(name, model, tflite, build.data.val[view][:4])
            (tmp / "segments" / f"{name}.tflite").write_bytes(tflite)
            model.save(tmp / "segments" / f"{name}.keras")
            files[name] = {"view": view, "ratio": ratio, "tflite": f"segments/{name}.tflite"}
        feats = build.model.features(tuple(v[:4] for v in build.data.val))
        probe = fusion_input(feats, np.ones((4, build.model.n_views), np.float32))
        fusion = to_tflite(build.model.fusion)
        _check("fusion", build.model.fusion, fusion, probe)
        (tmp / "segments" / "fusion.tflite").write_bytes(fusion)
        build.model.fusion.save(tmp / "segments" / "fusion.keras")
        build.curves.save(tmp / "curves.json")
        manifest = {
            "version": DEPLOYMENT_VERSION,
            "views": build.model.n_views,
            "view_shape": list(build.data.view_shape),
            "num_classes": int(build.data.num_classes),
            "classes": list(getattr(build.data, "classes", ()) or ()),
            # how a served image becomes the views: its preprocessing and each view's region
            "image": {
                "preprocessing": dict(getattr(build.data, "preprocessing", {}) or {}),
                "regions": [dict(r) for r in build.data.regions],
            },
            "fusion": {"mode": build.model.mode, "tflite": "segments/fusion.tflite"},
            "devices": [s.to_dict() for s in slots],
            "plan": chosen.to_dict(),
            "baselines": {k: p.to_dict() for k, p in baselines.items()},
            "failure_plans": {str(k): p.to_dict() for k, p in failures.items()},
            "max_accuracy_drop": max_accuracy_drop,
            "segments": files,
        }
        (tmp / "deployment.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
