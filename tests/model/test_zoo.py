"""Tests for the model zoo and user-model loading (edgelesspart.model.zoo)."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.errors import ModelError
from edgelesspart.model.zoo import ZOO_MODELS, build_model, load_user_model, resolve_model

keras = pytest.importorskip("keras")

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
WIDTHS = {"mobilenetv2": 0.35}


@pytest.fixture(scope="module", params=ZOO_MODELS)
def zoo_model(request: pytest.FixtureRequest) -> tuple[str, keras.Model]:
    """Each zoo model, built once per module at the dataset's 32x32x3 input."""
    name = request.param
    model = build_model(name, INPUT_SHAPE, NUM_CLASSES, width=WIDTHS.get(name, 1.0))
    return name, model


@pytest.fixture
def tiny_model() -> keras.Model:
    """A tiny functional classifier."""
    inputs = keras.Input(shape=(8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


def test_zoo_model_has_dataset_input_and_class_output(zoo_model):
    # GIVEN a zoo model built for 32x32x3 inputs and 10 classes
    _, model = zoo_model
    # WHEN its signature and a forward pass are inspected
    probabilities = np.asarray(model(np.zeros((2, *INPUT_SHAPE), np.float32), training=False))
    # THEN users feed the dataset's shape and get one probability row per sample
    assert model.input_shape == (None, *INPUT_SHAPE)
    assert model.output_shape == (None, NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_zoo_model_is_flat_with_classifier_head(zoo_model):
    # GIVEN a zoo model
    _, model = zoo_model
    # WHEN its layers are listed
    layers = model.layers
    # THEN no layer is itself a model, and it ends with GAP + softmax Dense
    assert not [layer.name for layer in layers if isinstance(layer, keras.Model)]
    assert isinstance(layers[-2], keras.layers.GlobalAveragePooling2D)
    assert isinstance(layers[-1], keras.layers.Dense)
    assert layers[-1].get_config()["activation"] == "softmax"


def test_inceptionv3_resizes_small_inputs_inside_the_model(zoo_model):
    # GIVEN the zoo models
    name, model = zoo_model
    # WHEN looking for a Resizing layer
    resizes = [layer for layer in model.layers if isinstance(layer, keras.layers.Resizing)]
    # THEN only InceptionV3 (minimum 75x75) resizes, right after the input, to 75x75
    if name == "inceptionv3":
        assert [layer.name for layer in resizes] == ["resize"]
        assert model.layers[1].name == "resize"
        assert tuple(resizes[0].output.shape) == (None, 75, 75, 3)
    else:
        assert resizes == []


def test_small_cnn_is_small_residual_and_stably_named():
    # GIVEN two small_cnn builds with the same seed and one with another seed
    first = build_model("small_cnn", INPUT_SHAPE, NUM_CLASSES, seed=1)
    again = build_model("small_cnn", INPUT_SHAPE, NUM_CLASSES, seed=1)
    other = build_model("small_cnn", INPUT_SHAPE, NUM_CLASSES, seed=2)
    # WHEN their size, structure, names and weights are compared
    same = all(np.array_equal(a, b) for a, b in zip(first.get_weights(), again.get_weights()))
    differ = any(not np.array_equal(a, b) for a, b in zip(first.get_weights(), other.get_weights()))
    # THEN it is ~50-150k params with a residual Add, stable names and seeded weights
    assert 50_000 <= first.count_params() <= 150_000
    assert any(isinstance(layer, keras.layers.Add) for layer in first.layers)
    assert [layer.name for layer in first.layers] == [layer.name for layer in again.layers]
    assert {"stem_conv", "block1_add", "avg_pool", "predictions"} <= {
        layer.name for layer in first.layers
    }
    assert same and differ


def test_unknown_zoo_name_lists_the_zoo():
    # GIVEN a name that is not in the zoo
    # WHEN building it
    # THEN the error names it and lists every zoo model
    with pytest.raises(ModelError, match=r"Unknown zoo model 'vgg16'.*small_cnn, resnet50, "):
        build_model("vgg16", INPUT_SHAPE, NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("resnet50", (16, 16, 3), r"16x16 is too small for 'resnet50'.*at least 32x32"),
        ("mobilenetv2", (28, 28, 1), r"too small for 'mobilenetv2'"),
        ("small_cnn", (4, 4, 3), r"too small for 'small_cnn'"),
        ("small_cnn", (32, 32), r"\(height, width, channels\)"),
    ],
)
def test_bad_input_shapes_are_refused(name, shape, message):
    # GIVEN an input shape the model cannot take
    # WHEN building the model
    # THEN a ModelError explains the minimum or the expected form
    with pytest.raises(ModelError, match=message):
        build_model(name, shape, NUM_CLASSES)


def test_bad_width_and_class_count_are_refused():
    # GIVEN a MobileNetV2 width Keras does not define, and a one-class head
    # WHEN building
    # THEN both are refused with the allowed values
    with pytest.raises(ModelError, match=r"Unsupported MobileNetV2 width 0.2.*0.35, 0.5"):
        build_model("mobilenetv2", INPUT_SHAPE, NUM_CLASSES, width=0.2)
    with pytest.raises(ModelError, match=r"num_classes must be an integer >= 2"):
        build_model("small_cnn", INPUT_SHAPE, 1)


def test_load_user_model_round_trip(tiny_model, tmp_path):
    # GIVEN a tiny model saved as .keras
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    # WHEN it is loaded back
    loaded = load_user_model(path)
    # THEN it predicts exactly what the original did
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in tiny_model.layers]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), tiny_model.predict(x, verbose=0))


def test_load_user_model_refuses_other_formats_and_missing_files(tmp_path):
    # GIVEN an .h5 path and a .keras path that does not exist
    # WHEN loading them
    # THEN the errors say what is wrong and how to fix it
    with pytest.raises(ModelError, match=r"only the Keras 3 '.keras' format.*'.h5'.*model.save"):
        load_user_model(tmp_path / "model.h5")
    with pytest.raises(ModelError, match=r"Model file not found: .*missing.keras"):
        load_user_model(tmp_path / "missing.keras")


def test_load_user_model_wraps_corrupt_and_unsafe_files(tmp_path):
    # GIVEN a corrupt .keras file and a model with a Lambda layer (code, refused by safe mode)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip archive")
    inputs = keras.Input(shape=(4,))
    unsafe = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    unsafe_path = tmp_path / "unsafe.keras"
    unsafe.save(unsafe_path)
    # WHEN loading them
    # THEN each fails as a ModelError that explains the expected file
    with pytest.raises(ModelError, match=r"Could not load .*corrupt.keras.*saved by Keras 3"):
        load_user_model(corrupt)
    with pytest.raises(ModelError, match=r"Could not load .*unsafe.keras.*Lambda"):
        load_user_model(unsafe_path)


def test_resolve_model_from_zoo_and_from_file(tiny_model, tmp_path):
    # GIVEN a zoo name and a saved .keras file
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    # WHEN resolving both
    zoo, zoo_info = resolve_model("small_cnn", INPUT_SHAPE, NUM_CLASSES, seed=3)
    loaded, file_info = resolve_model(str(path), (8, 8, 3), 3)
    # THEN each comes with a JSON-ready description of where it came from
    assert zoo_info == {
        "name": "small_cnn",
        "source": "zoo",
        "params": zoo.count_params(),
        "weights": "random",
    }
    assert file_info == {
        "name": "tiny",
        "source": "file",
        "params": loaded.count_params(),
        "path": str(path.resolve()),
    }


def test_resolve_model_refuses_unknown_and_mismatched_models(tiny_model, tmp_path):
    # GIVEN an unknown spec and a file model whose shapes do not fit the dataset
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    # WHEN resolving them
    # THEN the errors name the zoo, the received shape and the expected one
    with pytest.raises(ModelError, match=r"Unknown model 'lenet'.*small_cnn.*\.keras"):
        resolve_model("lenet", INPUT_SHAPE, NUM_CLASSES)
    with pytest.raises(ModelError, match=r"expects input shape \(8, 8, 3\).*\(32, 32, 3\)"):
        resolve_model(str(path), INPUT_SHAPE, 3)
    with pytest.raises(ModelError, match=r"predicts 3 classes, but the dataset has 10"):
        resolve_model(str(path), (8, 8, 3), NUM_CLASSES)
