"""Early exits and a cloud tail for a width bundle: widths, exits and offload in one chain.

A width bundle (``dynamic.json``) hands on the same full-shape boundary tensor after a stage at
every width, so one exit head per boundary serves every width:

* :func:`add_width_exits` trains a small head (3x3 conv, global average pooling, softmax) on
  each edge stage's boundary features, computed by the bundle's own LiteRT segments, converts
  each to LiteRT, measures its accuracy and latency, picks the chain's serving threshold on the
  validation images (the lowest that keeps the chain's full-width accuracy within ``tolerance``
  of no exits) and records heads and threshold in ``dynamic.json``. With ``per_width`` (the
  default) every stage gets one head *per width*, trained on that width's features and with
  ``ceil(filters x width)`` filters, so a narrowed stage's exit is both fitted to its features
  and cheaper, as the stage is (a narrow stage's features differ from the full ones; one shared
  head answers them less accurately, and its constant cost caps how much faster narrowing makes
  a node). Without it, one head per stage is trained on full- and narrowest-width features.
  It also records, per stage and width, the accuracy of the chain *with its exits* when only
  that stage is narrowed (``serving.stage_accuracy``, validation): the controller's accuracy
  curve for a chain that serves with exits (an exit can be more robust to narrowing than the
  final classifier behind it, or less).
* :func:`write_chain_manifest` writes ``manifest.json`` next to it: the bundle at full width
  as an ordinary chain bundle whose last stage(s) are marked ``tier: cloud``. ``serve-cloud``
  loads that cloud tail (the width chain's edge stages offload to it), and ``serve-pipeline``
  can serve the full-width chain as DEFER does (no widths, no exits).

Heads are trained with TensorFlow; serving them (``WidthWorker``) is TF-free.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.dynamic.widths import (
    MANIFEST_NAME,
    DynamicManifest,
    load_manifest,
    sha256_file,
    width_key,
    write_manifest,
)
from edgelesspart.errors import BundleError, ConfigError

#: Thresholds the serving threshold is chosen from (highest accuracy first, then lowest).
THRESHOLD_GRID = tuple(round(t, 2) for t in np.arange(0.5, 1.0, 0.02)) + (0.99, 0.995, 1.0)


def boundary_features(
    bundle: str | Path, manifest: DynamicManifest, x: np.ndarray, width: float, batch: int = 64
) -> list[np.ndarray]:
    """Every stage's output for images ``x`` with all stages at ``width`` (LiteRT)."""
    from edgelesspart.dynamic.stage import WidthStage

    outs = []
    cur = np.asarray(x, np.float32)
    for k in range(len(manifest.stages)):
        stage = WidthStage(bundle, [k], manifest=manifest, width=width)
        cur = np.concatenate([stage(cur[i : i + batch]) for i in range(0, len(cur), batch)])
        outs.append(cur)
    return outs


#: Filters of an exit head's 3x3 convolution at full width.
HEAD_FILTERS = 64


def _head(keras: Any, shape: tuple[int, ...], classes: int, name: str, filters: int) -> Any:
    inputs = keras.Input(shape=shape, name="boundary")
    x = inputs
    if len(shape) == 3:
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv")(x)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif len(shape) != 1:
        x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def _chain_answers(
    exit_probs: list[np.ndarray], final: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted label, index of the exit that answered; len(exit_probs) = final) per row."""
    n = len(final)
    label = np.argmax(final, axis=1)
    where = np.full(n, len(exit_probs))
    open_ = np.ones(n, bool)
    for k, probs in enumerate(exit_probs):
        hit = open_ & (probs.max(axis=1) >= threshold)
        label[hit] = np.argmax(probs[hit], axis=1)
        where[hit] = k
        open_ &= ~hit
    return label, where


def _stage_out(
    root: Path, manifest: DynamicManifest, k: int, width: float, x: np.ndarray, batch: int = 64
) -> np.ndarray:
    """Stage ``k`` of the bundle at ``width`` on inputs ``x`` (LiteRT)."""
    from edgelesspart.dynamic.stage import WidthStage

    stage = WidthStage(root, [k], manifest=manifest, width=width)
    return np.concatenate([stage(x[i : i + batch]) for i in range(0, len(x), batch)])


def _probs(runner: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([runner(x[i : i + batch])[0] for i in range(0, len(x), batch)])


def add_width_exits(
    bundle: str | Path,
    data: Any,
    *,
    stages: int | None = None,
    epochs: int = 30,
    tolerance: float = 0.01,
    seed: int = 0,
    per_width: bool = True,
) -> DynamicManifest:
    """Train, export and record an exit head after each of the first ``stages`` stages.

    Args:
        bundle: a width bundle directory (rewritten in place: ``exit{k}.tflite`` files (and
            ``exit{k}_w{w}.tflite`` per narrower width) and the ``exits``/``serving`` entries
            of ``dynamic.json``).
        data: the dataset the bundle was trained on (a ``Dataset``).
        stages: heads after stages ``0..stages-1`` (default: every stage but the last).
        epochs: head training epochs (the features are computed once; heads are tiny).
        tolerance: the serving threshold keeps the full-width chain's validation accuracy
            within this of the accuracy without exits.
        per_width: one head per stage and width (trained on that width's features, filters
            scaled by the width); ``False``: one head per stage for every width.

    Raises:
        ConfigError: ``stages`` out of range.
    """
    from edgelesspart._lazy import keras as _keras
    from edgelesspart.dynamic.export import measure_latency_ms
    from edgelesspart.model.litert import write_tflite
    from edgelesspart.runtime.manifest import SegmentSpec, TensorSpec
    from edgelesspart.runtime.segments import SegmentRunner

    keras = _keras()
    root = Path(bundle)
    manifest = load_manifest(root)
    n = len(manifest.stages)
    stages = n - 1 if stages is None else int(stages)
    if not 1 <= stages <= n - 1:
        raise ConfigError(f"Exit heads go after stages 0..{n - 2}; got stages={stages}.")
    keras.utils.set_random_seed(seed)
    classes = len(manifest.classes) or int(np.max(data.y_train)) + 1
    narrowest = manifest.widths[-1]
    start = time.perf_counter()
    x_train = np.asarray(data.x_train, np.float32)
    y_train = np.asarray(data.y_train)
    has_val = len(data.x_val) > 0
    val_x = np.asarray(data.x_val if has_val else data.x_test, np.float32)
    val_y = np.asarray(data.y_val if has_val else data.y_test)
    y_test = np.asarray(data.y_test)
    # boundaries with every stage at full width / at the narrowest width (the inputs of stage
    # k's head come from stage k at each width on top of both)
    up = {w: boundary_features(root, manifest, x_train, w) for w in {1.0, narrowest}}
    val = boundary_features(root, manifest, val_x, 1.0)
    x_test = np.asarray(data.x_test, np.float32)
    test = boundary_features(root, manifest, x_test, 1.0)
    head_widths = manifest.widths if per_width else (1.0,)
    runners: dict[tuple[int, float], Any] = {}
    heads = []
    for k in range(stages):
        entry: dict[str, Any] = {}
        for w in head_widths:
            if per_width:
                below = [x_train] if k == 0 else [up[u][k - 1] for u in sorted(up)]
                feats = np.concatenate([_stage_out(root, manifest, k, w, b) for b in below])
                filters = max(8, math.ceil(HEAD_FILTERS * w))
            else:  # one head for every width: full and narrowest features
                feats = np.concatenate([up[u][k] for u in sorted(up)])
                filters = HEAD_FILTERS
            labels = np.concatenate([y_train] * (len(feats) // len(y_train)))
            shape = tuple(int(d) for d in feats.shape[1:])
            model = _head(keras, shape, classes, f"exit{k}", filters)
            model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
            model.fit(feats, labels, epochs=epochs, batch_size=64, verbose=0)
            filename = f"exit{k}.tflite" if w == 1.0 else f"exit{k}_w{width_key(w)}.tflite"
            write_tflite(keras.Model(model.inputs, {"probs": model.outputs[0]}), root / filename)
            spec = SegmentSpec(
                name=f"exit{k}", stage=f"stage{k}", start=f"stage{k}", end=f"stage{k}",
                input=TensorSpec(shape), exit=f"exit_{k}", boundary=None,
                files={"tflite": filename},
            )  # fmt: skip
            runner = SegmentRunner(root / filename, spec, pool_size=1)
            runners[(k, w)] = runner
            below = x_test if k == 0 else test[k - 1]
            narrowed = test[k] if w == 1.0 else _stage_out(root, manifest, k, w, below)
            record = {
                "file": filename,
                "sha256": sha256_file(root / filename),
                "filters": filters if len(shape) == 3 else 0,
                "accuracy": round(float(np.mean(_probs(runner, narrowed).argmax(1) == y_test)), 4),
                "latency_ms": round(measure_latency_ms(runner, test[k][:1], 100), 4),
            }
            if w == 1.0:
                entry = {"stage": k, "name": f"exit_{k}", "input": list(shape), **record}
            else:
                entry.setdefault("widths", {})[width_key(w)] = record
        heads.append(entry)
    val_probs = [_probs(runners[(k, 1.0)], val[k]) for k in range(stages)]
    test_probs = [_probs(runners[(k, 1.0)], test[k]) for k in range(stages)]
    threshold, val_acc = choose_threshold(val_probs, val[-1], val_y, tolerance)
    label, where = _chain_answers(test_probs, test[-1], threshold)
    shares = np.bincount(where, minlength=stages + 1) / len(where)
    head_of = (lambda k, w: runners[(k, w)]) if per_width else (lambda k, w: runners[(k, 1.0)])
    serving = {
        "threshold": threshold,
        "tolerance": tolerance,
        "validation_accuracy": round(val_acc, 4),
        # the final classifier alone at full width (what the whole model in the cloud answers)
        "validation_final_accuracy": round(float(np.mean(val[-1].argmax(1) == val_y)), 4),
        "test_accuracy": round(float(np.mean(label == y_test)), 4),
        "test_exit_shares": {
            **{f"exit_{k}": round(float(shares[k]), 4) for k in range(stages)},
            "final": round(float(shares[-1]), 4),
        },
        "per_width_heads": bool(per_width),
        "stage_accuracy": _stage_accuracy(
            root, manifest, val_x, val, val_probs, val_y, threshold, head_of
        ),
        "stage_accuracy_test": _stage_accuracy(
            root, manifest, x_test, test, test_probs, y_test, threshold, head_of
        ),
        "head_epochs": epochs,
        "seconds": round(time.perf_counter() - start, 2),
    }
    updated = DynamicManifest(**{**_fields(manifest), "exits": tuple(heads), "serving": serving})
    write_manifest(updated, root)
    return load_manifest(root)


def _stage_accuracy(
    root: Path,
    manifest: DynamicManifest,
    x: np.ndarray,
    full: list[np.ndarray],
    full_probs: list[np.ndarray],
    y: np.ndarray,
    threshold: float,
    head_of: Any,
) -> dict[str, dict[str, float]]:
    """Per stage and width: the chain's accuracy *with its exits* (at ``threshold``) when only
    that stage runs at that width (``x``: the images; ``full``: every stage's boundary at full
    width; ``full_probs``: the exit heads' probabilities on them; ``head_of(k, w)``: the
    head stage ``k`` answers with at width ``w``)."""
    n, heads = len(manifest.stages), len(full_probs)
    label, _ = _chain_answers(full_probs, full[-1], threshold)
    at_full = round(float(np.mean(label == y)), 4)
    out: dict[str, dict[str, float]] = {}
    for k in range(n):
        row = {width_key(1.0): at_full}
        for w in manifest.widths[1:]:
            outs = list(full[:k])
            cur = x if k == 0 else full[k - 1]
            for j in range(k, n):
                cur = _stage_out(root, manifest, j, w if j == k else 1.0, cur)
                outs.append(cur)
            probs = [
                full_probs[j] if j < k else _probs(head_of(j, w if j == k else 1.0), outs[j])
                for j in range(heads)
            ]
            label, _ = _chain_answers(probs, outs[-1], threshold)
            row[width_key(w)] = round(float(np.mean(label == y)), 4)
        out[str(k)] = row
    return out


def _fields(manifest: DynamicManifest) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(manifest, f.name) for f in fields(manifest)}


def choose_threshold(
    exit_probs: list[np.ndarray], final: np.ndarray, y: np.ndarray, tolerance: float
) -> tuple[float, float]:
    """The lowest threshold of :data:`THRESHOLD_GRID` whose chain accuracy is within
    ``tolerance`` of the accuracy without exits; returns (threshold, its accuracy)."""
    full = float(np.mean(np.argmax(final, axis=1) == y))
    for t in THRESHOLD_GRID:
        label, _ = _chain_answers(exit_probs, final, t)
        acc = float(np.mean(label == y))
        if acc >= full - tolerance:
            return float(t), acc
    return 1.0, full


def chain_bundle_id(bundle: str | Path) -> str:
    """The chain manifest's id: ``widths-`` + SHA-256 of ``dynamic.json`` (as serve-widths)."""
    digest = hashlib.sha256((Path(bundle) / MANIFEST_NAME).read_bytes()).hexdigest()
    return f"widths-{digest[:16]}"


def write_chain_manifest(bundle: str | Path, *, cloud_stages: int = 1) -> Path:
    """Write ``manifest.json``: the width bundle at full width as an ordinary chain bundle.

    The last ``cloud_stages`` stages are marked ``tier: cloud`` (what ``serve-cloud`` loads);
    the others ``tier: edge``. Segment files are the full-width LiteRT files already there.

    Raises:
        ConfigError: ``cloud_stages`` leaves no edge stage.
    """
    from edgelesspart.runtime.manifest import (
        FINAL_EXIT,
        InputSpec,
        Manifest,
        hash_files,
    )
    from edgelesspart.runtime.manifest import write_manifest as write_chain
    from edgelesspart.runtime.plan import Plan, Stage

    root = Path(bundle)
    manifest = load_manifest(root)
    n = len(manifest.stages)
    if not 0 <= cloud_stages < n:
        raise ConfigError(f"cloud_stages must leave an edge stage: 0..{n - 1}, got {cloud_stages}.")
    segments = [s.at(1.0).segment for s in manifest.stages]
    if segments[-1].exit != FINAL_EXIT:
        raise BundleError("The width bundle's last stage does not end in the classifier.")
    plan_stages = []
    for k, seg in enumerate(segments):
        tier = "cloud" if k >= n - cloud_stages else "edge"
        plan_stages.append(
            Stage(
                seg.stage,
                "cloud" if tier == "cloud" else "edge",
                seg.start if k == 0 else segments[k - 1].end,
                "output" if k == n - 1 else seg.end,
                options={"tier": tier, "width": 1.0},
            )  # fmt: skip
        )
    cuts = tuple(s.end for s in segments[:-1])
    plan = Plan(
        constraint="latency", placement="linear", stages=tuple(plan_stages), cut_points=cuts,
        boundary_bytes=tuple(int(np.prod(s.boundary.shape)) * 4 for s in segments[:-1]),
        rationale="the width bundle at full width; the last stage(s) are the cloud tail",
    )  # fmt: skip
    chain = Manifest(
        bundle_id=chain_bundle_id(root),
        model={"name": str(manifest.training.get("model", "chain_cnn")), "widths": True},
        input=InputSpec(manifest.stages[0].input, dict(manifest.preprocessing)),
        classes=manifest.classes,
        plan=plan,
        segments=tuple(segments),
        exits=(),
        files=hash_files(root, [s.files["tflite"] for s in segments]),
        training={"width_bundle": MANIFEST_NAME, "widths": [width_key(w) for w in manifest.widths]},
        serving={"threshold": 1.0},
    )
    write_chain(root, chain)
    return root / "manifest.json"


def summary(manifest: DynamicManifest) -> str:
    """One line per exit head and the serving threshold."""
    lines = [
        f"exit {e['name']} after stage {e['stage']}: accuracy {e['accuracy']:.3f}, "
        f"{e['latency_ms']:.3f} ms"
        for e in manifest.exits
    ]
    serving = manifest.serving
    if serving:
        lines.append(
            f"threshold {serving['threshold']:g}: chain accuracy {serving['test_accuracy']:.3f}, "
            f"exit shares {json.dumps(serving['test_exit_shares'])}"
        )
    return "\n".join(lines)
