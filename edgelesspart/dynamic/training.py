"""Prune-robust training of the chain CNN (TensorFlow), and the post-hoc baseline.

Strategies (:data:`STRATEGIES`):

* ``posthoc`` - train at full width only, then rank every conv's filters by L1 norm and reorder
  them, so width ``w`` keeps the most important filters; no retraining (the baseline).
* ``slimmable`` - nested-width training over ordered channels (Yu et al. 2019): every step
  runs the batch at each uniform width of the width set (all stages at the same width) and sums
  the cross-entropies, so the first ``ceil(w * C)`` channels of every layer learn to work alone.
* ``sandwich`` - the sandwich rule with in-place distillation (Yu & Huang 2019): every step
  runs full width (labels), the narrowest width, and ``random_passes`` configurations with an
  independent random width *per stage* (a pipeline narrows one node, not all); the narrower
  passes learn from the full width's soft predictions (KL, no gradient into the teacher).

Width passes use masks (see :mod:`edgelesspart.dynamic.model`), so each pass is exactly the
narrow network. BatchNorm statistics are re-estimated per exported width (US-Nets' BN
calibration), which every strategy, the baseline included, gets at export.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgelesspart._lazy import keras, tensorflow
from edgelesspart.dynamic.model import masked_forward, model_channels, reorder_by_l1, width_mask
from edgelesspart.dynamic.widths import DEFAULT_WIDTHS, check_widths
from edgelesspart.errors import TrainingError

STRATEGIES = ("posthoc", "slimmable", "sandwich")


@dataclass(frozen=True)
class WidthTrainingConfig:
    """Hyper-parameters of prune-robust training (defaults suit the bundled digits data)."""

    strategy: str = "sandwich"
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 3e-3
    widths: tuple[float, ...] = DEFAULT_WIDTHS
    random_passes: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise TrainingError(
                f"Unknown width-training strategy {self.strategy!r}. "
                f"Strategies: {', '.join(STRATEGIES)}."
            )
        if self.epochs < 0 or self.batch_size < 1 or self.random_passes < 0:
            raise TrainingError(
                f"epochs >= 0, batch_size >= 1 and random_passes >= 0 are required, got "
                f"{self.epochs}, {self.batch_size}, {self.random_passes}."
            )
        object.__setattr__(self, "widths", check_widths(self.widths))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "strategy": self.strategy,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "widths": list(self.widths),
            "random_passes": self.random_passes,
            "seed": self.seed,
        }


def pass_widths(
    config: WidthTrainingConfig, stages: int, rng: np.random.Generator
) -> list[tuple[float, ...]]:
    """The per-stage width configurations one training step runs (the first is the teacher)."""
    full = tuple(1.0 for _ in range(stages))
    if config.strategy == "posthoc":
        return [full]
    if config.strategy == "slimmable":
        return [tuple(w for _ in range(stages)) for w in config.widths]
    narrowest = tuple(config.widths[-1] for _ in range(stages))
    randoms = [
        tuple(float(rng.choice(config.widths)) for _ in range(stages))
        for _ in range(config.random_passes)
    ]
    return [full, narrowest, *randoms]


def _masks(configs: list[tuple[float, ...]], channels: tuple[int, ...]) -> list[np.ndarray]:
    """Per stage, a ``(passes, C_k)`` stack of masks."""
    return [np.stack([width_mask(c, cfg[k]) for cfg in configs]) for k, c in enumerate(channels)]


def make_width_step(
    forward: Any, variables: Any, optimizer: Any, passes: int, distill: bool
) -> Any:
    """One compiled training step over ``passes`` width configurations (shared by the chain CNN
    and user models).

    ``forward(x, masks)`` runs the network with one configuration's masks (a list, one entry
    per mask) in training mode and returns softmax probabilities. The step takes ``masks`` as
    a list of ``(passes, C)`` stacks; pass 0 is the teacher (cross-entropy on the labels); with
    ``distill`` the other passes learn its soft predictions (KL, no gradient into the teacher),
    else cross-entropy too. Returns the mean loss per pass.
    """
    tf = tensorflow()
    losses = keras().losses

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, masks: list[Any]) -> Any:
        with tf.GradientTape() as tape:
            total = 0.0
            teacher = None
            for p in range(passes):
                probs = forward(x, [m[p] for m in masks])
                if p == 0 or not distill:
                    loss = tf.reduce_mean(losses.sparse_categorical_crossentropy(y, probs))
                    teacher = tf.stop_gradient(probs)
                else:
                    loss = tf.reduce_mean(losses.kl_divergence(teacher, probs))
                total += loss
        grads = tape.gradient(total, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return total / passes

    return step


def _make_step(model: Any, optimizer: Any, passes: int, distill: bool) -> Any:
    def forward(x: Any, masks: list[Any]) -> Any:
        return masked_forward(model, x, masks, training=True)

    return make_width_step(forward, model.trainable_variables, optimizer, passes, distill)


def train_width_robust(
    model: Any, data: Any, config: WidthTrainingConfig, *, progress: bool = True
) -> dict[str, Any]:
    """Train the chain CNN ``model`` on ``data`` (a ``Dataset``) with ``config.strategy``.

    ``progress`` reports every epoch's mean loss on stderr (a line per epoch, a bar on a
    terminal).

    Returns a JSON-ready record: the config, epochs run, wall seconds and the last mean loss.
    The ``posthoc`` strategy also reorders every conv's filters by L1 norm afterwards.
    """
    k = keras()
    k.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    channels = model_channels(model)
    stages = len(channels)
    passes = len(pass_widths(config, stages, rng))
    steps_per_epoch = max(1, int(np.ceil(len(data.x_train) / config.batch_size)))
    schedule = k.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch), alpha=0.05
    )
    optimizer = k.optimizers.Adam(schedule)
    step = _make_step(model, optimizer, passes, distill=config.strategy == "sandwich")
    x_all = np.asarray(data.x_train, dtype=np.float32)
    y_all = np.asarray(data.y_train, dtype=np.int64)
    start = time.perf_counter()
    loss = float("nan")
    from edgelesspart.progress import EpochProgress

    report = EpochProgress(f"train-widths ({config.strategy})", config.epochs, enabled=progress)
    for epoch in range(config.epochs):
        order = rng.permutation(len(x_all))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * config.batch_size : (s + 1) * config.batch_size]
            masks = _masks(pass_widths(config, stages, rng), channels)
            losses.append(float(step(x_all[idx], y_all[idx], masks)))
        loss = float(np.mean(losses))
        report.epoch(epoch, {"loss": loss})
    report.close()
    if config.strategy == "posthoc":
        reorder_by_l1(model)
    return {
        **config.to_dict(),
        "epochs_run": config.epochs,
        "seconds": round(time.perf_counter() - start, 2),
        "final_loss": round(loss, 5),
    }
