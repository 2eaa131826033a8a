"""Training: the backbone when it is untrained, then the exits with the backbone frozen.

The backbone trains *to convergence on validation*: up to ``epochs`` (a cap, 60 by default),
the learning rate halved after ``lr_patience`` epochs without a better validation loss, and
stopped after ``patience`` such epochs with the best weights restored.
:func:`fit_backbone` says how many epochs ran and why it stopped (converged, or the cap reached
while still improving), and :func:`undertrained_warnings` flags a backbone that is far below a
quick reference on the same data, far below its own exits, or overfitting.

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

    epochs: int = 60
    exit_epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 3e-3
    exit_learning_rate: float = 1e-2
    patience: int = 6
    lr_patience: int = 2
    lr_factor: float = 0.5
    min_learning_rate: float = 1e-5
    freeze_epochs: int = 0
    finetune_learning_rate: float = 1e-4
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
    mode, batch by batch (compiled), and sets the moving statistics to the mean of the batches'
    statistics weighted by their sizes (a short last batch counts for what it holds); weights
    are untouched and the momenta are restored. Returns the number of layers settled.
    """
    bn = keras().layers.BatchNormalization
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, bn)]
    if not layers or not len(images):
        return 0
    momenta = [layer.momentum for layer in layers]
    # In training mode BatchNormalization normalises with the batch's own statistics, so the
    # moving statistics never feed back into the forward pass: with momentum 0 one compiled
    # forward pass per batch leaves each layer's moving statistics equal to that batch's, and
    # their mean weighted by batch size is accumulated here. The same result as updating with
    # momentum seen / (seen + batch) batch by batch, without running the model eagerly (which
    # cost ~30 s per validation pass of the 64 px small CNN, as much as its training epoch).
    sums: list[np.ndarray] = []
    try:
        for layer in layers:
            layer.momentum = 0.0
        forward = _training_forward(model)
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start : start + batch_size])
            forward(batch)
            current = [
                np.asarray(v, dtype=np.float64) * len(batch)
                for layer in layers
                for v in (layer.moving_mean, layer.moving_variance)
            ]
            sums = [a + b for a, b in zip(sums, current)] if sums else current
        for i, layer in enumerate(layers):
            layer.moving_mean.assign(sums[2 * i] / len(images))
            layer.moving_variance.assign(sums[2 * i + 1] / len(images))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


def _training_forward(model: Any) -> Any:
    """``model(x, training=True)`` compiled once (TensorFlow backend; eager elsewhere)."""
    if keras().backend.backend() != "tensorflow":
        return lambda x: model(x, training=True)
    from edgelesspart._lazy import tensorflow

    return tensorflow().function(lambda x: model(x, training=True), reduce_retracing=True)


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


@dataclass(frozen=True)
class BackboneRun:
    """What backbone training did.

    Attributes:
        epochs: epochs run.
        best_epoch: 1-based epoch of the lowest validation loss (its weights are kept).
        stop: ``converged`` (no better validation loss for ``patience`` epochs), ``cap``
            (``epochs`` reached) or ``none`` (not trained).
        still_improving: the cap was reached within ``patience`` epochs of the best one.
        final_learning_rate: the learning rate after the schedule's reductions.
        history: per-epoch ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``.
    """

    epochs: int
    best_epoch: int
    stop: str
    still_improving: bool
    final_learning_rate: float
    history: dict[str, list[float]] = field(default_factory=dict)

    def reason(self, patience: int) -> str:
        """Why training stopped, in words."""
        if self.stop == "none":
            return "not trained"
        if self.stop == "converged":
            return (
                f"converged: validation loss had not improved for {patience} epochs after its "
                f"best at epoch {self.best_epoch} (best weights restored)"
            )
        tail = "still improving: raise --epochs" if self.still_improving else "plateaued"
        return (
            f"reached the --epochs cap of {self.epochs} ({tail}); best validation loss at "
            f"epoch {self.best_epoch}"
        )

    def to_dict(self, patience: int) -> dict[str, Any]:
        """JSON-ready dict (without the per-epoch history's floats rounded away)."""
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "stop": self.stop,
            "still_improving": self.still_improving,
            "reason": self.reason(patience),
            "final_learning_rate": self.final_learning_rate,
            "val_accuracy": [round(float(v), 5) for v in self.history.get("val_accuracy", [])],
        }


def train_backbone(model: Any, data: Any, config: TrainingConfig) -> int:
    """Train ``model`` on ``data`` (a ``Dataset``); return the number of epochs run."""
    return fit_backbone(model, data, config).epochs


def fit_backbone(model: Any, data: Any, config: TrainingConfig) -> BackboneRun:
    """Train ``model`` to convergence on ``data``'s validation split (see the module doc).

    With ``config.freeze_epochs > 0`` (pre-trained weights) it fine-tunes in two phases: first
    only the classifier head (the layer named ``predictions``) for ``freeze_epochs`` at
    ``learning_rate``, then every layer at ``finetune_learning_rate`` to convergence; the
    epochs of both phases count against ``epochs``.
    """
    if config.epochs == 0:
        return BackboneRun(0, 0, "none", False, config.learning_rate)
    k = keras()
    k.utils.set_random_seed(config.seed)
    settle = np.asarray(data.x_train[:SETTLE_IMAGES], dtype=np.float32)
    logs: dict[str, list[float]] = {}
    frozen = min(config.freeze_epochs, config.epochs)
    if frozen > 0:
        for layer in model.layers:
            layer.trainable = layer.name == "predictions"
        _fit_phase(model, data, config, frozen, config.learning_rate, settle, logs)
        for layer in model.layers:
            layer.trainable = True
    rest = config.epochs - frozen
    if rest > 0:
        rate = config.finetune_learning_rate if frozen else config.learning_rate
        _fit_phase(model, data, config, rest, rate, settle, logs)
    val_loss = logs.get("val_loss", [])
    ran = len(logs.get("loss", []))
    best = int(np.argmin(val_loss)) + 1 if val_loss else ran
    converged = ran < config.epochs
    if frozen:  # the head-only phase may stop early on its own; judge the last phase
        converged = ran < config.epochs and (ran > frozen or rest == 0)
    return BackboneRun(
        epochs=ran,
        best_epoch=best,
        stop="converged" if converged else "cap",
        still_improving=not converged and ran - best < config.patience,
        final_learning_rate=float(k.ops.convert_to_numpy(model.optimizer.learning_rate)),
        history=logs,
    )


def _fit_phase(
    model: Any,
    data: Any,
    config: TrainingConfig,
    epochs: int,
    rate: float,
    settle: np.ndarray,
    logs: dict[str, list[float]],
) -> None:
    """One ``fit`` to convergence at ``rate``; its history is appended to ``logs``."""
    k = keras()
    model.compile(
        optimizer=k.optimizers.Adam(rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=epochs,
        batch_size=config.batch_size,
        # settle first, so early stopping compares epochs by their real inference-mode loss
        callbacks=[
            _settle_callback(settle),
            _lr_schedule(config),
            _early_stopping(config.patience),
            progress_callback("backbone", config.epochs, config.progress),
        ],
        shuffle=True,
        verbose=config.verbose,
    )
    for key, values in history.history.items():
        logs.setdefault(key, []).extend(float(v) for v in values)


def _lr_schedule(config: TrainingConfig) -> Any:
    return keras().callbacks.ReduceLROnPlateau(
        monitor="val_loss",
        factor=config.lr_factor,
        patience=config.lr_patience,
        min_lr=config.min_learning_rate,
        verbose=0,
    )


#: undertrained rules: final validation accuracy this far (points) below the reference model,
#: an exit this far above the final classifier, or a train/validation gap this large
REFERENCE_GAP_PP = 10.0
EXIT_GAP_PP = 5.0
OVERFIT_GAP_PP = 20.0
REFERENCE_SIDE = 16


#: Measured references for built-in datasets where a linear model says nothing (``name ->
#: (validation accuracy, what reached it)``), from ``experiments/digits_hard_calibration.py``.
BUILTIN_REFERENCES: dict[str, tuple[float, str]] = {
    "digits-hard": (
        0.8361,
        "the small CNN trained to convergence, 32 epochs (experiments/digits_hard_calibration.py)",
    ),
}


def reference_accuracy(data: Any, seed: int = 0) -> float:
    """Validation accuracy of a quick linear reference on the same data.

    A ridge classifier (closed form, a few seconds) on the images downscaled to about 16x16,
    standardised: any backbone worth splitting should beat it clearly, so a backbone far below
    it is undertrained rather than limited by the data.
    """
    from sklearn.linear_model import RidgeClassifier

    def features(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        fh, fw = max(1, h // REFERENCE_SIDE), max(1, w // REFERENCE_SIDE)
        h2, w2 = (h // fh) * fh, (w // fw) * fw
        pooled = x[:, :h2, :w2].reshape(n, h2 // fh, fh, w2 // fw, fw, c).mean(axis=(2, 4))
        return pooled.reshape(n, -1)

    x_train, x_val = features(np.asarray(data.x_train)), features(np.asarray(data.x_val))
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    clf = RidgeClassifier(alpha=10.0, random_state=seed)
    clf.fit((x_train - mean) / std, data.y_train)
    return float(clf.score((x_val - mean) / std, data.y_val))


def reference_for(data: Any, seed: int = 0) -> tuple[float, str]:
    """``(validation accuracy, what it is)``: a measured reference for a built-in dataset where a
    linear model is meaningless (:data:`BUILTIN_REFERENCES`), else :func:`reference_accuracy`."""
    name = getattr(data, "name", "")
    if name in BUILTIN_REFERENCES and getattr(data, "input_shape", (32,))[0] == 32:
        return BUILTIN_REFERENCES[name]
    return reference_accuracy(data, seed), "a ridge classifier on 16x16 downscaled pixels"


def undertrained_warnings(
    accuracy: dict[str, dict[str, float]],
    *,
    reference: float | None = None,
    reference_name: str = "a ridge-classifier reference",
    train_accuracy: float | None = None,
    run: BackboneRun | None = None,
    patience: int = 6,
) -> list[str]:
    """Why the backbone looks undertrained (or overfit); empty when nothing is wrong.

    Args:
        accuracy: ``{"val": {exit or "final": accuracy}, ...}`` as the build measures it.
        reference: :func:`reference_for` on the same data; ``reference_name`` says what it is.
        train_accuracy: the final classifier's accuracy on the training split.
        run: what :func:`fit_backbone` did (``None``: the backbone came pre-trained).
        patience: the early-stopping patience, for the wording.
    """
    val = accuracy.get("val") or {}
    final = val.get("final")
    if final is None:
        return []
    out: list[str] = []
    if reference is not None and 100.0 * (reference - final) >= REFERENCE_GAP_PP:
        out.append(
            f"the final classifier reaches {100 * final:.1f}% on validation, "
            f"{100 * (reference - final):.1f} pt below {reference_name} "
            f"({100 * reference:.1f}%) on the same data: the backbone is undertrained"
        )
    best_exit = max(((v, k) for k, v in val.items() if k != "final"), default=None)
    if best_exit is not None and 100.0 * (best_exit[0] - final) >= EXIT_GAP_PP:
        out.append(
            f"exit {best_exit[1]} ({100 * best_exit[0]:.1f}%) beats the final classifier "
            f"({100 * final:.1f}%) by {100 * (best_exit[0] - final):.1f} pt on validation: the "
            "layers after it are undertrained, so 'within N points of the final classifier' "
            "approves weak answers"
        )
    if train_accuracy is not None and 100.0 * (train_accuracy - final) >= OVERFIT_GAP_PP:
        out.append(
            f"train accuracy {100 * train_accuracy:.1f}% vs validation {100 * final:.1f}%: a "
            f"{100 * (train_accuracy - final):.1f} pt gap (overfitting; more data or augmentation)"
        )
    if run is not None and run.stop == "cap" and run.still_improving:
        out.append(
            f"training stopped at the --epochs cap ({run.epochs}) while validation loss was "
            "still improving: raise --epochs"
        )
    return out


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
