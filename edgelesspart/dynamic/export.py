"""Export a trained chain CNN as a width bundle: one real narrow LiteRT segment per stage x width.

For each stage ``k`` and width ``w`` the narrow stage (:func:`~edgelesspart.dynamic.model.
stage_model`) gets its BatchNorm statistics from calibration images that pass through the
full-width stages before it (US-Nets' BN calibration; the controller narrows the one stage that
is slow, so the others run at full width), is converted to LiteRT, timed (median of repeated
batch-1 calls on this host) and scored: test accuracy of the whole chain with only stage ``k``
at ``w``. Accuracy at each uniform width (all stages narrowed together) is recorded too. All
accuracies come from the exported LiteRT files run through :class:`WidthStage`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.dynamic.model import model_channels, stage_model
from edgelesspart.dynamic.stage import WidthStage
from edgelesspart.dynamic.widths import (
    DEFAULT_WIDTHS,
    DynamicManifest,
    StageWidths,
    WidthSegment,
    channels_at,
    check_widths,
    sha256_file,
    width_key,
    write_manifest,
)
from edgelesspart.errors import BundleError
from edgelesspart.model.litert import write_tflite
from edgelesspart.model.training import SETTLE_IMAGES, settle_batchnorm
from edgelesspart.runtime.manifest import FINAL_EXIT, SegmentSpec, TensorSpec
from edgelesspart.runtime.segments import SegmentRunner

LATENCY_REPEATS = 60


def _spec(narrow: Any, k: int, w: float, last: bool, filename: str) -> SegmentSpec:
    out = narrow.outputs[0]
    out_shape = tuple(int(d) for d in out.shape[1:])
    return SegmentSpec(
        name=f"stage{k}_w{width_key(w)}",
        stage=f"stage{k}",
        start=f"s{k}_conv0",
        end="predictions" if last else f"s{k}_pool",
        input=TensorSpec(tuple(int(d) for d in narrow.inputs[0].shape[1:])),
        exit=FINAL_EXIT if last else None,
        boundary=None if last else TensorSpec(out_shape),
        files={"tflite": filename},
    )


def measure_latency_ms(runner: SegmentRunner, sample: np.ndarray, repeats: int) -> float:
    """Median wall time of ``repeats`` batch-1 calls (after 5 warm-up calls), in ms."""
    for _ in range(5):
        runner(sample, trusted=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(sample, trusted=True)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def _features(stage: Any, x: np.ndarray) -> np.ndarray:
    out = stage.predict_on_batch(x)
    return np.asarray(next(iter(out.values())) if isinstance(out, dict) else out)


def _export_stage(
    model: Any, k: int, widths: tuple[float, ...], calib: np.ndarray, out: Path, repeats: int
) -> tuple[list[tuple[float, int, SegmentSpec, str, float]], np.ndarray]:
    """Export stage ``k`` at every width; return the rows and the full-width calibration output."""
    channels = model_channels(model)
    last = k == len(channels) - 1
    rows = []
    full_out = calib
    for w in widths:
        narrow = stage_model(model, k, w)
        settle_batchnorm(narrow, calib)
        filename = f"stage{k}_w{width_key(w)}.tflite"
        write_tflite(narrow, out / filename)
        spec = _spec(narrow, k, w, last, filename)
        runner = SegmentRunner(out / filename, spec, pool_size=1)
        latency = measure_latency_ms(runner, calib[:1], repeats)
        rows.append((w, channels_at(channels[k], w), spec, sha256_file(out / filename), latency))
        if w == 1.0:
            full_out = _features(narrow, calib)
    return rows, full_out


def _chain_accuracy(
    stages: list[WidthStage], config: Sequence[float], x: np.ndarray, y: np.ndarray
) -> float:
    out = x
    for stage, w in zip(stages, config):
        out = stage(out, width=w)
    return float(np.mean(np.argmax(out, axis=1) == y))


def score_widths(
    bundle: Path, manifest: DynamicManifest, x: np.ndarray, y: np.ndarray
) -> tuple[dict[tuple[int, float], float], dict[str, float]]:
    """Accuracy with one stage narrowed (others full) and at each uniform width (LiteRT)."""
    stages = [WidthStage(bundle, [i], manifest=manifest) for i in range(len(manifest.stages))]
    n = len(stages)
    single: dict[tuple[int, float], float] = {}
    for k in range(n):
        for w in manifest.widths:
            config = [1.0] * n
            config[k] = w
            single[(k, w)] = _chain_accuracy(stages, config, x, y)
    uniform = {width_key(w): _chain_accuracy(stages, [w] * n, x, y) for w in manifest.widths}
    return single, uniform


def export_width_bundle(
    model: Any,
    data: Any,
    out_dir: str | Path,
    *,
    strategy: str,
    widths: Sequence[float] = DEFAULT_WIDTHS,
    training: dict[str, Any] | None = None,
    latency_repeats: int = LATENCY_REPEATS,
) -> DynamicManifest:
    """Write a width bundle of the trained chain CNN ``model`` into ``out_dir``.

    Args:
        model: a trained full-width chain CNN (:func:`build_chain_cnn`).
        data: the ``Dataset`` it was trained on (train images calibrate BatchNorm, the test
            split scores every width).
        out_dir: the bundle directory (created; an existing ``dynamic.json`` is overwritten).
        strategy: name of the training strategy, recorded in the manifest.
        widths: the widths to export (1.0 included).
        training: a JSON-ready training record to keep in the manifest.
        latency_repeats: timed calls per segment.

    Returns:
        The manifest written to ``out_dir/dynamic.json``.
    """
    widths = check_widths(widths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not len(data.x_test):
        raise BundleError("The dataset has no test images to score the widths with.")
    calib = np.asarray(data.x_train[:SETTLE_IMAGES], dtype=np.float32)
    rows_by_stage = []
    for k in range(len(model_channels(model))):
        rows, calib = _export_stage(model, k, widths, calib, out, latency_repeats)
        rows_by_stage.append(rows)
    draft = _manifest(strategy, widths, rows_by_stage, {}, {}, data, training)
    single, uniform = score_widths(out, draft, data.x_test, data.y_test)
    manifest = _manifest(strategy, widths, rows_by_stage, single, uniform, data, training)
    write_manifest(manifest, out)
    return manifest


def _manifest(
    strategy: str,
    widths: tuple[float, ...],
    rows_by_stage: list[list[tuple[float, int, SegmentSpec, str, float]]],
    single: dict[tuple[int, float], float],
    uniform: dict[str, float],
    data: Any,
    training: dict[str, Any] | None,
) -> DynamicManifest:
    stages = []
    for k, rows in enumerate(rows_by_stage):
        full_spec = rows[0][2]
        segments = tuple(
            WidthSegment(w, c, spec, sha, round(lat, 4), single.get((k, w), float("nan")))
            for w, c, spec, sha, lat in rows
        )
        full_channels = None if full_spec.boundary is None else full_spec.boundary.shape[-1]
        stages.append(StageWidths(k, full_spec.input, full_channels, segments))
    return DynamicManifest(
        strategy=strategy,
        widths=widths,
        stages=tuple(stages),
        preprocessing=dict(getattr(data, "preprocessing", {}) or {}),
        classes=tuple(getattr(data, "classes", ())),
        uniform_accuracy=uniform,
        training=dict(training or {}),
    )
