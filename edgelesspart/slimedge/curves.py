"""Per-view pruning curves of a multi-view model, the optimiser's input.

For each view and pruning ratio the view's backbone is pruned (:mod:`edgelesspart.pruning`),
fine-tuned briefly by feature distillation (mean squared error to the unpruned backbone's
features on that view's training images, so the fusion head stays valid without retraining), and
the **fused** validation accuracy is measured with all views present. A view whose evidence
matters more loses more accuracy when pruned, so these curves carry view importance. Backbone
latency (LiteRT, this host), parameters and memory are measured once per ratio (every view's
backbone has the same architecture). The accuracy of every subset of present views
(unpruned) is measured too, for planning after failures.

:class:`ViewCurves` is data (JSON) and predicts, from polynomial fits as SlimEdge does, the fused
accuracy of any ratio vector on any set of surviving views: ``A(S) - sum over v in S of
(A - a_v(r_v))``, where ``a_v`` is view ``v``'s curve and ``A(S)`` the measured subset accuracy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import PruningError

VIEW_CURVES_VERSION = 1
DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)
ACCURACY_DEGREE = 3
COST_DEGREE = 2


@dataclass(frozen=True)
class ViewCurves:
    """Measured curves of one multi-view model.

    Attributes:
        ratios: pruning ratios measured (ascending, from 0).
        accuracy: per view, fused validation accuracy with only that view pruned at each ratio.
        latency_ms: backbone LiteRT latency on this host per ratio.
        params: backbone parameters per ratio.
        memory_bytes: backbone weights + peak activations per ratio.
        fusion_latency_ms: the fusion head's LiteRT latency on this host.
        base_accuracy: fused validation accuracy, all views, nothing pruned.
        importance: per view, accuracy lost when the view is dropped (unpruned).
        subsets: present-view flags (``"1011"``) -> fused accuracy, unpruned.
        details: how it was measured.
    """

    ratios: tuple[float, ...]
    accuracy: tuple[tuple[float, ...], ...]
    latency_ms: tuple[float, ...]
    params: tuple[float, ...]
    memory_bytes: tuple[float, ...]
    fusion_latency_ms: float
    base_accuracy: float
    importance: tuple[float, ...]
    subsets: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ratios)
        rows = [*self.accuracy, self.latency_ms, self.params, self.memory_bytes]
        if n < 2 or self.ratios[0] != 0 or any(len(r) != n for r in rows):
            raise PruningError(
                f"View curves need ratios starting at 0 and one value per ratio ({n}) for "
                "every metric; re-measure them with measure_view_curves."
            )

    @property
    def n_views(self) -> int:
        """Number of views."""
        return len(self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "version": VIEW_CURVES_VERSION,
            "ratios": list(self.ratios),
            "accuracy": [list(a) for a in self.accuracy],
            "latency_ms": list(self.latency_ms),
            "params": list(self.params),
            "memory_bytes": list(self.memory_bytes),
            "fusion_latency_ms": self.fusion_latency_ms,
            "base_accuracy": self.base_accuracy,
            "importance": list(self.importance),
            "subsets": dict(self.subsets),
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViewCurves:
        """Inverse of :meth:`to_dict`."""
        if data.get("version") != VIEW_CURVES_VERSION:
            raise PruningError(
                f"View curves version {data.get('version')!r} is not supported (expected "
                f"{VIEW_CURVES_VERSION}); re-measure them."
            )
        return cls(
            ratios=tuple(data["ratios"]),
            accuracy=tuple(tuple(a) for a in data["accuracy"]),
            latency_ms=tuple(data["latency_ms"]),
            params=tuple(data["params"]),
            memory_bytes=tuple(data["memory_bytes"]),
            fusion_latency_ms=float(data["fusion_latency_ms"]),
            base_accuracy=float(data["base_accuracy"]),
            importance=tuple(data["importance"]),
            subsets={k: float(v) for k, v in data["subsets"].items()},
            details=dict(data.get("details", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write as JSON."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | Path) -> ViewCurves:
        """Read curves written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @property
    def max_ratio(self) -> float:
        """Largest measured ratio (the optimiser does not extrapolate)."""
        return float(self.ratios[-1])

    def _fit(self, values: Sequence[float], degree: int) -> np.ndarray:
        return np.polyfit(self.ratios, values, min(degree, len(self.ratios) - 1))

    def fits(self) -> dict[str, Any]:
        """Polynomial coefficients (highest power first) of every curve."""
        return {
            "accuracy": [self._fit(a, ACCURACY_DEGREE) for a in self.accuracy],
            "latency_ms": self._fit(self.latency_ms, COST_DEGREE),
            "memory_bytes": self._fit(self.memory_bytes, COST_DEGREE),
        }


class CurveModel:
    """Fast vectorised predictions from :class:`ViewCurves` (fits computed once).

    Arrays of ratios have shape ``(..., V)``: one ratio per view, ``V`` = all views.
    """

    def __init__(self, curves: ViewCurves) -> None:
        self.curves = curves
        fits = curves.fits()
        self._acc = fits["accuracy"]
        self._lat = fits["latency_ms"]
        self._mem = fits["memory_bytes"]
        self._lat_floor = 0.5 * min(curves.latency_ms)
        self._mem_floor = 0.5 * min(curves.memory_bytes)

    def drop(self, ratios: np.ndarray) -> np.ndarray:
        """Per view accuracy lost by pruning it at ``ratios`` (``(..., V)``, >= 0)."""
        r = np.clip(ratios, 0.0, self.curves.max_ratio)
        base = self.curves.base_accuracy
        drops = [base - np.polyval(self._acc[v], r[..., v]) for v in range(r.shape[-1])]
        return np.maximum(np.stack(drops, axis=-1), 0.0)

    def accuracy(self, ratios: np.ndarray, present: Sequence[int] | None = None) -> np.ndarray:
        """Predicted fused accuracy with the views in ``present`` (default all) surviving."""
        n = self.curves.n_views
        flags = [1] * n if present is None else [1 if v in set(present) else 0 for v in range(n)]
        subset = self.curves.subsets["".join(map(str, flags))]
        return subset - (self.drop(ratios) * np.asarray(flags)).sum(axis=-1)

    def latency_ms(self, ratios: np.ndarray) -> np.ndarray:
        """Backbone latency on this host at ``ratios`` (any shape)."""
        r = np.clip(ratios, 0.0, self.curves.max_ratio)
        return np.maximum(np.polyval(self._lat, r), self._lat_floor)

    def memory_bytes(self, ratios: np.ndarray) -> np.ndarray:
        """Backbone memory at ``ratios`` (any shape)."""
        r = np.clip(ratios, 0.0, self.curves.max_ratio)
        return np.maximum(np.polyval(self._mem, r), self._mem_floor)


def distill(
    pruned: Any, teacher_features: np.ndarray, images: np.ndarray, epochs: int, seed: int
) -> None:
    """Fine-tune a pruned backbone to reproduce the unpruned backbone's features (MSE)."""
    from edgelesspart._lazy import keras
    from edgelesspart.model.training import settle_batchnorm

    if epochs <= 0:
        return
    k = keras()
    k.utils.set_random_seed(seed)
    pruned.compile(optimizer=k.optimizers.Adam(1e-3), loss="mse")
    pruned.fit(images, teacher_features, epochs=epochs, batch_size=64, shuffle=True, verbose=0)
    settle_batchnorm(pruned, images[:1024])


def measure_view_curves(
    model: Any,
    data: Any,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    *,
    finetune_epochs: int = 3,
    repeats: int = 40,
    seed: int = 0,
) -> tuple[ViewCurves, dict[tuple[int, float], Any]]:
    """Measure :class:`ViewCurves` of a trained :class:`MultiViewModel` on ``data``.

    Returns:
        The curves and the pruned, fine-tuned backbones keyed ``(view, ratio)`` (for export).
    """
    from edgelesspart.pruning.curves import LiteRunner, interleaved_latency_ms, memory_bytes
    from edgelesspart.pruning.groups import analyze
    from edgelesspart.pruning.surgery import prune_model
    from edgelesspart.slimedge.model import subset_accuracy, view_importance

    start = time.perf_counter()
    ordered = sorted({0.0, *(float(r) for r in ratios)})
    feats = model.features(data.val)
    base = model.accuracy_from_features(feats, data.y_val, (1,) * model.n_views)
    pruned: dict[tuple[int, float], Any] = {}
    accuracy = []
    for v, backbone in enumerate(model.backbones):
        graph = analyze(backbone)
        teacher = _features(backbone, data.train[v])
        row = []
        for ratio in ordered:
            candidate = backbone if ratio == 0 else prune_model(backbone, ratio, graph=graph).model
            if ratio > 0:
                distill(candidate, teacher, data.train[v], finetune_epochs, seed)
            pruned[(v, ratio)] = candidate
            swapped = list(feats)
            swapped[v] = _features(candidate, data.val[v])
            row.append(model.accuracy_from_features(swapped, data.y_val, (1,) * model.n_views))
        accuracy.append(tuple(row))
    runners = [LiteRunner(pruned[(0, r)]) for r in ordered] + [LiteRunner(model.fusion)]
    latency = interleaved_latency_ms(runners, repeats=repeats)
    curves = ViewCurves(
        ratios=tuple(ordered),
        accuracy=tuple(accuracy),
        latency_ms=tuple(latency[:-1]),
        params=tuple(float(pruned[(0, r)].count_params()) for r in ordered),
        memory_bytes=tuple(float(memory_bytes(pruned[(0, r)])) for r in ordered),
        fusion_latency_ms=float(latency[-1]),
        base_accuracy=base,
        importance=tuple(view_importance(model, feats, data.y_val)),
        subsets=subset_accuracy(model, feats, data.y_val),
        details={
            "dataset": data.name,
            "validation_samples": int(len(data.y_val)),
            "finetune": f"feature distillation, {finetune_epochs} epochs",
            "latency": f"median LiteRT invoke, batch 1, 1 thread, {repeats} runs, interleaved",
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(time.perf_counter() - start, 1),
            **model.history,
        },
    )
    return curves, pruned


def _features(backbone: Any, images: np.ndarray) -> np.ndarray:
    out = [
        np.asarray(backbone(images[i : i + 256], training=False))
        for i in range(0, len(images), 256)
    ]
    return np.concatenate(out)
