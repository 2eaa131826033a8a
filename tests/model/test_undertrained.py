"""Honest training: convergence with a reason, and the undertrained warnings."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.model.training import BackboneRun, undertrained_warnings


def test_no_warning_for_a_converged_backbone_above_the_reference() -> None:
    accuracy = {"val": {"exit_1": 0.80, "exit_2": 0.85, "final": 0.88}}
    run = BackboneRun(25, 19, "converged", False, 7.5e-4)
    assert undertrained_warnings(accuracy, reference=0.60, train_accuracy=0.95, run=run) == []


def test_warns_when_far_below_the_reference_and_below_its_own_exits() -> None:
    # GIVEN the ResNet50: 48 % final, an exit 15 points above it, a 60 % reference
    accuracy = {"val": {"exit_1": 0.63, "exit_2": 0.55, "final": 0.48}}
    run = BackboneRun(8, 8, "cap", True, 3e-3)
    warnings = undertrained_warnings(
        accuracy, reference=0.60, reference_name="the reference", train_accuracy=0.52, run=run
    )
    text = "\n".join(warnings)
    # THEN every rule that applies says so, with the figures
    assert len(warnings) == 3
    assert "12.0 pt below the reference (60.0%)" in text
    assert "exit exit_1 (63.0%) beats the final classifier (48.0%) by 15.0 pt" in text
    assert "still improving: raise --epochs" in text


def test_warns_on_a_large_train_validation_gap() -> None:
    warnings = undertrained_warnings({"val": {"final": 0.70}}, train_accuracy=0.99)
    assert len(warnings) == 1 and "29.0 pt gap" in warnings[0]


def test_backbone_run_reason_says_why_it_stopped() -> None:
    assert "converged" in BackboneRun(20, 14, "converged", False, 1e-3).reason(6)
    assert "best at epoch 14" in BackboneRun(20, 14, "converged", False, 1e-3).reason(6)
    cap = BackboneRun(8, 8, "cap", True, 3e-3).reason(6)
    assert "--epochs cap of 8" in cap and "still improving" in cap
    assert BackboneRun(0, 0, "none", False, 3e-3).reason(6) == "not trained"


@pytest.mark.needs_tf
def test_fit_backbone_stops_on_validation_and_the_build_check_warns_when_cut_short() -> None:
    """A real (tiny) fit: converged with a patience of 2, and a 1-epoch cap flagged."""
    from edgelesspart._lazy import keras
    from edgelesspart.model.training import TrainingConfig, fit_backbone, reference_accuracy

    rng = np.random.default_rng(0)

    class Data:  # 4x4x3 "images" of 3 separable classes
        y_train = rng.integers(0, 3, 300)
        x_train = (rng.random((300, 4, 4, 3)) * 0.3 + 0.2 * y_train[:, None, None, None]).astype(
            np.float32
        )
        y_val = rng.integers(0, 3, 90)
        x_val = (rng.random((90, 4, 4, 3)) * 0.3 + 0.2 * y_val[:, None, None, None]).astype(
            np.float32
        )

    def model():
        k = keras()
        k.utils.set_random_seed(0)
        inputs = k.Input((4, 4, 3))
        x = k.layers.Flatten()(inputs)
        return k.Model(inputs, k.layers.Dense(3, activation="softmax")(x))

    converged = fit_backbone(
        model(), Data, TrainingConfig(epochs=200, patience=2, lr_patience=1, learning_rate=0.3)
    )
    assert converged.stop == "converged" and converged.epochs < 200
    assert converged.final_learning_rate < 0.3  # the schedule halved it on plateaus
    assert len(converged.history["val_loss"]) == converged.epochs
    short = fit_backbone(model(), Data, TrainingConfig(epochs=1, learning_rate=1e-4))
    assert short.stop == "cap" and short.epochs == 1 and short.still_improving
    # the quick linear reference separates classes that each light their own channel
    # (one-vs-rest ridge cannot isolate the middle class of Data's one brightness axis)

    def lit(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = rng.random((n, 4, 4, 3)).astype(np.float32) * 0.3
        x[np.arange(n), :, :, y] += 0.5
        return x, y

    class Separable:
        (x_train, y_train), (x_val, y_val) = lit(300), lit(90)

    assert reference_accuracy(Separable) > 0.9


def test_builtin_hard_dataset_uses_its_measured_reference() -> None:
    """A linear model is meaningless on digits-hard; its reference is the measured small CNN."""
    from types import SimpleNamespace

    from edgelesspart.model.training import BUILTIN_REFERENCES, reference_for

    data = SimpleNamespace(name="digits-hard", input_shape=(32, 32, 3))
    accuracy, what = reference_for(data)
    assert (accuracy, what) == BUILTIN_REFERENCES["digits-hard"]
    assert "small CNN" in what and 0.5 < accuracy < 1.0
