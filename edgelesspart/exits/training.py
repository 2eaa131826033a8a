"""Exit training by distillation from the final classifier, optionally fine-tuning the backbone.

Three modes (``--exit-training``):

* ``frozen``: the exits learn from the labels only, backbone frozen (the paper's training;
  :func:`edgelesspart.model.training.train_exits`);
* ``distill`` (default): backbone frozen; each exit's loss is
  ``alpha * CE(label, p) + (1 - alpha) * T^2 * CE(softmax(log q / T), softmax(log p / T))``,
  where ``q`` is the final classifier's output on the same image (Hinton et al., 2015): the
  soft targets tell a shallow exit which wrong classes are plausible, which labels alone do not;
* ``joint``: as ``distill``, but the backbone is trained too, with the final classifier's own
  cross-entropy in the loss and a tenth of the learning rate (backbone and exits alike). The
  final classifier's validation accuracy before and after is measured; if it dropped by more
  than ``max_final_drop`` points the backbone's weights are restored and the exits are
  trained again with it frozen (``distill``), and the report says so.

Teacher outputs are computed once, before any weight changes, so ``joint`` distils from the
original final classifier. Exits output probabilities, so the loss works on ``log p``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart._lazy import keras
from edgelesspart.errors import TrainingError

EXIT_TRAININGS = ("frozen", "distill", "joint")
#: Softening temperature of the distillation targets and its share of the loss.
DISTILL_TEMPERATURE = 3.0
DISTILL_ALPHA = 0.5
#: The learning rate in ``joint`` mode relative to the exits' own (``distill``) rate; one
#: optimiser, so it applies to the backbone and the exit heads alike.
JOINT_LR_SCALE = 0.1
_EPS = 1e-7


@dataclass(frozen=True)
class ExitTrainingResult:
    """What exit training did.

    Attributes:
        mode: the mode asked for.
        used: the mode whose weights were kept (``distill`` after a ``joint`` fallback).
        epochs: exit-training epochs run (both passes after a fallback).
        final_val_accuracy: the final classifier's validation accuracy ``before``/``after``.
        fell_back: ``joint`` exceeded ``max_final_drop`` and the frozen backbone was restored.
        max_final_drop: the bound, in accuracy points.
    """

    mode: str
    used: str
    epochs: int
    final_val_accuracy: dict[str, float] = field(default_factory=dict)
    fell_back: bool = False
    max_final_drop: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        before = self.final_val_accuracy.get("before")
        after = self.final_val_accuracy.get("after")
        change = None if before is None or after is None else round(100 * (after - before), 3)
        return {
            "mode": self.mode,
            "used": self.used,
            "epochs": self.epochs,
            "final_val_accuracy": dict(self.final_val_accuracy),
            "final_accuracy_change_pp": change,
            "fell_back": self.fell_back,
            "max_final_drop_pp": self.max_final_drop,
        }


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` of ``(N, C)`` probabilities (the distillation targets)."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    return (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)


def distillation_loss(
    temperature: float = DISTILL_TEMPERATURE, alpha: float = DISTILL_ALPHA
) -> Any:
    """A Keras loss on ``y_true = [soft targets (C) | label (1)]`` and exit probabilities.

    Returns ``alpha * CE(label) + (1 - alpha) * T^2 * CE(soft targets, softened exit)``.
    """
    ops = keras().ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        soft, label = y_true[:, :-1], ops.cast(y_true[:, -1], "int32")
        log_p = ops.log(ops.clip(y_pred, _EPS, 1.0))
        hard = -ops.sum(ops.one_hot(label, ops.shape(y_pred)[-1]) * log_p, axis=-1)
        log_soft = ops.log_softmax(log_p / temperature, axis=-1)
        distil = -ops.sum(soft * log_soft, axis=-1) * temperature**2
        return alpha * hard + (1.0 - alpha) * distil

    return loss


def _targets(teacher: Any, x: np.ndarray, y: np.ndarray, temperature: float) -> np.ndarray:
    probs = np.asarray(teacher.predict(x, batch_size=256, verbose=0))
    return np.concatenate([soften(probs, temperature), y.reshape(-1, 1).astype(np.float32)], 1)


def _final_accuracy(backbone: Any, x: np.ndarray, y: np.ndarray) -> float:
    if not len(x):
        return float("nan")
    predicted = np.argmax(backbone.predict(x, batch_size=256, verbose=0), axis=1)
    return float(np.mean(predicted == y))


def _fit(model: Any, x: Any, y: Any, val: tuple, config: Any, epochs: int, callbacks: list) -> int:
    from edgelesspart.model.training import _early_stopping, progress_callback

    history = model.fit(
        x,
        y,
        validation_data=val,
        epochs=epochs,
        batch_size=config.batch_size,
        callbacks=[
            *callbacks,
            _early_stopping(config.patience),
            progress_callback("exits", epochs, getattr(config, "progress", True)),
        ],
        shuffle=True,
        verbose=config.verbose,
    )
    return len(history.history.get("loss", []))


def _train(
    backbone: Any, outputs: dict, losses: dict, targets: tuple, data: Any, config: Any,
    *, joint: bool, callbacks: tuple = (),
) -> int:  # fmt: skip
    """Fit ``outputs`` (with ``losses`` on the ``(train, val)`` target dicts); return epochs.

    The backbone is trainable only when ``joint`` (then at ``JOINT_LR_SCALE`` of the rate).
    """
    k = keras()
    for layer in backbone.layers:
        layer.trainable = joint
    epochs = config.exit_epochs if config.exit_epochs is not None else config.epochs
    if epochs == 0:
        return 0
    k.utils.set_random_seed(config.seed + (2 if joint else 1))
    model = k.Model(backbone.inputs[0], outputs, name="joint" if joint else "exits")
    rate = config.exit_learning_rate * (JOINT_LR_SCALE if joint else 1.0)
    model.compile(optimizer=k.optimizers.Adam(rate), loss=losses)
    train, val = targets
    return _fit(model, data.x_train, train, (data.x_val, val), config, epochs, list(callbacks))


def _distill(
    backbone: Any, outputs: dict, targets: tuple, data: Any, config: Any,
    temperature: float = DISTILL_TEMPERATURE, alpha: float = DISTILL_ALPHA,
) -> int:  # fmt: skip
    """Train the exits on distillation targets with the backbone frozen; return epochs run."""
    train, val = targets
    losses = {name: distillation_loss(temperature, alpha) for name in outputs}
    dicts = ({name: train for name in outputs}, {name: val for name in outputs})
    return _train(backbone, outputs, losses, dicts, data, config, joint=False)


def _joint(
    backbone: Any, outputs: dict, targets: tuple, data: Any, config: Any,
    temperature: float = DISTILL_TEMPERATURE, alpha: float = DISTILL_ALPHA,
) -> int:  # fmt: skip
    """Train exits and backbone together (final classifier's CE in the loss); return epochs."""
    from edgelesspart.model.training import SETTLE_IMAGES, _settle_callback

    train, val = targets
    losses: dict[str, Any] = {name: distillation_loss(temperature, alpha) for name in outputs}
    losses["final"] = "sparse_categorical_crossentropy"
    dicts = (
        {**{name: train for name in outputs}, "final": data.y_train},
        {**{name: val for name in outputs}, "final": data.y_val},
    )
    settle = np.asarray(data.x_train[:SETTLE_IMAGES], dtype=np.float32)
    return _train(
        backbone, {**outputs, "final": backbone.outputs[0]}, losses, dicts, data, config,
        joint=True, callbacks=(_settle_callback(settle),),
    )  # fmt: skip


def train_exits_distilled(
    backbone: Any,
    exit_outputs: dict[str, Any],
    data: Any,
    config: Any,
    *,
    mode: str = "distill",
    max_final_drop: float = 1.0,
    log: Any = print,
    temperature: float = DISTILL_TEMPERATURE,
    alpha: float = DISTILL_ALPHA,
) -> tuple[Any, ExitTrainingResult]:
    """Train the exits in ``mode`` (``distill`` or ``joint``); see the module docstring.

    Args:
        backbone: the functional backbone whose cut tensors the exits were attached to.
        exit_outputs: exit name -> probability tensor.
        data: the dataset.
        config: a :class:`edgelesspart.model.training.TrainingConfig`.
        mode: ``distill`` or ``joint``.
        max_final_drop: ``joint`` only: most final-classifier validation accuracy loss, in points.
        log: where the fallback notice goes.
        temperature: softening temperature of the distillation targets.
        alpha: share of the label cross-entropy in each exit's loss.

    Returns:
        The joint model (input -> every exit and ``final``) and what happened.

    Raises:
        TrainingError: an unknown mode or a negative bound.
    """
    if mode not in ("distill", "joint"):
        raise TrainingError(f"Unknown exit training {mode!r}; choose one of {EXIT_TRAININGS}.")
    if not max_final_drop >= 0:
        raise TrainingError(f"max_final_drop must be >= 0 points, got {max_final_drop!r}.")
    k = keras()
    names = list(exit_outputs)
    outputs = {name: exit_outputs[name] for name in names}
    joint = k.Model(backbone.inputs[0], {**outputs, "final": backbone.outputs[0]}, name="joint")
    before = _final_accuracy(backbone, data.x_val, data.y_val)
    result = ExitTrainingResult(mode, mode, 0, {"before": before}, False, max_final_drop)
    if not names:
        return joint, result
    targets = (
        _targets(backbone, data.x_train, data.y_train, temperature),
        _targets(backbone, data.x_val, data.y_val, temperature),
    )
    soft = {"temperature": temperature, "alpha": alpha}
    if mode == "distill":
        epochs = _distill(backbone, outputs, targets, data, config, **soft)
        return joint, ExitTrainingResult(mode, mode, epochs, {"before": before, "after": before},
                                         False, max_final_drop)  # fmt: skip
    saved = [np.array(w) for w in backbone.get_weights()]
    epochs = _joint(backbone, outputs, targets, data, config, **soft)
    after = _final_accuracy(backbone, data.x_val, data.y_val)
    if 100.0 * (before - after) <= max_final_drop:
        for layer in backbone.layers:
            layer.trainable = False
        return joint, ExitTrainingResult(mode, mode, epochs, {"before": before, "after": after},
                                         False, max_final_drop)  # fmt: skip
    log(
        f"joint exit training: the final classifier's validation accuracy fell from "
        f"{before:.3f} to {after:.3f}, more than --max-final-drop {max_final_drop:g} points; "
        "restored the frozen backbone and trained the exits by distillation instead"
    )
    backbone.set_weights(saved)
    epochs += _distill(backbone, outputs, targets, data, config, **soft)
    restored = _final_accuracy(backbone, data.x_val, data.y_val)
    accuracy = {"before": before, "joint": after, "after": restored}
    return joint, ExitTrainingResult(mode, "distill", epochs, accuracy, True, max_final_drop)
