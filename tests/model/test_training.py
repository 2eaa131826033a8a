"""Tests for edgelesspart.model.training's BatchNormalization settling (tiny models, seconds)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.needs_tf


def _bn_model():
    from edgelesspart._lazy import keras

    k = keras()
    inputs = k.Input((6,))
    x = k.layers.BatchNormalization(momentum=0.999, name="bn")(inputs)
    return k.Model(inputs, k.layers.Dense(3, activation="softmax")(x))


def test_settle_batchnorm_sets_moving_statistics_to_the_data_and_keeps_momentum():
    from edgelesspart.model.training import settle_batchnorm

    model = _bn_model()
    rng = np.random.default_rng(0)
    images = (rng.normal(size=(512, 6)) * 3.0 + 5.0).astype(np.float32)
    bn = model.get_layer("bn")
    kernel = model.layers[-1].get_weights()[0].copy()
    assert settle_batchnorm(model, images, batch_size=64) == 1
    mean, var = (np.asarray(v) for v in (bn.moving_mean, bn.moving_variance))
    assert np.allclose(mean, images.mean(axis=0), atol=1e-3)
    # the mean of per-batch variances: within a few percent of the data's variance
    assert np.allclose(var, images.var(axis=0), rtol=0.05)
    assert bn.momentum == 0.999
    assert np.array_equal(model.layers[-1].get_weights()[0], kernel)  # weights untouched


def test_a_short_last_batch_does_not_drag_the_statistics():
    from edgelesspart.model.training import settle_batchnorm

    model = _bn_model()
    rng = np.random.default_rng(2)
    images = (rng.normal(size=(129, 6)) * 2.0 + 1.0).astype(np.float32)  # 64 + 64 + 1
    settle_batchnorm(model, images, batch_size=64)
    bn = model.get_layer("bn")
    assert np.allclose(np.asarray(bn.moving_mean), images.mean(axis=0), atol=1e-3)
    # a one-image batch has zero variance; weighted by size it barely moves the estimate
    assert np.allclose(np.asarray(bn.moving_variance), images.var(axis=0), rtol=0.1)


def test_training_a_batchnorm_model_briefly_answers_well_in_inference_mode():
    """A momentum-0.999 network trained for 2 short epochs still classifies in inference mode."""
    from edgelesspart.model.training import TrainingConfig, train_backbone

    class Data:
        rng = np.random.default_rng(1)
        y_train = rng.integers(0, 3, 600)
        x_train = (rng.normal(size=(600, 6)) + 4.0 * np.eye(3, 6)[y_train] + 50.0).astype(
            np.float32
        )
        y_val = rng.integers(0, 3, 150)
        x_val = (rng.normal(size=(150, 6)) + 4.0 * np.eye(3, 6)[y_val] + 50.0).astype(np.float32)

    model = _bn_model()
    train_backbone(model, Data, TrainingConfig(epochs=2, learning_rate=3e-2, batch_size=32))
    accuracy = float(np.mean(model.predict(Data.x_val, verbose=0).argmax(1) == Data.y_val))
    assert accuracy > 0.9


# --- exit training: distillation and joint fine-tuning -------------------------------------------


class _Blobs:
    """Three separable classes in 6-D (train/val), the shape of a ``Dataset`` the trainers read."""

    rng = np.random.default_rng(3)
    y_train = rng.integers(0, 3, 480)
    x_train = (rng.normal(size=(480, 6)) + 3.0 * np.eye(3, 6)[y_train]).astype(np.float32)
    y_val = rng.integers(0, 3, 120)
    x_val = (rng.normal(size=(120, 6)) + 3.0 * np.eye(3, 6)[y_val]).astype(np.float32)


def _backbone_with_exit():
    """A trained 2-layer backbone plus one untrained exit on its hidden layer."""
    from edgelesspart._lazy import keras
    from edgelesspart.model.training import TrainingConfig, train_backbone

    k = keras()
    k.utils.set_random_seed(0)
    inputs = k.Input((6,))
    hidden = k.layers.Dense(8, activation="relu", name="hidden")(inputs)
    model = k.Model(inputs, k.layers.Dense(3, activation="softmax", name="head")(hidden))
    train_backbone(model, _Blobs, TrainingConfig(epochs=4, learning_rate=3e-2, batch_size=32))
    hidden_out = model.get_layer("hidden").output
    exit_1 = k.layers.Dense(3, activation="softmax", name="exit_1")(hidden_out)
    return model, {"exit_1": exit_1}


def test_distillation_loss_mixes_label_cross_entropy_and_softened_targets():
    from edgelesspart._lazy import keras
    from edgelesspart.exits.training import distillation_loss, soften

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 1])
    teacher = soften(np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]), 3.0)
    y_true = np.concatenate([teacher, labels[:, None].astype(np.float32)], axis=1)
    ops = keras().ops
    hard = -np.log(probs[np.arange(2), labels])
    soft = -(teacher * np.log(soften(probs, 3.0))).sum(axis=1) * 9.0
    for alpha in (0.0, 0.5, 1.0):
        got = ops.convert_to_numpy(distillation_loss(3.0, alpha)(y_true, probs))
        np.testing.assert_allclose(got, alpha * hard + (1 - alpha) * soft, rtol=1e-4)


def test_distilled_exits_learn_and_leave_the_final_classifier_unchanged():
    from edgelesspart.exits.training import train_exits_distilled
    from edgelesspart.model.training import TrainingConfig

    model, exits = _backbone_with_exit()
    before = model.predict(_Blobs.x_val, verbose=0)
    config = TrainingConfig(epochs=6, batch_size=32, exit_learning_rate=3e-2)
    joint, result = train_exits_distilled(model, exits, _Blobs, config, mode="distill")
    out = joint.predict(_Blobs.x_val, verbose=0)
    np.testing.assert_allclose(out["final"], before, rtol=1e-5)
    assert float(np.mean(out["exit_1"].argmax(1) == _Blobs.y_val)) > 0.8
    assert result.used == "distill" and not result.fell_back and result.epochs >= 1


def test_joint_training_that_hurts_the_final_classifier_falls_back_to_the_frozen_backbone():
    from edgelesspart.exits.training import train_exits_distilled
    from edgelesspart.model.training import TrainingConfig

    model, exits = _backbone_with_exit()
    before = model.predict(_Blobs.x_val, verbose=0)
    # GIVEN a joint fine-tuning with an absurd learning rate and a zero-point bound
    config = TrainingConfig(epochs=2, batch_size=32, exit_learning_rate=500.0, patience=1)
    notes = []
    joint, result = train_exits_distilled(
        model, exits, _Blobs, config, mode="joint", max_final_drop=0.0, log=notes.append
    )
    # THEN the bound is reported broken, the backbone restored and the build told so
    record = result.to_dict()
    assert result.fell_back and result.used == "distill" and record["mode"] == "joint"
    assert record["final_val_accuracy"]["joint"] < record["final_val_accuracy"]["before"]
    assert record["final_accuracy_change_pp"] == 0.0
    np.testing.assert_allclose(joint.predict(_Blobs.x_val, verbose=0)["final"], before, rtol=1e-5)
    assert notes and "restored the frozen backbone" in notes[0]


def test_compiled_settling_equals_the_eager_batch_by_batch_momentum_update():
    """The compiled pass (momentum 0, statistics averaged outside) gives what updating each
    layer eagerly with momentum seen / (seen + batch) gives, for stacked BN layers too."""
    from edgelesspart._lazy import keras
    from edgelesspart.model.training import settle_batchnorm

    k = keras()
    k.utils.set_random_seed(3)
    inputs = k.Input((8, 8, 3))
    x = k.layers.Conv2D(4, 3, padding="same")(inputs)
    x = k.layers.BatchNormalization(momentum=0.99, name="bn1")(x)
    x = k.layers.ReLU()(x)
    x = k.layers.Conv2D(5, 3, padding="same")(x)
    x = k.layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    model = k.Model(inputs, k.layers.GlobalAveragePooling2D()(x))
    images = np.random.default_rng(4).normal(size=(70, 8, 8, 3)).astype(np.float32) * 2 + 1

    reference = k.models.clone_model(model)
    reference.set_weights(model.get_weights())
    layers = [reference.get_layer("bn1"), reference.get_layer("bn2")]
    seen = 0
    for start in range(0, len(images), 32):  # the eager update the compiled pass replaces
        batch = images[start : start + 32]
        for layer in layers:
            layer.momentum = seen / (seen + len(batch))
        reference(batch, training=True)
        seen += len(batch)

    assert settle_batchnorm(model, images, batch_size=32) == 2
    for name in ("bn1", "bn2"):
        got, want = model.get_layer(name), reference.get_layer(name)
        assert np.allclose(np.asarray(got.moving_mean), np.asarray(want.moving_mean), atol=1e-5)
        assert np.allclose(
            np.asarray(got.moving_variance), np.asarray(want.moving_variance), rtol=1e-4
        )
    assert model.get_layer("bn1").momentum == 0.99 and model.get_layer("bn2").momentum == 0.9
