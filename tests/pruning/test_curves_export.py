"""Pruning curves (measured, stored, fitted) and pruned models through the bundle export path."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.needs_tf

from bundle_factory import tiny_model  # noqa: E402

from edgelesspart.errors import PruningError  # noqa: E402
from edgelesspart.pruning import prune_model  # noqa: E402
from edgelesspart.pruning.curves import (  # noqa: E402
    PruningCurve,
    accuracy,
    finetune,
    measure_curve,
)


def test_curve_is_measured_stored_and_fitted(tmp_path):
    # GIVEN a tiny residual CNN and a few labelled samples
    keras.utils.set_random_seed(0)
    model = tiny_model(keras, (16, 16, 3), 3)
    rng = np.random.default_rng(0)
    x = rng.random((48, 16, 16, 3), dtype=np.float32)
    y = rng.integers(0, 3, 48)
    # WHEN its curve is measured at two ratios with fine-tuning
    curve = measure_curve(
        "tiny",
        model,
        (0.0, 0.5),
        evaluate=lambda m: accuracy(m, x, y),
        retrain=lambda m: finetune(m, x, y, epochs=1, batch_size=16),
        repeats=3,
    )
    # THEN every metric has a value per ratio and the pruned model is smaller
    assert curve.ratios == (0.0, 0.5)
    assert set(curve.metrics) == {
        "accuracy",
        "latency_ms",
        "params",
        "memory_bytes",
        "tflite_bytes",
    }
    assert curve.metrics["params"][1] < curve.metrics["params"][0] == model.count_params()
    assert curve.metrics["memory_bytes"][1] < curve.metrics["memory_bytes"][0]
    assert curve.metrics["tflite_bytes"][1] < curve.metrics["tflite_bytes"][0]
    assert all(0.0 <= a <= 1.0 for a in curve.metrics["accuracy"])
    # AND it round-trips through JSON and its fit reproduces the two points
    again = PruningCurve.load(curve.save(tmp_path / "tiny.json"))
    assert again == curve
    np.testing.assert_allclose(
        again.predict("params", np.array([0.0, 0.5])), curve.metrics["params"]
    )
    with pytest.raises(PruningError, match="no 'energy'"):
        curve.coefficients("energy")


def test_pruned_model_exports_through_the_bundle_path(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgelesspart.export.bundle import ExportRequest, export_bundle
    from edgelesspart.model.graph import find_cut_points
    from edgelesspart.runtime.plan import Plan, Stage

    # GIVEN the bundle fixture's model, pruned by half
    keras.utils.set_random_seed(1)
    pruned = prune_model(tiny_model(keras), 0.5).model
    cuts = tuple(c.name for c in find_cut_points(pruned))
    assert "block2_relu" in cuts  # same layer names, same cut points
    plan = Plan(
        constraint="memory",
        placement="linear",
        stages=(
            Stage("edge", "host", "input", "block2_relu"),
            Stage("cloud", "host", "block2_relu", "output"),
        ),
        cut_points=cuts,
    )
    request = ExportRequest(
        backbone=pruned,
        exit_tensors={},
        exit_cuts={},
        plan=plan,
        classes=tuple(str(i) for i in range(10)),
        preprocessing={"height": 32, "width": 32, "channels": 3, "scale": 1 / 255, "offset": 0.0},
        exit_code="",
    )
    x = np.random.default_rng(2).random((3, 32, 32, 3), dtype=np.float32)
    # WHEN it is exported as a two-segment bundle
    manifest = export_bundle(request, tmp_path / "bundle", probe=x)
    # THEN the LiteRT segments compose to the pruned model's output
    out = x
    for seg in manifest.segments:
        runner = Interpreter(model_path=str(tmp_path / "bundle" / seg.files["tflite"]))
        result = runner.get_signature_runner("serving_default")(x=out)
        out = result.get("boundary", result.get("probs"))
    assert manifest.segments[0].boundary.shape[-1] == 8  # 16 channels pruned to 8
    np.testing.assert_allclose(out, np.asarray(pruned(x, training=False)), atol=1e-4)
