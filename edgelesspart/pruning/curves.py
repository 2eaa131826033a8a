"""Measured pruning curves: accuracy, LiteRT latency, parameters and memory vs pruning ratio.

A :class:`PruningCurve` is data (JSON); the SlimEdge optimiser reads it back and, as the
SlimEdge authors do, fits a low-degree polynomial to each metric so it can ask for any ratio.
Latency is the median LiteRT ``invoke`` time at batch 1 on this host with one thread (the
machine is shared; one thread keeps the figure comparable between runs); memory is the
profiler's weights + peak live activations at batch 1.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import PruningError

CURVE_VERSION = 1
METRICS = ("accuracy", "latency_ms", "params", "memory_bytes")
DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class PruningCurve:
    """One model's metrics measured at several uniform pruning ratios.

    Attributes:
        model: model name.
        ratios: pruning ratios measured (ascending, starting at 0).
        metrics: metric name -> one value per ratio (``accuracy`` may be absent).
        details: how it was measured (dataset, fine-tuning epochs, host load, ...).
    """

    model: str
    ratios: tuple[float, ...]
    metrics: dict[str, tuple[float, ...]]
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, values in self.metrics.items():
            if len(values) != len(self.ratios):
                raise PruningError(
                    f"Curve {self.model!r}: metric {name!r} has {len(values)} values for "
                    f"{len(self.ratios)} ratios."
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with the polynomial fits, for readers)."""
        return {
            "version": CURVE_VERSION,
            "model": self.model,
            "ratios": list(self.ratios),
            "metrics": {k: list(v) for k, v in self.metrics.items()},
            "fits": {k: list(self.coefficients(k)) for k in self.metrics},
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningCurve:
        """Inverse of :meth:`to_dict` (fits are recomputed)."""
        if data.get("version") != CURVE_VERSION:
            raise PruningError(
                f"Pruning curve version {data.get('version')!r} is not supported "
                f"(expected {CURVE_VERSION}); re-measure it with measure_curve."
            )
        return cls(
            model=data["model"],
            ratios=tuple(float(r) for r in data["ratios"]),
            metrics={k: tuple(float(x) for x in v) for k, v in data["metrics"].items()},
            details=dict(data.get("details", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the curve as JSON."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | Path) -> PruningCurve:
        """Read a curve written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def coefficients(self, metric: str, degree: int = 2) -> tuple[float, ...]:
        """Least-squares polynomial coefficients (highest power first) of ``metric``."""
        if metric not in self.metrics:
            raise PruningError(
                f"Curve {self.model!r} has no {metric!r}; measured: {', '.join(self.metrics)}."
            )
        degree = min(degree, len(self.ratios) - 1)
        return tuple(float(c) for c in np.polyfit(self.ratios, self.metrics[metric], degree))

    def predict(self, metric: str, ratio: float | np.ndarray, degree: int = 2) -> Any:
        """The fitted ``metric`` at ``ratio`` (clipped to the measured range)."""
        r = np.clip(ratio, self.ratios[0], self.ratios[-1])
        return np.polyval(self.coefficients(metric, degree), r)


class LiteRunner:
    """One LiteRT interpreter of a model at batch 1, ready to be timed."""

    def __init__(self, model: Any, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from edgelesspart.model.litert import to_tflite

        self.tflite_bytes = to_tflite(model)
        self.interpreter = Interpreter(model_content=self.tflite_bytes, num_threads=threads)
        detail = self.interpreter.get_input_details()[0]
        shape = [1, *(int(d) for d in detail["shape"][1:])]
        self.interpreter.resize_tensor_input(detail["index"], shape)
        self.interpreter.allocate_tensors()
        x = np.random.default_rng(0).random(shape, np.float32)
        self.interpreter.set_tensor(detail["index"], x)

    def time_ms(self) -> float:
        """Wall time of one ``invoke`` in milliseconds."""
        start = time.perf_counter()
        self.interpreter.invoke()
        return 1000.0 * (time.perf_counter() - start)


def interleaved_latency_ms(
    runners: Sequence[LiteRunner], *, repeats: int = 50, warmup: int = 5, rounds: int = 5
) -> list[float]:
    """Median invoke time of each runner, timed round-robin so host noise hits all alike."""
    for runner in runners:
        for _ in range(warmup):
            runner.time_ms()
    samples: list[list[float]] = [[] for _ in runners]
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            samples[i].extend(runner.time_ms() for _ in range(per_round))
    return [float(statistics.median(s)) for s in samples]


def litert_latency_ms(model: Any, *, repeats: int = 50, warmup: int = 5, threads: int = 1) -> float:
    """Median LiteRT ``invoke`` time (ms) of ``model`` at batch 1 on this host."""
    runner = LiteRunner(model, threads)
    return interleaved_latency_ms([runner], repeats=repeats, warmup=warmup, rounds=1)[0]


def memory_bytes(model: Any) -> int:
    """Weights + peak live activation bytes at batch 1 (the profiler's memory model)."""
    from edgelesspart.profiling.profiler import memory_profile
    from edgelesspart.runtime.plan import MODEL_OUTPUT

    return int(memory_profile(model, [MODEL_OUTPUT])[MODEL_OUTPUT][0])


def finetune(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 2,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> Any:
    """Briefly retrain a pruned classifier (sparse labels), then settle BatchNormalization."""
    from edgelesspart._lazy import keras
    from edgelesspart.model.training import settle_batchnorm

    if epochs <= 0:
        return model
    k = keras()
    k.utils.set_random_seed(seed)
    model.compile(
        optimizer=k.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy"
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    settle_batchnorm(model, np.asarray(x[:1024], dtype=np.float32))
    return model


def accuracy(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in inference mode."""
    hits = 0
    for start in range(0, len(x), batch_size):
        probs = np.asarray(model(x[start : start + batch_size], training=False))
        hits += int((probs.argmax(axis=-1) == y[start : start + batch_size]).sum())
    return hits / max(1, len(x))


def measure_curve(
    name: str,
    model: Any,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    *,
    evaluate: Callable[[Any], float] | None = None,
    retrain: Callable[[Any], Any] | None = None,
    repeats: int = 50,
) -> PruningCurve:
    """Prune ``model`` uniformly at each ratio and measure every metric.

    Args:
        name: the curve's model name.
        model: the trained (or random-weight, for latency-only curves) functional model.
        ratios: uniform pruning ratios; ``0`` is measured on the unpruned model.
        evaluate: returns the accuracy of a model (omit for latency/size-only curves).
        retrain: fine-tunes a pruned model in place (e.g. :func:`finetune`); not run at 0.
        repeats: timed LiteRT invocations per ratio.
    """
    from edgelesspart.pruning.groups import analyze
    from edgelesspart.pruning.surgery import prune_model

    graph = analyze(model)
    values: dict[str, list[float]] = {m: [] for m in METRICS if m != "accuracy" or evaluate}
    values["tflite_bytes"] = []
    ordered = sorted(float(r) for r in ratios)
    runners = []
    for ratio in ordered:
        pruned = model if ratio == 0 else prune_model(model, ratio, graph=graph).model
        if ratio > 0 and retrain is not None:
            retrain(pruned)
        if evaluate is not None:
            values["accuracy"].append(float(evaluate(pruned)))
        runners.append(LiteRunner(pruned))
        values["tflite_bytes"].append(float(len(runners[-1].tflite_bytes)))
        values["params"].append(float(pruned.count_params()))
        values["memory_bytes"].append(float(memory_bytes(pruned)))
    values["latency_ms"] = interleaved_latency_ms(runners, repeats=repeats)
    details = {
        "latency": f"median LiteRT invoke, batch 1, 1 thread, {repeats} runs per ratio, "
        "interleaved over the ratios",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "groups": len(graph.groups),
    }
    return PruningCurve(name, tuple(ordered), {k: tuple(v) for k, v in values.items()}, details)
