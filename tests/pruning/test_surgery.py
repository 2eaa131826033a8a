"""Structured pruning: channel groups, real channel removal, equivalence with masking, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.errors import PruningError

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.needs_tf

from edgelesspart.pruning import analyze, prune_model  # noqa: E402
from edgelesspart.pruning.surgery import _Keep  # noqa: E402

L = keras.layers


def residual_model():
    """Stem conv + two convs added back onto it (one Add group), BN everywhere."""
    inputs = keras.Input((12, 12, 3), name="image")
    stem = L.BatchNormalization(name="stem_bn")(L.Conv2D(8, 3, padding="same", name="stem")(inputs))
    stem = L.ReLU(name="stem_relu")(stem)
    x = L.Conv2D(6, 3, padding="same", name="mid")(stem)
    x = L.BatchNormalization(name="mid_bn")(x)
    x = L.ReLU(name="mid_relu")(x)
    x = L.Conv2D(8, 3, padding="same", name="back")(x)
    x = L.Add(name="add")([stem, x])
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Conv2D(10, 1, name="head_conv")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(4, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="residual")


def concat_model():
    """Two branches concatenated on channels, BN over the concat, then Flatten -> Dense."""
    inputs = keras.Input((8, 8, 2), name="image")
    a = L.Conv2D(6, 3, padding="same", activation="relu", name="branch_a")(inputs)
    b = L.Conv2D(4, 1, padding="same", activation="relu", name="branch_b")(inputs)
    x = L.Concatenate(name="concat")([a, b])
    x = L.BatchNormalization(name="concat_bn")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="fuse")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(12, activation="relu", name="hidden")(x)
    outputs = L.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="concat")


def separable_se_model():
    """SeparableConv2D (depth multiplier 2), a squeeze-excite block, a Reshape to flat -> Dense."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    x = L.SeparableConv2D(12, 3, padding="same", depth_multiplier=2, name="sep")(x)
    x = L.BatchNormalization(name="sep_bn")(x)
    se = L.GlobalAveragePooling2D(name="se_squeeze")(x)
    se = L.Reshape((1, 1, 12), name="se_reshape")(se)
    se = L.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = L.Conv2D(12, 1, activation="sigmoid", name="se_expand")(se)
    x = L.Multiply(name="se_excite")([x, se])
    x = L.Conv2D(6, 3, strides=2, padding="same", name="fuse")(x)
    x = L.Reshape((4 * 4 * 6,), name="flat")(x)
    outputs = L.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="separable_se")


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


def masked_copy(model, result):
    """The original model with every consumer's weights for removed input channels zeroed."""
    graph = analyze(model)
    keep = _Keep(graph, {k: np.asarray(v) for k, v in result.kept.items()})
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, kind in graph.kinds.items():
        if kind != "producer":
            continue
        layer = copy.get_layer(name)
        weights = layer.get_weights()
        mask = np.zeros(weights[0].shape[-2], dtype=bool)
        mask[keep.of(graph.inputs[name][0])] = True
        weights[0] = weights[0] * mask.reshape((1,) * (weights[0].ndim - 2) + (-1, 1))
        layer.set_weights(weights)
    return copy


@pytest.mark.parametrize("build", [residual_model, concat_model, separable_se_model])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_pruned_model_equals_original_with_removed_channels_masked(build, ratio):
    # GIVEN a model with a residual Add / a Concatenate + Flatten, and random BN statistics
    keras.utils.set_random_seed(1)
    model = build()
    _randomise_bn(model)
    x = np.random.default_rng(2).random((3, *model.inputs[0].shape[1:]), dtype=np.float32)
    # WHEN it is pruned
    result = prune_model(model, ratio)
    # THEN it is really smaller, and equals the original whose removed channels are masked
    assert result.params_after < result.params_before == model.count_params()
    assert result.model.count_params() == result.params_after
    want = np.asarray(masked_copy(model, result)(x, training=False))
    got = np.asarray(result.model(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_residual_add_joins_producers_into_one_group():
    graph = analyze(residual_model())
    groups = {g.name: g for g in graph.groups}
    # the stem and the conv added back onto it share channels; the depthwise conv and the BN
    # after the stem follow them; the head conv feeds the output through GAP -> Dense, so it is
    # a group of its own; the final Dense is fixed (class count)
    assert groups["stem"].producers == ("stem", "back")
    assert set(groups["stem"].followers) == {"stem_bn", "dw"}
    assert set(groups) == {"stem", "mid", "head_conv"}
    result = prune_model(residual_model(), {"stem": 0.5})
    pruned = result.model
    assert pruned.get_layer("stem").filters == pruned.get_layer("back").filters == 4
    assert pruned.get_layer("mid").filters == 6  # untouched group
    assert pruned.get_layer("dw").get_weights()[0].shape[-2] == 4
    assert pruned.get_layer("predictions").units == 4


def test_concat_offsets_and_flatten_dense_rows():
    model = concat_model()
    result = prune_model(model, {"branch_a": 0.5, "branch_b": 0.5, "fuse": 0.5})
    kept_a, kept_b = result.kept["branch_a"], result.kept["branch_b"]
    assert len(kept_a) == 3 and len(kept_b) == 2
    fuse = result.model.get_layer("fuse").get_weights()[0]
    original = model.get_layer("fuse").get_weights()[0]
    # THEN the next conv's input rows are branch a's kept channels, then b's shifted by 6
    rows = [*kept_a, *(6 + i for i in kept_b)]
    np.testing.assert_array_equal(fuse, original[:, :, rows, :][..., list(result.kept["fuse"])])
    # and the Dense after Flatten keeps position-major rows: 16 positions x 4 kept channels
    hidden = result.model.get_layer("hidden").get_weights()[0]
    assert hidden.shape[0] == 4 * 4 * len(result.kept["fuse"])
    bn = result.model.get_layer("concat_bn").get_weights()[0]
    np.testing.assert_array_equal(bn, model.get_layer("concat_bn").get_weights()[0][rows])


def test_kept_channels_of_a_pruned_layer_match_the_unpruned_outputs():
    # GIVEN the first conv of a model pruned by half
    keras.utils.set_random_seed(3)
    model = concat_model()
    result = prune_model(model, 0.5)
    x = np.random.default_rng(4).random((2, 8, 8, 2), dtype=np.float32)

    # WHEN both models' branch_a outputs are read
    def branch(m):
        return np.asarray(keras.Model(m.inputs[0], m.get_layer("branch_a").output)(x))

    # THEN the pruned layer's outputs are exactly the unpruned outputs at the kept channels
    np.testing.assert_allclose(
        branch(result.model), branch(model)[..., list(result.kept["branch_a"])], atol=1e-6
    )


def test_l1_ranking_keeps_the_largest_filters():
    model = concat_model()
    kernel, bias = model.get_layer("branch_a").get_weights()
    scale = np.array([0.01, 5, 0.01, 3, 4, 0.02], dtype=np.float32)
    model.get_layer("branch_a").set_weights([kernel * scale, bias])
    result = prune_model(model, {"branch_a": 0.5})
    assert result.kept["branch_a"] == (1, 3, 4)


def test_unknown_layer_is_refused_with_its_name_unless_frozen():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="c1")(inputs)
    x = L.Conv2DTranspose(4, 3, padding="same", name="upconv")(x)
    x = L.Conv2D(4, 3, padding="same", name="c2")(x)
    outputs = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    with pytest.raises(PruningError, match="'upconv' \\(Conv2DTranspose\\)"):
        prune_model(model, 0.5)
    # WHEN frozen, the channels around the unknown layer stay (and the prune says so), the
    # others are pruned
    from edgelesspart.pruning import PruningWarning

    with pytest.warns(PruningWarning, match=r"upconv \(Conv2DTranspose\) 4"):
        result = prune_model(model, 0.5, unknown="freeze")
    assert [g.name for g in analyze(model, unknown="freeze").groups] == ["c2"]
    assert result.model.get_layer("c1").filters == 4 and result.model.get_layer("c2").filters == 2


def test_shared_layer_and_bad_ratio_are_refused():
    inputs = keras.Input((8, 8, 3))
    conv = L.Conv2D(3, 3, padding="same", name="shared")
    outputs = L.GlobalAveragePooling2D()(conv(conv(inputs)))
    with pytest.raises(PruningError, match="'shared' is called more than once"):
        analyze(keras.Model(inputs, outputs))
    with pytest.raises(PruningError, match="outside \\[0, 0.95\\]"):
        prune_model(concat_model(), 1.0)
    with pytest.raises(PruningError, match="unknown channel groups \\['nope'\\]"):
        prune_model(concat_model(), {"nope": 0.5})


@pytest.mark.parametrize("name", ["small_cnn", "mobilenetv2", "resnet50"])
def test_zoo_models_prune_to_fewer_parameters(name):
    from edgelesspart.model.zoo import build_model

    model = build_model(name, (32, 32, 3), 10)
    result = prune_model(model, 0.5)
    x = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    assert result.model(x).shape == (1, 10)
    # roughly quadratic in width: half the filters leaves about a quarter of the weights
    assert result.params_after < 0.35 * result.params_before


def test_user_keras_file_prunes_after_safe_load(tmp_path):
    from edgelesspart.model.zoo import load_user_model

    path = tmp_path / "user.keras"
    residual_model().save(path)
    result = prune_model(load_user_model(path), 0.25)
    assert result.params_after < result.params_before


@pytest.mark.parametrize("name", ["mobilenetv2", "resnet50"])
def test_zoo_model_pruning_is_exact_against_masking(name):
    # GIVEN a Keras application (depthwise convs, residual Adds, BN) with random BN statistics
    from edgelesspart.model.zoo import build_model

    model = build_model(name, (32, 32, 3), 10, seed=2)
    _randomise_bn(model, seed=3)
    x = np.random.default_rng(4).random((2, 32, 32, 3), dtype=np.float32)
    # WHEN it is pruned by half
    result = prune_model(model, 0.5)
    # THEN it computes exactly what the original computes with the removed channels masked
    want = np.asarray(masked_copy(model, result)(x, training=False))
    got = np.asarray(result.model(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_squeeze_excite_and_separable_convs_are_pruned_as_one_group():
    # GIVEN a separable conv whose channels an SE block rescales (GAP -> Reshape -> convs -> *)
    model = separable_se_model()
    graph = analyze(model)
    groups = {g.name: g for g in graph.groups}
    # THEN the SE expand conv joins the separable conv's group, the Reshape only passes it
    assert groups["sep"].producers == ("sep", "se_expand")
    assert set(groups) == {"stem", "sep", "se_reduce", "fuse"}
    assert graph.kinds["se_reshape"] == "reshape"
    # WHEN pruned by half, the Reshape targets, the depthwise kernel and the pointwise rows follow
    result = prune_model(model, 0.5)
    pruned = result.model
    assert pruned.get_layer("se_reshape").target_shape == (1, 1, 6)
    depthwise, pointwise, _ = pruned.get_layer("sep").get_weights()
    assert depthwise.shape == (3, 3, 4, 2) and pointwise.shape == (1, 1, 8, 6)
    assert pruned.get_layer("flat").target_shape == (4 * 4 * 3,)
    assert result.report.achieved == pytest.approx(0.5, abs=0.05)
    assert result.report.held_back == ()


def test_prune_report_names_the_layers_that_held_filters_back():
    from edgelesspart.pruning import PruningWarning

    # GIVEN a model whose widest convs feed a LayerNormalization (it mixes all channels)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(32, 3, padding="same", name="wide_a")(inputs)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Conv2D(32, 3, padding="same", name="wide_b")(x)
    x = L.Reshape((8, 8, 8, 4), name="mixing_reshape")(x)
    x = L.Reshape((8, 8, 32), name="back")(x)
    x = L.Conv2D(4, 3, padding="same", name="narrow")(x)
    outputs = L.Dense(2, name="logits")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    # WHEN it is pruned by half
    with pytest.warns(PruningWarning, match=r"held back by: .*ln \(LayerNormalization\)"):
        result = prune_model(model, 0.5)
    # THEN the report says how little was achieved and which layers held the filters
    report = result.report
    assert report.requested == 0.5
    assert report.filters == 32 + 32 + 4 + 2 and report.output_filters == 2
    assert report.achieved == pytest.approx(2 / 70)
    assert report.held_share == pytest.approx(64 / 70)
    assert dict(report.held_back) == {
        "ln (LayerNormalization)": 32,
        "mixing_reshape (Reshape)": 32,
    }
    assert result.to_dict()["report"]["held_back"][0]["filters"] == 32


def test_efficientnet_b0_prunes_through_squeeze_excite_blocks():
    # GIVEN the real keras.applications EfficientNetB0 graph (a model the pruner was not written
    # for: SE blocks, swish, Rescaling + Normalization in front), small input, random BN stats
    keras.utils.set_random_seed(5)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=10)
    _randomise_bn(model, seed=6)
    # WHEN it is pruned by half
    result = prune_model(model, 0.5)
    # THEN the expand, SE and stem convs are pruned too: at most 0.35x the parameters, nothing
    # held back, and the pruned model computes what the masked original computes
    assert result.params_after <= 0.35 * result.params_before
    assert result.report.held_back == ()
    assert result.report.achieved == pytest.approx(0.5, abs=0.02)
    assert result.model.get_layer("block2a_expand_conv").filters == 48
    assert result.model.get_layer("stem_conv").filters == 16
    x = np.random.default_rng(7).random((2, 64, 64, 3), dtype=np.float32) * 255
    want = np.asarray(masked_copy(model, result)(x, training=False))
    got = np.asarray(result.model(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
