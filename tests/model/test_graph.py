"""Cut points and segment extraction: composing all segments reproduces the full model."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.errors import GraphError

keras = pytest.importorskip("keras")

from edgelesspart.model.graph import (  # noqa: E402
    cut_tensor,
    extract,
    find_cut_points,
    functional_model,
    split_model,
)
from edgelesspart.model.zoo import build_model  # noqa: E402

pytestmark = pytest.mark.needs_tf


def branchy_model():
    """input -> conv -> {3x3, 1x1 -> 3x3} -> add -> concat(with pooled skip) -> head."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
    b = keras.layers.Conv2D(4, 1, padding="same", name="b1")(x)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b2")(b)
    y = keras.layers.Add(name="merge")([a, b])
    skip = keras.layers.AveragePooling2D(1, name="skip")(x)
    z = keras.layers.Concatenate(name="concat")([y, skip])
    z = keras.layers.ReLU(name="relu")(z)
    z = keras.layers.GlobalAveragePooling2D(name="gap")(z)
    outputs = keras.layers.Dense(5, activation="softmax", name="head")(z)
    return keras.Model(inputs, outputs, name="branchy")


def compose_all(model, x):
    """Run x through one segment per consecutive pair of cut points; return final output."""
    names = ["input", *(c.name for c in find_cut_points(model)), "output"]
    for start, end in zip(names, names[1:]):
        segment = extract(model, start, {"boundary": cut_tensor(model, end)})
        x = np.asarray(segment(x, training=False)["boundary"])
    return x


@pytest.fixture(scope="module")
def probe():
    return np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)


def test_branch_interiors_are_not_cut_points():
    # GIVEN a model with parallel branches and a skip connection
    model = branchy_model()
    # WHEN its cut points are found
    names = [c.name for c in find_cut_points(model)]
    # THEN only tensors every path passes through are cut points, in model order
    assert names == ["stem", "concat", "relu", "gap"]
    assert find_cut_points(model)[1].shape == (16, 16, 8)


def test_branchy_model_segments_compose_to_full_model():
    model = branchy_model()
    x = np.random.default_rng(1).random((3, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(compose_all(model, x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs",
    [("resnet50", {}), ("mobilenetv2", {"width": 0.35}), ("inceptionv3", {})],
)
def test_zoo_segments_compose_to_full_model(name, kwargs, probe):
    # GIVEN a zoo model built small for 32x32 inputs
    model = build_model(name, (32, 32, 3), 10, **kwargs)
    cuts = find_cut_points(model)
    assert len(cuts) >= 5
    # WHEN every segment between consecutive cut points runs in turn
    composed = compose_all(model, probe)
    # THEN the result equals the full model
    np.testing.assert_allclose(composed, np.asarray(model(probe, training=False)), atol=1e-5)


def test_split_model_head_tail_round_trip():
    model = branchy_model()
    head, tail = split_model(model, "concat")
    x = np.random.default_rng(2).random((2, 16, 16, 3), dtype=np.float32)
    boundary = head(x)["boundary"]
    np.testing.assert_allclose(tail(boundary)["probs"], model(x), atol=1e-6)
    assert tuple(tail.inputs[0].shape[1:]) == (16, 16, 8)


def test_segments_save_and_load_in_safe_mode(tmp_path):
    model = branchy_model()
    tail = extract(model, "relu", {"probs": model.outputs[0]})
    tail.save(tmp_path / "tail.keras")
    loaded = keras.saving.load_model(tmp_path / "tail.keras", safe_mode=True, compile=False)
    x = np.random.default_rng(3).random((1, 16, 16, 8), dtype=np.float32)
    np.testing.assert_allclose(loaded(x)["probs"], tail(x)["probs"], atol=1e-6)


def test_sequential_is_rewired_to_functional():
    seq = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
         keras.layers.Dense(3)]
    )
    model = functional_model(seq)
    assert len(find_cut_points(model)) == 2
    x = np.ones((1, 8, 8, 1), np.float32)
    np.testing.assert_allclose(model(x), seq(x), atol=1e-6)


def test_nested_model_is_rejected_with_reason():
    inner = branchy_model()
    inputs = keras.Input((16, 16, 3))
    outer = keras.Model(inputs, inner(inputs))
    with pytest.raises(GraphError, match="nested model.*input_tensor="):
        find_cut_points(outer)


def test_multi_input_model_is_rejected():
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Add()([a, b])))
    with pytest.raises(GraphError, match="single-input, single-output.*2 inputs"):
        find_cut_points(model)


def test_unknown_and_non_cut_names_are_refused():
    model = branchy_model()
    with pytest.raises(GraphError, match="No layer output called 'nope'"):
        cut_tensor(model, "nope")
    with pytest.raises(GraphError, match="'a' is not a cut point"):
        cut_tensor(model, "a")
