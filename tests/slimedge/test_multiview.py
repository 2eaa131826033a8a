"""Multi-view data, the fusion head, view-dropout training, per-view curves and the CLI path."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("pymoo")
pytestmark = pytest.mark.needs_tf

from edgelesspart.errors import ConfigError, DatasetError  # noqa: E402
from edgelesspart.slimedge.model import (  # noqa: E402
    MultiViewModel,
    build_fusion,
    fusion_input,
    train_multiview,
    view_dropout_mask,
)
from edgelesspart.slimedge.views import digits_views, load_npz_views  # noqa: E402


def test_digit_views_are_distinct_noisy_regions():
    data = digits_views(4, limit=60)
    assert data.n_views == 4 and data.view_shape == (20, 20, 1)
    corners = {(r["top"], r["left"]) for r in data.regions}
    assert len(corners) == 4
    noise = [r["noise_std"] for r in data.regions]
    assert noise == sorted(noise) and noise[0] < noise[-1]
    assert not np.allclose(data.train[0], data.train[1])
    assert all(v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1 for v in data.train)
    with pytest.raises(DatasetError, match="n_views must be an integer in 2..8"):
        digits_views(1)


def test_user_npz_views_load_and_bad_files_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "views.npz"
    pixels = {f"x_view{v}": rng.integers(0, 255, (50, 6, 6, 1), dtype=np.uint8) for v in range(2)}
    np.savez(path, y=rng.integers(0, 3, 50), **pixels)
    data = load_npz_views(path)
    assert data.n_views == 2 and data.num_classes <= 3 and data.view_shape == (6, 6, 1)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 50
    assert data.train[0].max() <= 1.0
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_view0=np.zeros((5, 4, 4, 1)), y=np.zeros(5))
    with pytest.raises(DatasetError, match="at least two views"):
        load_npz_views(bad)


def test_view_dropout_never_drops_every_view():
    mask = view_dropout_mask(500, 3, 0.9, np.random.default_rng(0))
    assert mask.shape == (500, 3) and (mask.sum(axis=1) >= 1).all()
    assert 0 < mask.mean() < 0.5


def test_mean_fusion_ignores_missing_views_and_loads_in_safe_mode(tmp_path):
    keras.utils.set_random_seed(0)
    fusion = build_fusion(3, 4, features=5)
    rng = np.random.default_rng(1)
    feats = [rng.random((2, 5), dtype=np.float32) for _ in range(3)]
    junk = [feats[0], rng.random((2, 5), dtype=np.float32) * 100, feats[2]]
    mask = np.array([[1, 0, 1], [1, 0, 1]], dtype=np.float32)
    # the lost view's features do not matter: only the presence flag does
    a = np.asarray(fusion(fusion_input(feats, mask)))
    b = np.asarray(fusion(fusion_input(junk, mask)))
    np.testing.assert_allclose(a, b, atol=1e-6)
    fusion.save(tmp_path / "fusion.keras")
    again = keras.saving.load_model(tmp_path / "fusion.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(fusion_input(feats, mask))), a, atol=1e-6)


@pytest.mark.slow
def test_cli_builds_a_pruned_deployment_per_device(tmp_path, capsys):
    from edgelesspart.cli import main

    rng = np.random.default_rng(0)
    # GIVEN a user dataset of two views that both carry the label (noisily)
    y = rng.integers(0, 2, 120)
    views = {f"x_view{v}": (rng.normal(0, 0.3, (120, 8, 8, 1)) + y[:, None, None, None]).astype(
        np.float32) for v in range(2)}  # fmt: skip
    np.savez(tmp_path / "views.npz", y=y, **views)
    (tmp_path / "deploy.yaml").write_text(
        f"views: 2\ndevices: rpi4,jetson-orin-nano\ndataset: {tmp_path / 'views.npz'}\n"
        f"epochs: 2\nratios: [0.0, 0.5]\nout: {tmp_path / 'dep'}\n"
    )
    # WHEN the SlimEdge build runs from the deployment file
    assert main(["build", "--deployment", str(tmp_path / "deploy.yaml")]) == 0
    out = capsys.readouterr().out
    # THEN it prints the front and the choice, and exports a segment per device and ratio
    assert "Pareto front" in out and "chosen (NSGA-II)" in out and "if rpi4 (view 0) fails" in out
    assert "verified validation accuracy" in out
    manifest = json.loads((tmp_path / "dep" / "deployment.json").read_text())
    assert manifest["plan"]["devices"] == ["rpi4", "jetson-orin-nano"]
    # the choice was checked on the real model: measured ratios, a validation accuracy
    assert manifest["plan"]["method"] == "nsga2+verified"
    assert set(manifest["plan"]["ratios"]) <= {0.0, 0.5}
    assert 0.0 <= manifest["plan"]["verified_accuracy"] <= 1.0
    assert set(manifest["failure_plans"]) == {"0", "1"}
    assert sorted(manifest["segments"]) == [
        "view0_r0.00",
        "view0_r0.50",
        "view1_r0.00",
        "view1_r0.50",
    ]
    assert (tmp_path / "dep" / "segments" / "fusion.tflite").is_file()
    with pytest.raises(ConfigError, match="exactly one device per view"):
        from edgelesspart.commands.build_views import settings

        class Args:
            views, devices, deployment = 3, "rpi4", None

        settings(Args())


def test_training_and_view_curves_on_a_tiny_model():
    from edgelesspart.slimedge.curves import CurveModel, measure_view_curves

    data = digits_views(2, limit=120, crop=12)
    model = train_multiview(data, epochs=1, widths=(4, 8))
    assert isinstance(model, MultiViewModel) and model.n_views == 2
    curves, pruned = measure_view_curves(model, data, (0.0, 0.5), finetune_epochs=1, repeats=3)
    assert set(pruned) == {(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)}
    assert curves.params[1] < curves.params[0] and curves.memory_bytes[1] < curves.memory_bytes[0]
    assert set(curves.subsets) == {"01", "10", "11"}
    assert curves.subsets["11"] == curves.base_accuracy == curves.accuracy[0][0]
    predicted = CurveModel(curves).accuracy(np.zeros((1, 2)))
    np.testing.assert_allclose(predicted, curves.base_accuracy, atol=1e-9)


def test_concat_fusion_zeroes_missing_views_exports_and_trains(tmp_path):
    from edgelesspart.model.litert import to_tflite
    from edgelesspart.slimedge.ray_runtime import AggregatorImpl

    keras.utils.set_random_seed(0)
    fusion = build_fusion(3, 4, mode="concat", features=5)
    rng = np.random.default_rng(2)
    feats = [rng.random((2, 5), dtype=np.float32) for _ in range(3)]
    junk = [feats[0], rng.random((2, 5), dtype=np.float32) * 100, feats[2]]
    mask = np.array([[1, 0, 1], [1, 1, 1]], dtype=np.float32)
    # the concatenation keeps each view's block in place and zeroes a lost view's block
    concat = keras.Model(fusion.input, fusion.get_layer("masked_concat").output)
    got = np.asarray(concat(fusion_input(junk, mask)))
    assert got.shape == (2, 15)
    np.testing.assert_allclose(got[0], np.concatenate([feats[0][0], np.zeros(5), feats[2][0]]))
    np.testing.assert_allclose(got[1], np.concatenate([junk[0][1], junk[1][1], junk[2][1]]))
    # a lost view's features do not change the answer; the head is a (15 -> 4) softmax
    lost = np.array([[1, 0, 1]] * 2, dtype=np.float32)
    a = np.asarray(fusion(fusion_input(feats, lost)))
    np.testing.assert_allclose(a, np.asarray(fusion(fusion_input(junk, lost))), atol=1e-6)
    assert fusion.get_layer("predictions").kernel.shape == (15, 4)
    np.testing.assert_allclose(a.sum(axis=-1), 1.0, atol=1e-5)
    # it loads in safe mode and its LiteRT segment fuses like Keras (the runtime's aggregator)
    fusion.save(tmp_path / "concat.keras")
    again = keras.saving.load_model(tmp_path / "concat.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(fusion_input(feats, lost))), a, atol=1e-6)
    fused = AggregatorImpl(to_tflite(fusion), 3).fuse([0, 2], feats[0], feats[2])
    np.testing.assert_allclose(fused, a, atol=1e-5)
    # and a concat multi-view model trains with view dropout and answers with views missing
    data = digits_views(2, limit=120, crop=12)
    model = train_multiview(data, mode="concat", epochs=1, widths=(4, 8))
    assert model.mode == "concat" and model.history["mode"] == "concat"
    val = model.features(data.val)
    for flags in ((1, 1), (1, 0), (0, 1)):
        assert 0.0 <= model.accuracy_from_features(val, data.y_val, flags) <= 1.0
