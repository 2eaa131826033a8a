"""Remove channels: rank by L1 norm, rebuild a smaller functional model, copy the kept weights.

The rebuilt model is a real, smaller model (``filters``/``units`` reduced in each layer's
config, kernels sliced), built by ``keras.models.clone_model`` with a ``clone_function`` that
returns the resized layers; the graph wiring is Keras' own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart._lazy import keras as _keras
from edgelesspart.errors import PruningError
from edgelesspart.pruning.groups import ChannelGraph, Desc, Flat, analyze
from edgelesspart.pruning.report import PruneReport, build_report, warn_if_held_back

#: Largest ratio accepted: at least one channel per group always survives anyway.
MAX_RATIO = 0.95


@dataclass(frozen=True)
class PruneResult:
    """A pruned model and what was removed.

    Attributes:
        model: the rebuilt, smaller Keras model (weights copied from the original).
        ratios: group name -> pruning ratio applied.
        kept: group name -> original indices of the kept channels (sorted).
        params_before: parameters of the original model.
        params_after: parameters of the pruned model.
        report: requested vs achieved ratio and the layers that held filters back.
    """

    model: Any = field(repr=False)
    ratios: dict[str, float]
    kept: dict[str, tuple[int, ...]] = field(repr=False)
    params_before: int
    params_after: int
    report: PruneReport | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the model)."""
        return {
            "ratios": self.ratios,
            "kept": {k: list(v) for k, v in self.kept.items()},
            "params_before": self.params_before,
            "params_after": self.params_after,
            "report": self.report.to_dict() if self.report else None,
        }


def l1_scores(model: Any, graph: ChannelGraph) -> dict[str, np.ndarray]:
    """Per group, the L1 norm of each channel's filters (Li et al., 2017).

    A group with several producers (channels joined by ``Add``) sums each producer's norms
    divided by that producer's mean norm, so no single layer's scale dominates.
    """
    scores: dict[str, np.ndarray] = {}
    for group in graph.groups:
        total = np.zeros(group.channels, dtype=np.float64)
        for name in group.producers:
            kernel = np.asarray(_filter_kernel(model.get_layer(name)), dtype=np.float64)
            norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
            total += norms / max(float(norms.mean()), 1e-12)
        scores[group.name] = total
    return scores


def _filter_kernel(layer: Any) -> Any:
    """The kernel whose last axis is the layer's filters (the pointwise one of a separable)."""
    if hasattr(layer, "pointwise_kernel"):
        return layer.pointwise_kernel.numpy()
    return layer.get_weights()[0]


def _ratios(graph: ChannelGraph, ratio: float | Mapping[str, float]) -> dict[str, float]:
    names = {g.name for g in graph.groups}
    if isinstance(ratio, Mapping):
        unknown = sorted(set(ratio) - names)
        if unknown:
            raise PruningError(
                f"Ratios name unknown channel groups {unknown}. Groups: {', '.join(sorted(names))}."
            )
        wanted = {g.name: float(ratio.get(g.name, 0.0)) for g in graph.groups}
    else:
        wanted = {g.name: float(ratio) for g in graph.groups}
    for name, r in wanted.items():
        if not 0.0 <= r <= MAX_RATIO:
            raise PruningError(
                f"Pruning ratio {r!r} for group {name!r} is outside [0, {MAX_RATIO}]; the ratio "
                "is the share of filters removed (0 = untouched)."
            )
    return wanted


def choose_channels(
    graph: ChannelGraph,
    scores: Mapping[str, np.ndarray],
    ratios: Mapping[str, float],
) -> dict[str, np.ndarray]:
    """Kept channel indices per group: the highest-scoring ``round(n * (1 - ratio))``, >= 1."""
    kept: dict[str, np.ndarray] = {}
    for group in graph.groups:
        n = group.channels
        keep = max(1, int(round(n * (1.0 - ratios[group.name]))))
        order = np.argsort(-scores[group.name], kind="stable")[:keep]
        kept[group.name] = np.sort(order)
    return kept


class _Keep:
    """Maps channel descriptions to kept indices of the original channel axis."""

    def __init__(self, graph: ChannelGraph, kept: Mapping[str, np.ndarray]) -> None:
        self.graph = graph
        self.by_index = [kept[g.name] for g in graph.groups]

    def space(self, s: int) -> np.ndarray:
        g = self.graph.space_group[s]
        return np.arange(self.graph.space_length[s]) if g < 0 else self.by_index[g]

    def of(self, desc: Desc) -> np.ndarray:
        segments = desc.segments if isinstance(desc, Flat) else desc
        parts, offset = [], 0
        for s, n in segments:
            parts.append(self.space(s) + offset)
            offset += n
        idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if isinstance(desc, Flat):
            blocks = np.arange(desc.positions)[:, None] * offset
            idx = (blocks + idx[None, :]).ravel()
        return idx


def _new_layer(layer: Any, kind: str, keep: _Keep, graph: ChannelGraph) -> tuple[dict, list]:
    """The resized config and sliced weights of one layer."""
    config = layer.get_config()
    weights = [np.asarray(w) for w in layer.get_weights()]
    name = layer.name
    if kind == "producer" and "pointwise_initializer" in config:
        # SeparableConv: depthwise (..., C, m), pointwise (..., C*m, F) in channel-major rows
        k_in = keep.of(graph.inputs[name][0])
        k_out = keep.of(graph.outputs[name])
        config["filters"] = int(len(k_out))
        m = int(config.get("depth_multiplier", 1))
        rows = (k_in[:, None] * m + np.arange(m)[None, :]).ravel()
        pointwise = np.take(np.take(weights[1], rows, axis=-2), k_out, axis=-1)
        weights = [np.take(weights[0], k_in, axis=-2), pointwise, *(w[k_out] for w in weights[2:])]
    elif kind == "producer":
        k_in = keep.of(graph.inputs[name][0])
        k_out = keep.of(graph.outputs[name])
        key = "units" if "units" in config else "filters"
        config[key] = int(len(k_out))
        kernel = np.take(np.take(weights[0], k_in, axis=-2), k_out, axis=-1)
        weights = [kernel, *(np.take(w, k_out, axis=-1) for w in weights[1:])]
    elif kind == "reshape":
        target = list(config["target_shape"])
        if target and target[-1] not in (-1, None):
            target[-1] = int(len(keep.of(graph.outputs[name])))
            config["target_shape"] = tuple(target)
    elif kind == "follower":
        k = keep.of(graph.outputs[name])
        if "depth_multiplier" in config:  # kernel (..., C, 1), bias (C,)
            weights = [np.take(weights[0], k, axis=-2), *(w[k] for w in weights[1:])]
        else:  # BatchNormalization: gamma, beta, moving mean, moving variance
            weights = [w[k] for w in weights]
    return config, weights


def prune_model(
    model: Any,
    ratio: float | Mapping[str, float],
    *,
    unknown: str = "refuse",
    graph: ChannelGraph | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
) -> PruneResult:
    """Remove the lowest-L1 filters of every channel group and rebuild a smaller model.

    Args:
        model: a flat Keras 3 functional model.
        ratio: one pruning ratio for every group, or group name -> ratio (missing = 0).
        unknown: ``refuse`` or ``freeze`` layers of unknown type (see :func:`analyze`).
        graph: a precomputed :func:`analyze` result for ``model``.
        scores: per-group channel scores (default :func:`l1_scores`).

    Returns:
        The pruned model (same input/output shapes, fewer parameters), what was kept, and the
        report of requested versus achieved ratio (a :class:`PruningWarning` is emitted when a
        large share of the filters could not be pruned; it names the layers that held them).

    Raises:
        PruningError: an unsupported model (the message names the layer) or a bad ratio.
    """
    graph = graph or analyze(model, unknown=unknown)
    ratios = _ratios(graph, ratio)
    kept = choose_channels(graph, scores or l1_scores(model, graph), ratios)
    pruned = rebuild(model, graph, kept)
    params = (int(model.count_params()), int(pruned.count_params()))
    report = build_report(graph, ratio, kept, params)
    warn_if_held_back(report, model.name)
    return PruneResult(
        model=pruned,
        ratios=ratios,
        kept={name: tuple(int(i) for i in idx) for name, idx in kept.items()},
        params_before=params[0],
        params_after=params[1],
        report=report,
    )


def rebuild(model: Any, graph: ChannelGraph, kept: Mapping[str, np.ndarray]) -> Any:
    """A new model keeping, per group of ``graph``, the channels ``kept`` (original indices).

    ``kept`` must name every group; the indices are taken in the order given (sorted keeps the
    original order). Used by :func:`prune_model` and by width training, which keeps a prefix
    of a fixed importance ranking per group.
    """
    keras = _keras()
    keep = _Keep(graph, {g.name: np.asarray(kept[g.name]) for g in graph.groups})
    plans: dict[str, tuple[dict, list]] = {}
    for layer in model.layers:
        kind = graph.kinds.get(layer.name, "input")
        if kind == "input":
            continue
        plans[layer.name] = _new_layer(layer, kind, keep, graph)

    def clone(layer: Any) -> Any:
        if layer.name not in plans:
            return layer.__class__.from_config(layer.get_config())
        return layer.__class__.from_config(plans[layer.name][0])

    pruned = keras.models.clone_model(model, clone_function=clone)
    for name, (_, weights) in plans.items():
        target = pruned.get_layer(name)
        try:
            target.set_weights(weights)
        except ValueError as exc:
            raise PruningError(
                f"Could not copy the kept weights into layer {name!r}: {exc}. This layer's "
                "weights do not follow its channels as expected; report the model."
            ) from exc
    return pruned
