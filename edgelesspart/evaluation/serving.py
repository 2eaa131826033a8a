"""The build's serving choice: per-exit temperatures and the default threshold, on validation.

:func:`choose_serving` traces a freshly exported bundle (its manifest has no ``serving`` entry
yet, so the trace holds the exits' raw probabilities) on the validation split, fits one
temperature per exit (NLL, :mod:`edgelesspart.runtime.confidence`), sweeps thresholds 0.00 to
1.00 in steps of 0.01 (plus 1.01 = final classifier only) with the calibrated confidences, and
keeps the threshold of lowest expected latency whose validation accuracy is within
``max_accuracy_drop`` points of the final classifier's (:func:`select_threshold`). It then
predicts, on the test split, what the services will do at that threshold: edge share, accuracy
and cloud cost per 1M requests. The result is the manifest's ``serving`` entry, which the edge
service and the cloud function read as their default threshold and confidence.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edgelesspart.errors import ConfigError
from edgelesspart.evaluation.calibration import (
    calibrate_trace,
    expected_calibration_error,
    fit_temperatures,
    select_threshold,
)
from edgelesspart.evaluation.sweep import StageMemory, exit_accuracy, sweep

#: Thresholds the build considers (1.01: early exits off, the final classifier answers all).
SERVING_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(101)) + (1.01,)


def _calibrated(trace: Any, temperatures: dict[str, float], measure: str) -> Any:
    return replace(calibrate_trace(trace, temperatures), measure=measure)


def _sweep_setup(
    manifest: Any, link: str, provider: str, bundle_path: str | Path
) -> tuple[dict[str, Any], int]:
    """The evaluation's latency model (a measured device's own latencies, as the planner
    uses them), price function and stage memory for ``manifest``."""
    from edgelesspart.evaluation.pipeline import EvaluationConfig, _pricing, build_latency_model

    config = EvaluationConfig(link=link, provider=provider)
    latency_model, _, cloud_device = build_latency_model(manifest, config, bundle_path)
    _, price_fn, memory_mb = _pricing(config, cloud_device)
    stages = manifest.plan.stages
    memory = StageMemory(
        stages[0].predicted_memory_bytes, sum(s.predicted_memory_bytes for s in stages[1:])
    )
    return {"latency_model": latency_model, "price_fn": price_fn, "memory": memory}, memory_mb


def choose_serving(
    bundle_path: str | Path,
    data: Any,
    *,
    max_accuracy_drop: float = 1.0,
    measure: str = "max-softmax",
    link: str = "wifi",
    provider: str = "gcf",
    calibrate: bool = True,
) -> dict[str, Any]:
    """Fit temperatures and pick the serving threshold of a bundle; predict its test behaviour.

    Args:
        bundle_path: a bundle whose manifest has no ``serving`` entry yet.
        data: the build's ``Dataset`` (its validation and test splits are used).
        max_accuracy_drop: most validation accuracy loss vs the final classifier, in points.
        measure: ``max-softmax`` or ``entropy``.
        link: link of the latency model (``edgelesspart.profiling.links``).
        provider: pricing table of the cost prediction.
        calibrate: fit temperatures; ``False`` records ``T = 1`` for every exit (raw softmax).

    Returns:
        The manifest ``serving`` entry.
    """
    from edgelesspart.evaluation.pipeline import trace_split
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.confidence import check_measure

    check_measure(measure)
    bundle = Bundle.load(bundle_path)
    kwargs, memory_mb = _sweep_setup(bundle.manifest, link, provider, bundle_path)
    val_raw = trace_split(bundle, data.x_val, batch_size=256, label="serving val", show=False)
    if calibrate:
        temperatures = fit_temperatures(val_raw, data.y_val)
    else:
        temperatures = {name: 1.0 for name in val_raw.exits}
    val = _calibrated(val_raw, temperatures, measure)
    rows = sweep(val, data.y_val, SERVING_THRESHOLDS, **kwargs)
    val_final = exit_accuracy(val, data.y_val)[val.exits[-1]]
    chosen = select_threshold(rows, val_final, max_accuracy_drop / 100.0)
    if chosen is None:  # cannot happen: 1.01 reproduces the final classifier
        raise ConfigError(f"No threshold keeps accuracy within {max_accuracy_drop} points.")
    test_raw = trace_split(bundle, data.x_test, batch_size=256, label="serving test", show=False)
    test = _calibrated(test_raw, temperatures, measure)
    (on_test,) = sweep(test, data.y_test, [chosen.threshold], **kwargs)
    ece = expected_calibration_error
    return {
        "threshold": chosen.threshold,
        "confidence": measure,
        "temperatures": {name: round(t, 5) for name, t in temperatures.items()},
        "max_accuracy_drop_pp": max_accuracy_drop,
        "chosen_on": "validation",
        "rule": "lowest expected latency within max_accuracy_drop_pp of the final classifier",
        "ece_val": {
            e: {"before": round(ece(val_raw.probs[e], data.y_val), 4),
                "after": round(ece(val.probs[e], data.y_val), 4)}
            for e in val.exits
        },  # fmt: skip
        "validation": _summary(chosen, val_final),
        "expected": {
            **_summary(on_test, exit_accuracy(test, data.y_test)[test.exits[-1]]),
            "split": "test",
            "link": link,
            "provider": provider,
            "memory_mb": memory_mb,
        },
    }


def _summary(row: Any, final_accuracy: float) -> dict[str, Any]:
    return {
        "accuracy": round(row.accuracy, 5),
        "final_accuracy": round(float(final_accuracy), 5),
        "edge_share": round(1.0 - row.offload_rate, 5),
        "exit_mix": {k: round(v, 5) for k, v in row.exit_mix.items()},
        "latency_mean_ms": round(row.latency_mean_ms, 3),
        "cost_per_million": round(row.cloud_cost_per_million, 4),
        "samples": row.samples,
    }


def format_serving(serving: dict[str, Any]) -> str:
    """One line: the chosen threshold and what the build expects it to do on test."""
    exp = serving["expected"]
    drop = 100.0 * (exp["final_accuracy"] - exp["accuracy"])
    return (
        f"serving: threshold {serving['threshold']:g} ({serving['confidence']}, per-exit "
        f"temperatures fitted on validation, within {serving['max_accuracy_drop_pp']:g} pt); "
        f"expected on test: edge share {100 * exp['edge_share']:.1f}%, accuracy "
        f"{100 * exp['accuracy']:.1f}% (final classifier {100 * exp['final_accuracy']:.1f}%: "
        f"{drop:.1f} pt lost), {exp['latency_mean_ms']:.1f} ms mean, "
        f"${exp['cost_per_million']:.2f} per 1M requests ({exp['provider']}, {exp['link']})"
    )

