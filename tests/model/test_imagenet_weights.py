"""``--weights imagenet``: loaded from the Keras cache offline; a clear error when absent."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.needs_tf

SHAPE = (32, 32, 3)
ALPHA = 0.35


def _save_base_weights(path, seed: int) -> list[np.ndarray]:
    """Save a MobileNetV2 base (same architecture, random weights) in Keras' legacy .h5 layout,
    the layout of the files keras.applications downloads; return its weights."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from edgelesspart._lazy import keras

    k = keras()
    k.utils.set_random_seed(seed)
    base = k.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=SHAPE, alpha=ALPHA, pooling="avg"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, base)
    return [np.asarray(w) for w in base.get_weights()]


def test_imagenet_weights_load_from_the_keras_cache(tmp_path, monkeypatch):
    from edgelesspart.model import zoo

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    path, file_name, url, _ = zoo.imagenet_weights_file("mobilenetv2", SHAPE, ALPHA)
    # the name and place keras.applications itself uses (no 32-px weights: the 224 file)
    assert path == tmp_path / "models" / file_name
    assert file_name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    assert url.endswith(file_name)
    saved = _save_base_weights(path, seed=5)
    # WHEN a zoo model is built with ImageNet weights (offline: the file is in the cache), seeded
    # differently from the saved base so equal weights can only come from the file
    model = zoo.build_model("mobilenetv2", SHAPE, 10, width=ALPHA, weights="imagenet", seed=0)
    # THEN its convolutional base holds exactly the cached weights, under a fresh 10-way head
    assert model.output.shape[-1] == 10
    loaded = [np.asarray(w) for w in model.get_weights()]
    assert len(loaded) == len(saved) + 2  # + the new head's kernel and bias
    for got, want in zip(loaded, saved):
        np.testing.assert_array_equal(got, want)
    assert model.get_layer("imagenet_scale") is not None  # [0, 1] inputs -> [-1, 1]


def test_missing_imagenet_weights_name_the_cache_path_and_file(tmp_path, monkeypatch):
    from edgelesspart.errors import ModelError
    from edgelesspart.model import datasets, zoo

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    # no network in this sandbox, and none needed: say so without waiting for a probe
    monkeypatch.setattr(datasets, "_network_reachable", lambda *a, **k: False)
    with pytest.raises(ModelError) as info:
        zoo.build_model("resnet50", SHAPE, 10, weights="imagenet")
    message = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message and "KERAS_HOME" in message
    assert "--weights none" in message
    with pytest.raises(ModelError, match="imagenet' works for resnet50, mobilenetv2"):
        zoo.build_model("small_cnn", SHAPE, 10, weights="imagenet")


def test_a_wrong_file_at_the_cache_path_is_refused(tmp_path, monkeypatch):
    from edgelesspart.errors import ModelError
    from edgelesspart.model import zoo

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    path, *_ = zoo.imagenet_weights_file("mobilenetv2", SHAPE, ALPHA)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an h5 file")
    with pytest.raises(ModelError, match="does not hold mobilenetv2 ImageNet base weights"):
        zoo.build_model("mobilenetv2", SHAPE, 10, width=ALPHA, weights="imagenet")


def test_freeze_then_unfreeze_trains_the_head_first():
    """Phase 1 trains only the layer named ``predictions``; phase 2 fine-tunes every layer.

    (A tiny stand-in for the pre-trained base: the schedule is the same for any model.)"""
    from edgelesspart._lazy import keras
    from edgelesspart.model.training import TrainingConfig, fit_backbone

    k = keras()
    rng = np.random.default_rng(0)

    class Data:
        y_train = rng.integers(0, 3, 96)
        x_train = (rng.random((96, 4, 4, 3)) + 0.3 * y_train[:, None, None, None]).astype(
            np.float32
        )
        y_val = rng.integers(0, 3, 48)
        x_val = (rng.random((48, 4, 4, 3)) + 0.3 * y_val[:, None, None, None]).astype(np.float32)

    def model():
        k.utils.set_random_seed(0)
        inputs = k.Input((4, 4, 3))
        x = k.layers.Conv2D(4, 3, padding="same", name="base_conv")(inputs)
        x = k.layers.GlobalAveragePooling2D()(x)
        return k.Model(inputs, k.layers.Dense(3, activation="softmax", name="predictions")(x))

    first = model()
    base = first.get_layer("base_conv").get_weights()[0].copy()
    head_only = fit_backbone(first, Data, TrainingConfig(epochs=1, freeze_epochs=1))
    assert head_only.epochs == 1
    np.testing.assert_array_equal(first.get_layer("base_conv").get_weights()[0], base)
    assert all(layer.trainable for layer in first.layers)  # unfrozen afterwards
    second = model()
    both = fit_backbone(second, Data, TrainingConfig(epochs=3, freeze_epochs=1, patience=5))
    assert both.epochs == 3
    assert not np.array_equal(second.get_layer("base_conv").get_weights()[0], base)
    assert both.final_learning_rate <= TrainingConfig().finetune_learning_rate + 1e-12
