"""The ``--bottleneck`` option, its candidates and cloud fine-tuning (model/bottleneck.py)."""

from __future__ import annotations

import pytest

from edgelesspart.build import BuildConfig
from edgelesspart.errors import ConfigError
from edgelesspart.model.bottleneck import BottleneckShape, candidate_shapes, parse_bottleneck


def test_the_option_takes_none_auto_or_a_channel_count():
    assert parse_bottleneck("none") == "none" and parse_bottleneck(" AUTO ") == "auto"
    assert parse_bottleneck("4") == 4 and parse_bottleneck(8) == 8
    with pytest.raises(ConfigError, match="Unknown bottleneck 'tiny'.*channel count"):
        parse_bottleneck("tiny")
    with pytest.raises(ConfigError, match="at least 1 channel"):
        parse_bottleneck("0")


def test_build_config_checks_the_bottleneck_options():
    assert BuildConfig(bottleneck=4).bottleneck == "4"
    assert BuildConfig.from_mapping({"bottleneck": "auto"}).bottleneck == "auto"
    with pytest.raises(ConfigError, match="bottleneck_max_loss must be"):
        BuildConfig(bottleneck="auto", bottleneck_max_loss=-1)
    # joint exit training would change the tail the decoder was trained for
    with pytest.raises(ConfigError, match="--exit-training joint fine-tunes the backbone"):
        BuildConfig(bottleneck="auto", exit_training="joint")
    # cloud fine-tuning is a number of epochs, and only with a bottleneck
    assert BuildConfig(bottleneck="auto", bottleneck_finetune=5).bottleneck_finetune == 5
    with pytest.raises(ConfigError, match="needs --bottleneck auto or a channel count"):
        BuildConfig(bottleneck_finetune=5)
    with pytest.raises(ConfigError, match="bottleneck_finetune must be a number of epochs"):
        BuildConfig(bottleneck="auto", bottleneck_finetune=-1)
    assert BuildConfig(bottleneck="auto", bottleneck_loss="accuracy").bottleneck_loss == "accuracy"
    with pytest.raises(ConfigError, match="Unknown bottleneck_loss 'net'"):
        BuildConfig(bottleneck="auto", bottleneck_loss="net")


def test_candidates_shrink_the_boundary():
    # GIVEN an (8, 8, 64) boundary: auto trains C/8 and C/16 at stride 1 and C/4 at stride 2
    assert candidate_shapes((8, 8, 64), "auto") == [
        BottleneckShape(8, 1),
        BottleneckShape(4, 1),
        BottleneckShape(16, 2),
    ]
    # odd or small spatial sizes get no strided candidate; dense boundaries are 1-D
    assert candidate_shapes((7, 7, 64), 4) == [BottleneckShape(4, 1)]
    assert candidate_shapes((256,), "auto") == [BottleneckShape(32, 1), BottleneckShape(16, 1)]
    with pytest.raises(ConfigError, match="does not shrink a boundary of 16 channels"):
        candidate_shapes((8, 8, 16), 16)


def test_cloud_finetuning_leaves_the_backbone_until_the_pair_is_used():
    """finetune_cloud returns the tuned cloud weights and decoder without touching the
    backbone or the distilled pair; BottleneckResult.apply_finetune then puts them in."""
    import numpy as np

    from edgelesspart._lazy import keras
    from edgelesspart.model.bottleneck import finetune_cloud, train_bottleneck
    from edgelesspart.model.graph import functional_model, split_model
    from edgelesspart.planning.bottleneck_stage import BottleneckResult

    k = keras()
    k.utils.set_random_seed(0)
    x_in = k.Input((8, 8, 3))
    y = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x_in)
    y = k.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(y)
    y = k.layers.GlobalAveragePooling2D(name="gap")(y)
    out = k.layers.Dense(3, activation="softmax", name="probs")(y)
    model = functional_model(k.Model(x_in, out))
    rng = np.random.default_rng(0)
    x = rng.random((48, 8, 8, 3), dtype=np.float32)
    labels = (x[:, :4, :4, 0].mean(axis=(1, 2)) * 3).astype(int).clip(0, 2)
    head, tail = split_model(model, "c1")
    pair = train_bottleneck(head, tail, "c1", BottleneckShape(2, 1), x[:32], x[32:], epochs=1)
    before = [w.copy() for w in model.get_weights()]
    decoder_before = [w.copy() for w in pair.decoder.get_weights()]
    encoder_before = [w.copy() for w in pair.encoder.get_weights()]

    tuned = finetune_cloud(
        head, tail, pair, x[:32], labels[:32], x[32:], labels[32:], epochs=2,
        learning_rate=1e-2,
    )  # fmt: skip

    # THEN the backbone and the distilled pair are as they were
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(decoder_before, pair.decoder.get_weights(), strict=True)
    )
    assert pair.tail_weights is None and tuned.tail_weights is not None
    assert tuned.decoder is not pair.decoder and tuned.finetune["epochs"] >= 1
    assert tuned.describe()["cloud_finetuned"] is True
    changed = [not np.array_equal(a, b) for a, b in zip(tail.get_weights(), tuned.tail_weights)]
    assert any(changed)
    # AND the encoder (edge side) is not trained by the fine-tuning
    assert all(
        np.array_equal(a, b)
        for a, b in zip(encoder_before, tuned.encoder.get_weights(), strict=True)
    )

    # WHEN the pair is the one used, its cloud weights go into the backbone after the split only
    result = BottleneckResult(_decision_using(tuned), {tuned.shape.label: tuned}, None, None,
                              tail=tail)  # fmt: skip
    assert result.apply_finetune()
    assert np.array_equal(model.get_layer("c1").get_weights()[0], before[0])
    for got, want in zip(tail.get_weights(), tuned.tail_weights, strict=True):
        assert np.array_equal(got, want)


def _decision_using(pair):
    from types import SimpleNamespace

    from edgelesspart.planning.bottleneck import BottleneckDecision

    return BottleneckDecision(SimpleNamespace(label=pair.shape.label), None, "test")
