"""Prune-robust training and the width bundle: real narrow segments, exact slicing, exact switch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgelesspart.dynamic.stage import WidthStage
from edgelesspart.dynamic.widths import (
    DynamicManifest,
    channels_at,
    check_widths,
    load_manifest,
)
from edgelesspart.errors import BundleError, ConfigError, TrainingError
from edgelesspart.runtime.segments import SegmentRunner

pytestmark = pytest.mark.needs_tf


def test_channel_arithmetic() -> None:
    assert [channels_at(32, w) for w in (1.0, 0.75, 0.5, 0.25)] == [32, 24, 16, 8]
    assert channels_at(3, 0.25) == 1 and channels_at(10, 0.75) == 8
    assert check_widths([0.5, 1, 0.25]) == (1.0, 0.5, 0.25)
    with pytest.raises(ConfigError, match="include 1.0"):
        check_widths([0.5, 0.25])
    with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
        channels_at(8, 1.5)


def test_narrow_slices_compute_exactly_the_masked_network() -> None:
    # GIVEN a random chain CNN and one width per stage
    from edgelesspart.dynamic.model import (
        build_chain_cnn,
        masked_forward,
        model_channels,
        stage_model,
        width_mask,
    )

    model = build_chain_cnn((16, 16, 3), 10, (8, 16, 12), seed=1)
    x = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    widths = (0.5, 0.25, 0.75)
    # WHEN the real narrow stages (fewer filters) run in a chain
    out = x
    for k, w in enumerate(widths):
        narrow = stage_model(model, k, w)
        assert narrow.get_layer(f"s{k}_conv0").filters == channels_at(model_channels(model)[k], w)
        out = next(iter(narrow(out, training=False).values()))
    # THEN they give what the full model gives with the pruned channels masked to zero
    masks = [width_mask(c, w) for c, w in zip(model_channels(model), widths)]
    expected = masked_forward(model, x, masks, training=False)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)


def test_l1_reordering_keeps_the_function() -> None:
    from edgelesspart.dynamic.model import build_chain_cnn, reorder_by_l1

    model = build_chain_cnn((16, 16, 3), 10, (8, 16), seed=2)
    x = np.random.default_rng(1).random((3, 16, 16, 3), dtype=np.float32)
    before = np.asarray(model(x, training=False))
    reorder_by_l1(model)
    np.testing.assert_allclose(np.asarray(model(x, training=False)), before, atol=1e-5)
    kernel = model.get_layer("s0_conv0").get_weights()[0]
    norms = np.abs(kernel).sum(axis=(0, 1, 2))
    assert np.all(np.diff(norms) <= 1e-6)  # most important filters first


def test_training_strategies_pass_plans() -> None:
    from edgelesspart.dynamic.training import WidthTrainingConfig, pass_widths

    rng = np.random.default_rng(0)
    sandwich = pass_widths(WidthTrainingConfig(strategy="sandwich"), 4, rng)
    assert sandwich[0] == (1.0,) * 4 and sandwich[1] == (0.25,) * 4 and len(sandwich) == 4
    slim = pass_widths(WidthTrainingConfig(strategy="slimmable"), 2, rng)
    assert slim == [(1.0, 1.0), (0.75, 0.75), (0.5, 0.5), (0.25, 0.25)]
    assert pass_widths(WidthTrainingConfig(strategy="posthoc"), 3, rng) == [(1.0,) * 3]
    with pytest.raises(TrainingError, match="Strategies: posthoc, slimmable, sandwich"):
        WidthTrainingConfig(strategy="random")


def test_bundle_records_real_narrow_segments_with_latency_and_accuracy(width_bundle) -> None:
    manifest = load_manifest(width_bundle.path)
    assert manifest.widths == (1.0, 0.5) and len(manifest.stages) == 2
    for stage in manifest.stages:
        full, half = stage.at(1.0), stage.at(0.5)
        assert half.channels == full.channels // 2
        assert full.latency_ms > 0 and half.latency_ms > 0
        assert 0.0 <= half.accuracy <= 1.0
        # a narrow segment is a smaller file: fewer filters, not masked ones
        size = (width_bundle.path / half.segment.files["tflite"]).stat().st_size
        assert size < (width_bundle.path / full.segment.files["tflite"]).stat().st_size
        # every width takes and hands on the same full-channel boundary
        assert half.segment.input == full.segment.input
        assert half.segment.boundary == full.segment.boundary
    assert set(manifest.uniform_accuracy) == {"1", "0.5"}
    again = DynamicManifest.from_dict(json.loads((width_bundle.path / "dynamic.json").read_text()))
    assert again == manifest


def test_width_switch_is_exact(width_bundle) -> None:
    # GIVEN a stage holding both widths, and the exported narrow segment run on its own
    manifest = load_manifest(width_bundle.path)
    stage = WidthStage(width_bundle.path, [0], manifest=manifest)
    spec = manifest.stages[0].at(0.5).segment
    alone = SegmentRunner(width_bundle.path / spec.files["tflite"], spec, pool_size=1)
    x = width_bundle.x
    full = stage(x)
    # WHEN the stage switches to 0.5 live
    assert stage.set_width(0.5) == 1.0
    # THEN it answers exactly what the exported narrow segment answers, and switches back
    np.testing.assert_array_equal(stage(x), alone(x)[1])
    stage.set_width(1.0)
    np.testing.assert_array_equal(stage(x), full)
    assert stage.switches == 2
    with pytest.raises(ConfigError, match="holds 1, 0.5"):
        stage.set_width(0.75)


def test_single_node_chain_matches_recorded_uniform_accuracy(width_bundle) -> None:
    manifest = load_manifest(width_bundle.path)
    edge = WidthStage(width_bundle.path, [0, 1], manifest=manifest)
    from edgelesspart.model.datasets import load_dataset

    data = load_dataset("digits", image_size=16, limit=240)
    for w in manifest.widths:
        acc = float(np.mean(np.argmax(edge(data.x_test, width=w), axis=1) == data.y_test))
        assert acc == pytest.approx(manifest.uniform_accuracy[f"{w:g}"])


def test_tampered_bundle_is_refused(width_bundle, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(width_bundle.path, copy)
    victim = next(copy.glob("stage1_w0.5.tflite"))
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        load_manifest(copy)
    (copy / "dynamic.json").unlink()
    with pytest.raises(BundleError, match="dynamic.json is missing"):
        load_manifest(copy)
