"""Widths for a user's model: the stage plan, masked training equals the narrow rebuild, and
``train-widths --model FILE.keras`` exports a width bundle the width runtime serves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgelesspart.cli import main

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.needs_tf

L = keras.layers


def user_model(side: int = 16, classes: int = 10):
    """Not the chain CNN: a residual stem, a squeeze-excite block, a separable conv, Dense head."""
    inputs = keras.Input((side, side, 3), name="image")
    x = L.Conv2D(12, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(10, 3, padding="same", activation="relu", name="res_a")(x)
    y = L.Conv2D(12, 3, padding="same", name="res_b")(y)
    x = L.Add(name="res_add")([x, y])
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="mid")(x)
    x = L.Conv2D(24, 1, name="expand")(x)
    x = L.BatchNormalization(name="expand_bn")(x)
    se = L.GlobalAveragePooling2D(name="se_squeeze")(x)
    se = L.Reshape((1, 1, 24), name="se_reshape")(se)
    se = L.Conv2D(6, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(24, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="se_excite")([x, se])
    x = L.Conv2D(16, 1, name="project")(x)
    x = L.MaxPooling2D(2, name="pool2")(x)
    x = L.SeparableConv2D(20, 3, padding="same", activation="relu", name="sep")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(16, activation="relu", name="hidden")(x)
    outputs = L.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="user_model")


def _randomise_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0, 0.3, beta.shape),
                    rng.normal(0, 0.3, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )


def test_inner_channels_narrow_per_stage_and_boundaries_keep_their_shape():
    from edgelesspart.dynamic.usermodel import masked_model, narrow_model, plan_widths

    # GIVEN a user model cut into three stages after each pooling
    keras.utils.set_random_seed(0)
    model = user_model()
    _randomise_bn(model)
    graph, plan = plan_widths(model, cuts=["pool1", "pool2"])
    # THEN the groups whose channels cross a cut (the residual stem group, project) stay whole,
    # and every inner group belongs to the stage that produces it
    assert plan.stages == 3
    assert plan.stage_of == {
        "res_a": 0,
        "mid": 1,
        "expand": 1,
        "se_reduce": 1,
        "sep": 2,
        "hidden": 2,
    }
    assert "stem" not in plan.stage_of and "project" not in plan.stage_of
    # WHEN stage 1 runs at half width and stage 2 at a quarter
    widths = (1.0, 0.5, 0.25)
    narrow = narrow_model(model, graph, plan, widths)
    clone, holder = masked_model(model, graph, plan)
    for name, var in holder.vars.items():
        keep = plan.kept(graph, widths)[name]
        mask = np.zeros(plan.channels[name], np.float32)
        mask[keep] = 1.0
        var.assign(mask)
    x = np.random.default_rng(1).random((3, 16, 16, 3), dtype=np.float32)
    # THEN the narrow model is really smaller, its boundaries keep their shape, and the masked
    # clone that training runs computes exactly what the narrow model computes
    assert narrow.count_params() < model.count_params()
    assert narrow.get_layer("expand").filters == 12 and narrow.get_layer("sep").filters == 5
    assert narrow.get_layer("pool1").output.shape == model.get_layer("pool1").output.shape
    assert narrow.get_layer("pool2").output.shape == model.get_layer("pool2").output.shape
    np.testing.assert_allclose(
        np.asarray(clone(x, training=False)),
        np.asarray(narrow(x, training=False)),
        rtol=1e-5,
        atol=1e-6,
    )
    # and the clone shares the model's weights (training it trains the model)
    assert clone.get_layer("mid") is model.get_layer("mid")


def test_equal_layer_cuts_and_bad_cuts():
    from edgelesspart.dynamic.usermodel import plan_widths
    from edgelesspart.errors import ConfigError

    model = user_model()
    _, plan = plan_widths(model, stages=3)
    assert len(plan.cuts) == 2 and plan.stages == 3
    with pytest.raises(ConfigError, match="distinct and in model order"):
        plan_widths(model, cuts=["pool2", "pool1"])
    with pytest.raises(ConfigError, match="cannot be cut into 40 stages"):
        plan_widths(model, stages=40)


def test_train_widths_model_file_exports_a_width_bundle_the_runtime_serves(tmp_path, capsys):
    from edgelesspart.dynamic.stage import WidthStage
    from edgelesspart.dynamic.widths import load_manifest
    from edgelesspart.model.datasets import load_dataset

    # GIVEN the user's model saved as a .keras file
    path = tmp_path / "user.keras"
    user_model().save(path)
    out = tmp_path / "user-widths"
    # WHEN train-widths makes it width-robust in two stages (one full-width epoch, then one
    # short sandwich epoch)
    argv = ["train-widths", "--model", str(path), "--stages", "2", "--epochs", "1"]
    argv += ["--pretrain-epochs", "1"]
    argv += ["--widths", "1,0.5", "--image-size", "16", "--limit", "160", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "stages cut at" in printed and "latency_ms" in printed
    # THEN every stage x width is a real LiteRT segment with measured latency and accuracy
    manifest = load_manifest(out)
    assert manifest.widths == (1.0, 0.5) and len(manifest.stages) == 2
    for stage in manifest.stages:
        full, half = stage.segments
        assert full.latency_ms > 0 and half.latency_ms > 0
        assert 0.0 <= half.accuracy <= 1.0
        assert half.channels < full.channels
        assert (out / half.segment.files["tflite"]).stat().st_size < (
            out / full.segment.files["tflite"]
        ).stat().st_size
    record = json.loads((out / "dynamic.json").read_text())["training"]
    assert record["strategy"] == "sandwich" and record["model"] == str(path)
    assert record["pretrain_epochs"] == 1 and record["pretrain_final_loss"] > 0
    # and the width runtime runs the chain at any per-stage width with full-shape boundaries
    data = load_dataset("digits", image_size=16, limit=160)
    stages = [WidthStage(out, [0]), WidthStage(out, [1])]
    x = data.x_test[:4].astype(np.float32)
    boundary = stages[0](x, width=0.5)
    assert boundary.shape == stages[0](x, width=1.0).shape
    probs = stages[1](boundary, width=0.5)
    assert probs.shape == (4, 10)


def test_serve_pipeline_refuses_slo_on_a_bundle_without_widths(tmp_path, capsys):
    assert main(["serve-pipeline", str(tmp_path), "--slo-ms", "50"]) == 2
    err = capsys.readouterr().err
    assert "not a width bundle" in err and "train-widths --model" in err


def test_train_widths_model_refuses_another_strategy(tmp_path, capsys):
    argv = ["train-widths", "--model", "small_cnn", "--strategy", "slimmable"]
    argv += ["--limit", "20", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "applies to the chain CNN only" in capsys.readouterr().err


def test_serve_pipeline_on_a_width_bundle_refuses_chain_only_options(width_bundle, capsys):
    # GIVEN a width bundle; WHEN served by serve-pipeline with options of exit/codec chains
    argv = ["serve-pipeline", str(width_bundle.path), "--slo-ms", "50", "--codec", "fp16"]
    # THEN it is refused at start with the option named (before Ray or a port is touched)
    assert main(argv) == 2
    assert "--codec do not apply to a width bundle" in capsys.readouterr().err
