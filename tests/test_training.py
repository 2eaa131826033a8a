"""Tests for edgelesspart.training's BatchNormalization settling (tiny models, seconds)."""

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
    from edgelesspart.training import settle_batchnorm

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
    from edgelesspart.training import settle_batchnorm

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
    from edgelesspart.training import TrainingConfig, train_backbone

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
