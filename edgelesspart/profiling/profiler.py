"""Measure a model's profile on this host: per cut point latency, memory and boundary bytes.

Latency is measured with the path the runtime uses: each stretch between consecutive candidate
cut points is converted to LiteRT and timed at batch 1 (warm-up, then the median of repeated
invokes); cumulative latency at a cut point is the sum of the stretches before it. ``method=
"tf-function"`` times ``tf.function`` instead (no conversion; slower path, quicker to set up).
Memory is computed from the graph: parameter bytes of the prefix plus the peak bytes of live
activations while executing it in topological order (batch 1, float32).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edgelesspart._lazy import tensorflow
from edgelesspart.errors import EdgeLessPartError, ProfileError
from edgelesspart.model.graph import CutPoint, cut_tensor, extract, find_cut_points, tensor_graph
from edgelesspart.model.graph import functional_model as _functional
from edgelesspart.model.litert import to_tflite
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile
from edgelesspart.progress import progress
from edgelesspart.runtime.plan import MODEL_INPUT, MODEL_OUTPUT

METHODS = ("litert", "tf-function")
#: Codecs whose wire bytes are measured at every cut point when real samples are given.
PROFILE_CODECS = ("raw", "fp16", "fp16+lz4", "int8+lz4", "int8+zstd")


def candidate_cut_points(cuts: Sequence[CutPoint], max_points: int = 24) -> list[CutPoint]:
    """At most ``max_points`` cut points, evenly spread by index, always keeping the last one.

    Deep models have a cut point after nearly every layer; profiling (and planning over) a few
    dozen evenly spread candidates keeps build time bounded without losing the latency curve.
    """
    if max_points < 1:
        raise ProfileError(f"max_cut_points must be >= 1, got {max_points}.")
    if len(cuts) <= max_points:
        return list(cuts)
    step = len(cuts) / max_points
    picked = sorted({int(round((k + 1) * step)) - 1 for k in range(max_points)})
    return [cuts[i] for i in picked]


def memory_profile(model: Any, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Map each cut point name (and ``"output"``) to (prefix memory bytes, prefix weight bytes)."""
    graph = tensor_graph(model)
    remaining = {tid: len(graph.children[tid]) for tid in graph.order}
    live: dict[int, int] = {}
    seen_layers: set[str] = set()
    weights = peak = 0
    wanted = set(names)
    result: dict[str, tuple[int, int]] = {}
    for tid in graph.order:
        tensor = graph.tensors[tid]
        layer = tensor._keras_history.operation
        if layer.name not in seen_layers:
            seen_layers.add(layer.name)
            weights += sum(int(np.prod(w.shape)) * 4 for w in layer.weights)
        live[tid] = 4 * int(np.prod([int(d) for d in tensor.shape[1:]]))
        peak = max(peak, sum(live.values()))
        for pid in set(graph.parents[tid]):
            remaining[pid] -= graph.parents[tid].count(pid)
            if remaining[pid] <= 0:
                live.pop(pid, None)
        name = MODEL_OUTPUT if tid == graph.output_id else graph.names[tid]
        if name in wanted:
            result[name] = (weights + peak, weights)
    return result


def _time_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(samples))


def _stretch_timer(segment: Any, method: str, x: np.ndarray) -> Callable[[], Any]:
    if method == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=to_tflite(segment), num_threads=1)
        runner = interpreter.get_signature_runner("serving_default")
        return lambda: runner(x=x)
    tf = tensorflow()
    fn = tf.function(lambda t: segment(t, training=False), reduce_retracing=True)
    tensor = tf.constant(x)
    return lambda: fn(tensor)


def encoded_bytes_per_sample(
    boundary: np.ndarray, codecs: Sequence[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Mean and largest wire payload bytes (header included) per sample at batch 1, per codec.

    Codecs whose library is missing or that cannot carry this tensor are left out.
    """
    from edgelesspart.runtime.codecs import available_codecs, encode_tensor

    usable = set(available_codecs())
    mean: dict[str, int] = {}
    largest: dict[str, int] = {}
    for codec in dict.fromkeys(codecs):
        if codec not in usable or len(boundary) == 0:
            continue
        try:
            sizes = [len(encode_tensor(boundary[i : i + 1], codec)) for i in range(len(boundary))]
        except EdgeLessPartError:
            continue
        mean[codec] = int(round(float(np.mean(sizes))))
        largest[codec] = int(max(sizes))
    return mean, largest


def profile_model(
    model: Any,
    *,
    model_name: str,
    max_cut_points: int = 24,
    method: str = "litert",
    warmup: int = 3,
    repeats: int = 15,
    show_progress: bool = True,
    seed: int = 0,
    samples: np.ndarray | None = None,
    codecs: Sequence[str] = PROFILE_CODECS,
) -> ModelProfile:
    """Profile ``model`` on this host (device ``"host"``) at its candidate cut points.

    Args:
        model: a flat functional (or Sequential) Keras model.
        model_name: the name recorded in the profile (zoo name or file stem).
        max_cut_points: how many candidate cut points to profile (see candidate_cut_points).
        method: ``"litert"`` (what the runtime executes) or ``"tf-function"``.
        warmup: untimed invokes before timing each stretch.
        repeats: timed invokes; the median is kept.
        show_progress: draw a progress bar on stderr.
        seed: seed of the random probe input.
        samples: a handful of real inputs (e.g. validation images); when given, each cut
            point records ``encoded_bytes`` for ``codecs`` (see encoded_bytes_per_sample).
        codecs: the codecs measured on ``samples``.
    """
    if method not in METHODS:
        raise ProfileError(f"Unknown profiling method {method!r}; choose one of {METHODS}.")
    model = _functional(model)
    cuts = candidate_cut_points(find_cut_points(model), max_cut_points)
    names = [c.name for c in cuts] + [MODEL_OUTPUT]
    memory = memory_profile(model, names)
    rng = np.random.default_rng(seed)
    x = rng.random((1, *model.inputs[0].shape[1:]), dtype=np.float32)
    real = None if samples is None else np.asarray(samples, dtype=np.float32)
    entries: list[CutPointProfile] = []
    cumulative = 0.0
    start = MODEL_INPUT
    for index, name in progress(enumerate(names), len(names), "profiling", enabled=show_progress):
        boundary = {"boundary": cut_tensor(model, name)}
        stretch = extract(model, start, boundary, name=f"stretch_{index}")
        timer = _stretch_timer(stretch, method, x)
        cumulative += _time_ms(timer, warmup, repeats)
        x = np.asarray(stretch(x)["boundary"], dtype=np.float32)
        shape = tuple(int(d) for d in x.shape[1:])
        mem, weights = memory[name]
        wire: dict[str, int] = {}
        wire_max: dict[str, int] = {}
        if real is not None:
            real = np.asarray(stretch(real, training=False)["boundary"], dtype=np.float32)
            wire, wire_max = encoded_bytes_per_sample(real, codecs)
        entries.append(
            CutPointProfile(
                name,
                index,
                round(cumulative, 6),
                mem,
                weights,
                shape,
                int(x.size) * 4,
                0,
                wire,
                wire_max,
            )
        )
        start = name
    whole = _stretch_timer(
        extract(model, MODEL_INPUT, {"probs": model.outputs[0]}, name="whole"),
        method,
        rng.random((1, *model.inputs[0].shape[1:]), dtype=np.float32),
    )
    full_ms = _time_ms(whole, warmup, repeats)
    # Each stretch pays the runtime's fixed per-invoke cost once; attribute the whole model's
    # measured latency in proportion to the stretch times so the total matches one invoke.
    scale = full_ms / cumulative if cumulative > 0 else 1.0
    entries = [replace(e, latency_ms=round(e.latency_ms * scale, 6)) for e in entries]
    return ModelProfile(
        model=model_name,
        device="host",
        input_shape=tuple(int(d) for d in model.inputs[0].shape[1:]),
        cut_points=tuple(entries),
        method=f"{method}, batch 1, median of {repeats} after {warmup} warm-up",
        source="measured on this host by edgelesspart.profiling.profiler",
        extra={
            "latency_attribution": "stretch times scaled so the output entry equals full_model_ms",
            "full_model_ms": round(full_ms, 6),
            "sum_of_stretches_ms": round(cumulative, 6),
            "all_cut_points": len(find_cut_points(model)),
            "params": int(model.count_params()),
            **(
                {"encoded_bytes": f"mean wire bytes over {len(real)} real samples at batch 1"}
                if real is not None
                else {}
            ),
        },
    )
