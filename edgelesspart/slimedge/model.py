"""The multi-view model: one backbone per view, a fusion head, trained with view dropout.

Each backbone maps its view to a feature vector (conv blocks, global pooling, a ``Dense``
feature layer whose width is fixed, so a pruned backbone still fits the head). The fusion head
takes one tensor ``(views, features + 1)``: each row is a view's features followed by a presence
flag (1 = the view arrived, 0 = its device is lost), and averages (``mean``) or concatenates
(``concat``) the present views before a softmax. Training drops each view with probability
``view_dropout`` (at least one view is kept), so a missing view degrades the answer gracefully.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart._lazy import keras as _keras
from edgelesspart.errors import ConfigError
from edgelesspart.slimedge.views import MultiViewData

FUSIONS = ("mean", "concat")
DEFAULT_WIDTHS = (32, 64, 128)
FEATURES = 64


@functools.lru_cache(maxsize=1)
def fusion_layers() -> dict[str, Any]:
    """The fusion head's two custom layers, registered so ``.keras`` files load in safe mode."""
    keras = _keras()
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="edgelesspart")
    class MaskedViewMean(keras.layers.Layer):
        """``(B, V, F+1)`` -> mean of the present views' features ``(B, F)``."""

        def call(self, x: Any) -> Any:
            mask, feats = x[..., -1:], x[..., :-1]
            total = ops.sum(mask * feats, axis=1)
            return total / ops.maximum(ops.sum(mask, axis=1), 1e-6)

    @keras.saving.register_keras_serializable(package="edgelesspart")
    class MaskedViewConcat(keras.layers.Layer):
        """``(B, V, F+1)`` -> concatenation of the features, missing views zeroed ``(B, V*F)``."""

        def call(self, x: Any) -> Any:
            feats = x[..., :-1] * x[..., -1:]
            return ops.reshape(feats, (-1, feats.shape[1] * feats.shape[2]))

    return {"mean": MaskedViewMean, "concat": MaskedViewConcat}


def build_backbone(
    view_shape: tuple[int, int, int],
    *,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    features: int = FEATURES,
    name: str = "backbone",
) -> Any:
    """A flat functional CNN: ``view -> features`` (prunable with :mod:`edgelesspart.pruning`)."""
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(view_shape, name="view")
    x = inputs
    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i > 0:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(features, activation="relu", name="features")(x)
    return keras.Model(inputs, outputs, name=name)


def build_fusion(
    n_views: int, num_classes: int, *, mode: str = "mean", features: int = FEATURES
) -> Any:
    """The fusion head: ``(views, features + 1)`` -> class probabilities."""
    if mode not in FUSIONS:
        raise ConfigError(f"Unknown fusion {mode!r}; use one of {', '.join(FUSIONS)}.")
    keras = _keras()
    inputs = keras.Input((n_views, features + 1), name="views")
    x = fusion_layers()[mode](name=f"masked_{mode}")(inputs)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="fusion")


def fusion_input(features: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Stack per-view features ``[(B, F)] * V`` and a ``(B, V)`` presence mask: the head input."""
    stacked = np.stack(features, axis=1).astype(np.float32)
    return np.concatenate([stacked, mask[..., None].astype(np.float32)], axis=-1)


@dataclass
class MultiViewModel:
    """Backbones (one per view) and the fusion head, plus what training measured.

    Attributes:
        backbones: one Keras model per view.
        fusion: the fusion head.
        mode: ``mean`` or ``concat``.
        history: training record (epochs, view dropout, accuracies).
    """

    backbones: list[Any]
    fusion: Any
    mode: str = "mean"
    history: dict[str, Any] = field(default_factory=dict)

    @property
    def n_views(self) -> int:
        """Number of views."""
        return len(self.backbones)

    def features(self, views: tuple[np.ndarray, ...], batch_size: int = 256) -> list[np.ndarray]:
        """Each view's features (inference mode)."""
        return [_predict(bb, v, batch_size) for bb, v in zip(self.backbones, views)]

    def accuracy_from_features(
        self, feats: list[np.ndarray], y: np.ndarray, mask: np.ndarray | tuple[int, ...]
    ) -> float:
        """Fused accuracy with the views in ``mask`` (``(V,)`` flags or ``(B, V)``) present."""
        mask = np.asarray(mask, dtype=np.float32)
        if mask.ndim == 1:
            mask = np.broadcast_to(mask, (len(y), len(feats)))
        probs = _predict(self.fusion, fusion_input(feats, mask), 512)
        return float((probs.argmax(axis=-1) == y).mean())


def _predict(model: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = [
        np.asarray(model(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out)


def _joint(model: MultiViewModel, view_shape: tuple[int, ...]) -> Any:
    keras = _keras()
    views = [keras.Input(view_shape, name=f"view{v}") for v in range(model.n_views)]
    mask = keras.Input((model.n_views,), name="mask")
    feats = [bb(x) for bb, x in zip(model.backbones, views)]
    stacked = keras.layers.Concatenate(axis=1)([keras.layers.Reshape((1, -1))(f) for f in feats])
    flags = keras.layers.Reshape((model.n_views, 1))(mask)
    fused = model.fusion(keras.layers.Concatenate(axis=-1)([stacked, flags]))
    return keras.Model([*views, mask], fused, name="multiview")


def view_dropout_mask(n: int, n_views: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """``(n, V)`` presence flags: each view dropped with probability ``p``, one always kept."""
    mask = (rng.random((n, n_views)) >= p).astype(np.float32)
    empty = mask.sum(axis=1) == 0
    mask[empty, rng.integers(0, n_views, int(empty.sum()))] = 1.0
    return mask


def train_multiview(
    data: MultiViewData,
    *,
    mode: str = "mean",
    epochs: int = 10,
    view_dropout: float = 0.3,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    learning_rate: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> MultiViewModel:
    """Build and train backbones + fusion head jointly with view dropout."""
    from edgelesspart.model.training import settle_batchnorm

    keras = _keras()
    keras.utils.set_random_seed(seed)
    backbones = [
        build_backbone(data.view_shape, widths=widths, name=f"backbone{v}")
        for v in range(data.n_views)
    ]
    model = MultiViewModel(backbones, build_fusion(data.n_views, data.num_classes, mode=mode), mode)
    joint = _joint(model, data.view_shape)
    joint.compile(
        optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy"
    )
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        mask = view_dropout_mask(len(data.y_train), data.n_views, view_dropout, rng)
        joint.fit(
            [*data.train, mask],
            data.y_train,
            epochs=1,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
        )
    for bb, images in zip(backbones, data.train):
        settle_batchnorm(bb, images[:1024])
    model.history = {
        "epochs": epochs,
        "view_dropout": view_dropout,
        "mode": mode,
        "widths": list(widths),
    }
    return model


def view_importance(model: MultiViewModel, feats: list[np.ndarray], y: np.ndarray) -> list[float]:
    """Per view: accuracy with all views minus accuracy with that view dropped (points, 0..1)."""
    everything = model.accuracy_from_features(feats, y, (1,) * model.n_views)
    drops = []
    for v in range(model.n_views):
        mask = tuple(0 if i == v else 1 for i in range(model.n_views))
        drops.append(everything - model.accuracy_from_features(feats, y, mask))
    return drops


def subset_accuracy(
    model: MultiViewModel, feats: list[np.ndarray], y: np.ndarray
) -> dict[str, float]:
    """Fused accuracy for every non-empty set of present views, keyed ``"1011"`` (view 0 first)."""
    result = {}
    for flags in itertools.product((0, 1), repeat=model.n_views):
        if any(flags):
            result["".join(map(str, flags))] = model.accuracy_from_features(feats, y, flags)
    return result
