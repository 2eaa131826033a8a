"""Export a planned, trained model as a bundle: manifest + one file per segment and format.

``export_bundle`` builds every segment first (``keras.Model`` between intermediate tensors of the
joint backbone+exits graph), converts each to LiteRT and checks it against Keras on a probe
batch, all inside a temporary directory next to ``out``; only when everything succeeded is the
directory moved into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError
from edgelesspart.model.graph import cut_tensor, extract
from edgelesspart.model.litert import to_tflite
from edgelesspart.runtime.manifest import (
    FINAL_EXIT,
    REFERENCE_MODEL_PATH,
    ExitInfo,
    InputSpec,
    Manifest,
    SegmentSpec,
    TensorSpec,
    hash_files,
    write_manifest,
)
from edgelesspart.runtime.plan import MODEL_INPUT, MODEL_OUTPUT, Plan

TFLITE_TOLERANCE = 1e-4
EXIT_CODE_PATH = "exits/generated_exit.py"
CODECS_PATH = "codecs.json"


@dataclass(frozen=True)
class ExportRequest:
    """Everything :func:`export_bundle` needs, gathered by the build pipeline.

    Attributes:
        backbone: the functional backbone (input -> final probabilities).
        exit_tensors: exit name -> probability tensor attached to a backbone cut tensor.
        exit_cuts: exit name -> cut point name, in model order.
        plan: the plan the exits and split follow.
        classes: class names, index = label.
        preprocessing: how a raw image becomes the input (see ``InputSpec``).
        exit_code: the generated exit module (kept in the bundle for inspection).
        exit_source: where the exit definition came from.
        model_info: zoo name / file, parameter count, ...
        profile: the host profile as a dict (written to ``profile.json``).
        training: the training report as a dict.
        extra: anything else worth recording (dataset spec and seed, devices, ...).
        codec: the manifest ``codec`` entry (boundary codec, its size ratio, measured table).
        codec_table: the full codec measurement, written to ``codecs.json`` when given.
        bottleneck: a trained learned bottleneck at the split
            (:class:`~edgelesspart.model.bottleneck.TrainedBottleneck`) or ``None``: its encoder
            ends the segment that ends at its cut point (whose ``boundary`` becomes the code),
            its decoder starts the segment that starts there (whose input is the code).
        link_bottlenecks: more trained bottlenecks, by cut point, for a chain of stages
            (:func:`edgelesspart.pipeline.export.export_chain`): each sits, as ``bottleneck``
            does, on the link that leaves its cut point.
        temperatures: exit name (``final`` for the model's classifier) -> a fitted
            temperature to build into that exit's head: its segment then outputs the calibrated
            ``softmax(logits / T)`` (:func:`calibrated_probs`), so the runtime scores it as it
            is. Every exit listed must be :func:`foldable`.
        reference_tflite: the backbone without exits as LiteRT (:func:`reference_tflite`);
            ``None``: converted here. Written to ``reference/full_model.tflite`` so ``build`` and
            ``evaluate`` time the full model interleaved with the segments.
    """

    backbone: Any
    exit_tensors: dict[str, Any]
    exit_cuts: dict[str, str]
    plan: Plan
    classes: tuple[str, ...]
    preprocessing: dict[str, Any]
    exit_code: str
    exit_source: str = "default"
    model_info: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    codec: dict[str, Any] = field(default_factory=lambda: {"name": "raw"})
    codec_table: dict[str, Any] = field(default_factory=dict)
    bottleneck: Any = None
    link_bottlenecks: dict[str, Any] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    reference_tflite: bytes | None = None

    def necks(self) -> dict[str, Any]:
        """Every learned bottleneck of the export, by the cut point it sits at."""
        necks = dict(self.link_bottlenecks)
        if self.bottleneck is not None:
            necks[self.bottleneck.cut_point] = self.bottleneck
        return necks


@dataclass
class _Built:
    spec: SegmentSpec
    model: Any
    tflite: bytes


def _softmax_source(probs: Any) -> tuple[Any, Any] | None:
    """``(layer, input tensor)`` of the softmax that made ``probs``, or ``None`` if unknown.

    Known: ``Dense(..., activation="softmax")`` (every built-in exit head and zoo classifier),
    a ``Softmax`` layer over the last axis and ``Activation("softmax")``.
    """
    from edgelesspart._lazy import keras

    k = keras()
    history = getattr(probs, "_keras_history", None)
    if history is None:
        return None
    layer, node_index, _ = history
    inputs = layer._inbound_nodes[node_index].input_tensors
    softmax = k.activations.softmax
    known = (
        (type(layer) is k.layers.Dense and layer.activation is softmax)
        or (type(layer) is k.layers.Softmax and layer.axis in (-1, len(probs.shape) - 1))
        or (type(layer) is k.layers.Activation and layer.activation is softmax)
    )
    return (layer, inputs[0]) if known and len(inputs) == 1 else None


def _probability_tensor(request: ExportRequest, exit_name: str) -> Any:
    if exit_name == FINAL_EXIT:
        return request.backbone.outputs[0]
    return request.exit_tensors[exit_name]


def foldable(request: ExportRequest, exit_name: str) -> bool:
    """Whether an exit's temperature can be built into its head (see :func:`calibrated_probs`)."""
    return _softmax_source(_probability_tensor(request, exit_name)) is not None


def calibrated_probs(probs: Any, temperature: float, name: str) -> Any:
    """``softmax(logits / T)`` of a softmax probability tensor: temperature scaling in the graph.

    Temperature scaling (:mod:`edgelesspart.runtime.confidence`) computes
    ``softmax(log(p) / T)``, which is ``softmax(logits / T)`` since ``log p`` is the logits up to
    a per-row constant. Building it into the head (``Rescaling(1 / T)`` then ``Softmax``; LiteRT
    folds the scale into the classifier's weights) spares the runtime the per-answer scoring in
    Python; the values agree with the Python scaling to float32 rounding (tested).

    Raises:
        BundleError: ``probs`` is not the output of a softmax this function knows.
    """
    from edgelesspart._lazy import keras

    k = keras()
    source = _softmax_source(probs)
    if source is None:
        raise BundleError(
            f"Cannot build the temperature of {name!r} into its head: its probabilities do not "
            "come from a Dense(softmax), Softmax or Activation('softmax') layer. Leave it to "
            "the runtime (serving.temperatures)."
        )
    layer, logits = source
    if type(layer) is k.layers.Dense:  # the same layer without its activation, same weights
        config = {**layer.get_config(), "activation": "linear", "name": f"{name}_logits"}
        linear = k.layers.Dense.from_config(config)
        logits = linear(logits)
        linear.set_weights(layer.get_weights())
    scaled = k.layers.Rescaling(1.0 / float(temperature), name=f"{name}_temperature")(logits)
    return k.layers.Softmax(name=f"{name}_calibrated")(scaled)


def _exit_probs(request: ExportRequest, exit_name: str) -> Any:
    probs = _probability_tensor(request, exit_name)
    temperature = request.temperatures.get(exit_name)
    if temperature is None or float(temperature) == 1.0:
        return probs
    return calibrated_probs(probs, temperature, exit_name)


def _segment_outputs(request: ExportRequest, end: str, exit_name: str | None) -> dict[str, Any]:
    backbone = request.backbone
    if end == MODEL_OUTPUT:
        return {"probs": _exit_probs(request, FINAL_EXIT)}
    outputs: dict[str, Any] = {}
    if exit_name is not None:
        outputs["probs"] = _exit_probs(request, exit_name)
    outputs["boundary"] = cut_tensor(backbone, end)
    neck = request.necks().get(end)
    if neck is not None:
        outputs["boundary"] = neck.encoder(outputs["boundary"])
    return outputs


def _segment_model(request: ExportRequest, start: str, outputs: dict, name: str) -> Any:
    """The Keras segment from ``start``; one starting at the bottleneck takes the code."""
    from edgelesspart._lazy import keras

    model = extract(request.backbone, start, outputs, name=name)
    neck = request.necks().get(start)
    if neck is None:
        return model
    k = keras()
    code = k.Input(tuple(neck.code_shape), name=f"{name}_code")
    return k.Model(code, model(neck.decoder(code)), name=name)


def _tensor_spec(tensor: Any) -> TensorSpec:
    return TensorSpec(tuple(int(d) for d in tensor.shape[1:]), "float32")


def plan_segments(request: ExportRequest) -> list[tuple[str, str, str, str | None]]:
    """(segment name, stage, start, end, exit) rows: one segment per exit or stage end."""
    by_cut = {cut: name for name, cut in request.exit_cuts.items()}
    rows = []
    for stage in request.plan.stages:
        unknown = [e for e in stage.exits if e not in by_cut]
        if unknown:
            raise BundleError(f"Stage {stage.name!r} lists exits {unknown} that have no exit head.")
        ends = list(dict.fromkeys([*stage.exits, stage.end]))
        start = stage.start
        for k, end in enumerate(ends):
            exit_name = FINAL_EXIT if end == MODEL_OUTPUT else by_cut.get(end)
            rows.append((f"{stage.name}_{k}", stage.name, start, end, exit_name))
            start = end
    return rows


def build_segments(request: ExportRequest, probe: np.ndarray) -> list[_Built]:
    """Build, convert and check every segment; nothing is written."""
    links = {s.end for s in request.plan.stages[:-1]}
    for neck in request.necks().values():
        if neck.cut_point in links:
            continue
        raise BundleError(
            f"The bottleneck sits at {neck.cut_point!r}, which is not where a stage hands its "
            f"boundary on ({[s.end for s in request.plan.stages[:-1]]}); retrain it at the split."
        )
    built: list[_Built] = []
    x = probe.astype(np.float32)
    for name, stage, start, end, exit_name in plan_segments(request):
        outputs = _segment_outputs(request, end, exit_name)
        model = _segment_model(request, start, outputs, name)
        spec = SegmentSpec(
            name=name,
            stage=stage,
            start=start,
            end=end,
            input=_tensor_spec(model.inputs[0]),
            exit=exit_name,
            boundary=_tensor_spec(outputs["boundary"]) if "boundary" in outputs else None,
            files={"tflite": f"segments/{name}.tflite", "keras": f"segments/{name}.keras"},
        )
        tflite = to_tflite(model)
        expected = {k: np.asarray(v) for k, v in model(x, training=False).items()}
        _check_tflite(name, tflite, x, expected)
        built.append(_Built(spec, model, tflite))
        if "boundary" in expected:
            x = expected["boundary"]
    return built


def _check_tflite(name: str, tflite: bytes, x: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=tflite).get_signature_runner("serving_default")
    got = runner(x=x)
    for key, value in expected.items():
        diff = float(np.max(np.abs(got[key] - value))) if value.size else 0.0
        scale = max(1.0, float(np.max(np.abs(value)))) if value.size else 1.0
        if not diff <= TFLITE_TOLERANCE * scale:
            raise BundleError(
                f"LiteRT segment {name!r} output {key!r} differs from Keras by {diff:.3g} "
                f"(tolerance {TFLITE_TOLERANCE * scale:.3g}); refusing to export it."
            )


def _exit_infos(request: ExportRequest, built: list[_Built]) -> tuple[ExitInfo, ...]:
    infos = []
    accuracy = request.training.get("accuracy", {})
    for b in built:
        if b.spec.exit is None:
            continue
        cut = MODEL_OUTPUT if b.spec.exit == FINAL_EXIT else request.exit_cuts[b.spec.exit]
        metrics = {
            f"{split}_accuracy": float(accuracy[split][b.spec.exit])
            for split in ("val", "test")
            if b.spec.exit in accuracy.get(split, {})
        }
        source = "model" if b.spec.exit == FINAL_EXIT else request.exit_source
        infos.append(ExitInfo(b.spec.exit, cut, b.spec.stage, b.spec.name, source, metrics))
    return tuple(infos)


def reference_tflite(backbone: Any, probe: np.ndarray | None = None) -> bytes:
    """The whole backbone without exits as LiteRT, checked against Keras on ``probe``."""
    model = extract(backbone, MODEL_INPUT, {"probs": backbone.outputs[0]}, name="full_model")
    tflite = to_tflite(model)
    if probe is not None:
        x = probe.astype(np.float32)
        expected = {"probs": np.asarray(model(x, training=False)["probs"])}
        _check_tflite("full_model", tflite, x, expected)
    return tflite


def _write_files(
    tmp: Path, request: ExportRequest, built: list[_Built], reference: bytes
) -> list[str]:
    (tmp / "segments").mkdir()
    (tmp / "exits").mkdir()
    written = []
    for b in built:
        (tmp / b.spec.files["tflite"]).write_bytes(b.tflite)
        b.model.save(tmp / b.spec.files["keras"])
        written.extend(b.spec.files.values())
    (tmp / REFERENCE_MODEL_PATH).parent.mkdir()
    (tmp / REFERENCE_MODEL_PATH).write_bytes(reference)
    written.append(REFERENCE_MODEL_PATH)
    (tmp / EXIT_CODE_PATH).write_text(request.exit_code, encoding="utf-8")
    written.append(EXIT_CODE_PATH)
    if request.profile:
        (tmp / "profile.json").write_text(json.dumps(request.profile, indent=2) + "\n", "utf-8")
        written.append("profile.json")
    if request.codec_table:
        (tmp / CODECS_PATH).write_text(json.dumps(request.codec_table, indent=2) + "\n", "utf-8")
        written.append(CODECS_PATH)
    return written


def export_bundle(
    request: ExportRequest, out: str | Path, *, probe: np.ndarray, overwrite: bool = False
) -> Manifest:
    """Write the bundle directory ``out`` and return its manifest.

    Args:
        request: the model, exits, plan and metadata.
        out: the bundle directory to create.
        probe: a small input batch used to check LiteRT against Keras for every segment.
        overwrite: replace an existing bundle at ``out``.
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise BundleError(f"{target} already exists; pass --overwrite or choose another --out.")
    built = build_segments(request, probe)
    reference = request.reference_tflite or reference_tflite(request.backbone, probe)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        files = hash_files(tmp, _write_files(tmp, request, built, reference))
        digest = hashlib.sha256(
            json.dumps([request.plan.to_dict(), files], sort_keys=True).encode()
        )
        first = built[0].spec.input
        manifest = Manifest(
            bundle_id=digest.hexdigest()[:16],
            model=dict(request.model_info),
            input=InputSpec(first, dict(request.preprocessing)),
            classes=tuple(request.classes),
            plan=request.plan,
            segments=tuple(b.spec for b in built),
            exits=_exit_infos(request, built),
            files=files,
            codec=dict(request.codec),
            profile={k: v for k, v in request.profile.items() if k != "cut_points"},
            training=dict(request.training),
            extra=dict(request.extra),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        write_manifest(tmp, manifest)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
