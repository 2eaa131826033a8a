"""Training: the backbone when it is untrained, then the exits with the backbone frozen.

The backbone's BatchNormalization statistics are recomputed on training images before every
validation pass (:func:`settle_batchnorm`), so short trainings of Keras applications answer in
inference mode as well as they trained. Exits are trained jointly: one model with every exit
as an output and the sum of their cross-entropies as the loss (equal weights), early-stopped
on validation loss with the best weights restored. The backbone's layers are frozen
(``trainable=False``, which also keeps BatchNormalization in inference mode), so the final
classifier's answers do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart._lazy import keras
from edgelesspart.errors import TrainingError


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of both training phases (defaults suit the bundled digits data)."""

    epochs: int = 8
    exit_epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 3e-3
    exit_learning_rate: float = 1e-2
    patience: int = 3
    seed: int = 0
    verbose: int = 0
    progress: bool = True  # a line per epoch on stderr (a bar on a terminal)

    def __post_init__(self) -> None:
        if self.epochs < 0 or (self.exit_epochs is not None and self.exit_epochs < 0):
            raise TrainingError(f"Epochs must be >= 0, got {self.epochs}/{self.exit_epochs}.")
        if self.batch_size < 1:
            raise TrainingError(f"batch_size must be >= 1, got {self.batch_size}.")


@dataclass(frozen=True)
class TrainingReport:
    """What training did and how well each classifier does on validation and test data."""

    backbone_trained: bool
    backbone_epochs: int
    exit_epochs: int
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "backbone_trained": self.backbone_trained,
            "backbone_epochs": self.backbone_epochs,
            "exit_epochs": self.exit_epochs,
            "accuracy": self.accuracy,
        }


#: Training images whose batch statistics replace BatchNormalization's moving statistics.
SETTLE_IMAGES = 1024
SETTLE_BATCH = 128


def settle_batchnorm(model: Any, images: np.ndarray, batch_size: int = SETTLE_BATCH) -> int:
    """Set every BatchNormalization layer's moving mean/variance to ``images``' batch statistics.

    Keras applications use momentum 0.99 (MobileNetV2 0.999): after the few epochs a build
    trains, the moving statistics are still mostly their initial values, so the model that
    scored well in training mode answers at chance in inference mode, and early stopping judges
    epochs by a meaningless validation loss. This runs ``images`` through ``model`` in training
    mode with each layer's momentum set so the moving statistics become the mean over the
    batches weighted by their sizes (a short last batch counts for what it holds); weights are
    untouched and the momenta are restored. Returns the number of layers settled.
    """
    bn = keras().layers.BatchNormalization
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, bn)]
    if not layers or not len(images):
        return 0
    momenta = [layer.momentum for layer in layers]
    seen = 0
    try:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            for layer in layers:  # seen = 0 overwrites, then a mean weighted by batch size
                layer.momentum = seen / (seen + len(batch))
            model(batch, training=True)
            seen += len(batch)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


def _settle_callback(images: np.ndarray) -> Any:
    """A callback that settles BatchNormalization before every validation pass of ``fit``."""

    class SettleBatchNorm(keras().callbacks.Callback):
        def on_test_begin(self, logs: Any = None) -> None:
            settle_batchnorm(self.model, images)

    return SettleBatchNorm()


#: The metrics a progress line shows, when the fit reports them.
PROGRESS_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def progress_callback(label: str, epochs: int, enabled: bool = True) -> Any:
    """A Keras callback reporting each epoch through :class:`edgelesspart.progress.EpochProgress`
    (one line per epoch when stderr is not a terminal, a bar when it is)."""
    from edgelesspart.progress import EpochProgress

    reporter = EpochProgress(label, epochs, enabled=enabled)

    class EpochLines(keras().callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            reporter.epoch(epoch, {k: logs[k] for k in PROGRESS_METRICS if k in logs})

        def on_train_end(self, logs: Any = None) -> None:
            reporter.close()

    return EpochLines()


def _early_stopping(patience: int) -> Any:
    k = keras()
    return k.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True, verbose=0
    )


def train_backbone(model: Any, data: Any, config: TrainingConfig) -> int:
    """Train ``model`` on ``data`` (a ``Dataset``); return the number of epochs run."""
    if config.epochs == 0:
        return 0
    k = keras()
    k.utils.set_random_seed(config.seed)
    model.compile(
        optimizer=k.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    settle = np.asarray(data.x_train[:SETTLE_IMAGES], dtype=np.float32)
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=config.epochs,
        batch_size=config.batch_size,
        # settle first, so early stopping compares epochs by their real inference-mode loss
        callbacks=[
            _settle_callback(settle),
            _early_stopping(config.patience),
            progress_callback("backbone", config.epochs, config.progress),
        ],
        shuffle=True,
        verbose=config.verbose,
    )
    return len(history.history.get("loss", []))


def train_exits(
    backbone: Any, exit_outputs: dict[str, Any], data: Any, config: TrainingConfig
) -> tuple[Any, int]:
    """Train the exit heads jointly with the backbone frozen.

    Args:
        backbone: the functional backbone whose cut tensors the exits were attached to.
        exit_outputs: exit name -> probability tensor (built by ``exits.attach_exit``).
        data: the dataset.
        config: hyper-parameters.

    Returns:
        The joint model (backbone input -> every exit, then the final output) and the number
        of exit-training epochs run.
    """
    k = keras()
    names = list(exit_outputs)
    outputs = {name: exit_outputs[name] for name in names}
    joint = k.Model(backbone.inputs[0], {**outputs, "final": backbone.outputs[0]}, name="joint")
    if not names:
        return joint, 0
    for layer in backbone.layers:
        layer.trainable = False
    epochs = config.exit_epochs if config.exit_epochs is not None else config.epochs
    if epochs == 0:
        return joint, 0
    k.utils.set_random_seed(config.seed + 1)
    trainable = k.Model(backbone.inputs[0], outputs, name="exits")
    trainable.compile(
        optimizer=k.optimizers.Adam(config.exit_learning_rate),
        loss={name: "sparse_categorical_crossentropy" for name in names},
    )
    targets_train = {name: data.y_train for name in names}
    targets_val = {name: data.y_val for name in names}
    history = trainable.fit(
        data.x_train,
        targets_train,
        validation_data=(data.x_val, targets_val),
        epochs=epochs,
        batch_size=config.batch_size,
        callbacks=[
            _early_stopping(config.patience),
            progress_callback("exits", epochs, config.progress),
        ],
        shuffle=True,
        verbose=config.verbose,
    )
    return joint, len(history.history.get("loss", []))


def classifier_accuracy(joint: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> dict:
    """Top-1 accuracy of every output of ``joint`` (exits and ``final``) on ``(x, y)``."""
    if len(x) == 0:
        return {}
    predictions = joint.predict(x, batch_size=batch_size, verbose=0)
    return {
        name: round(float(np.mean(np.argmax(np.asarray(p), axis=1) == y)), 5)
        for name, p in predictions.items()
    }
