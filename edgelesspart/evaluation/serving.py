"""The build's serving choice: per-exit temperatures and the default threshold, on validation.

:func:`choose_serving` traces a freshly exported bundle (its manifest has no ``serving`` entry
yet, so the trace holds the exits' raw probabilities) on the validation split, fits one
temperature per exit (NLL, :mod:`edgelesspart.runtime.confidence`), sweeps thresholds 0.00 to
1.00 in steps of 0.01 (plus 1.01 = final classifier only) with the calibrated confidences, and
keeps the threshold of lowest expected latency whose accuracy drop against the final classifier
holds within ``max_accuracy_drop`` points *with a margin*: the one-sided 95 % upper confidence
bound of the paired per-sample drop on validation (:func:`paired_drop_bound`, the rule of
SlimEdge's plan verification) must be within the budget, not just the point estimate, because
the fastest of ~100 thresholds that only just passes on a few hundred samples tends to be a
lucky one. The validation size is recorded, and flagged when it is too small for the bound to
approve any threshold that loses a sample (:func:`min_samples_for_bound`). Per-exit thresholds
(one per edge exit, chosen greedily under the same bound) are evaluated too and recorded as
``serving.per_exit`` for comparison; the services take one threshold, so the global one is
served. It then
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
    DEFAULT_Z,
    calibrate_trace,
    expected_calibration_error,
    fit_temperatures,
    min_samples_for_bound,
    select_threshold,
    threshold_drop_bounds,
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
    z: float = DEFAULT_Z,
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
        z: one-sided normal quantile of the margin (1.645 = 95 %; 0 = point estimate only).

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
    bounds = threshold_drop_bounds(val, data.y_val, SERVING_THRESHOLDS, z)
    chosen = select_threshold(rows, val_final, max_accuracy_drop / 100.0, bounds)
    point = select_threshold(rows, val_final, max_accuracy_drop / 100.0)
    if chosen is None or point is None:  # cannot happen: 1.01 reproduces the final classifier
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
        "rule": "lowest expected latency whose one-sided upper confidence bound of the paired "
        "accuracy drop vs the final classifier on validation is within max_accuracy_drop_pp",
        "margin": _margin(chosen, point, bounds, len(data.y_val), max_accuracy_drop, z),
        "per_exit": _per_exit(val, data.y_val, kwargs, max_accuracy_drop / 100.0, z, chosen),
        "ece_val": {
            e: {
                "before": round(ece(val_raw.probs[e], data.y_val), 4),
                "after": round(ece(val.probs[e], data.y_val), 4),
            }
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


def _margin(
    chosen: Any, point: Any, bounds: dict, samples: int, max_drop_pp: float, z: float
) -> dict[str, Any]:
    """What the margin did: the bound at the chosen threshold, and the point-estimate choice."""
    mean, upper = bounds.get(float(chosen.threshold), (0.0, 0.0))
    needed = min_samples_for_bound(max_drop_pp / 100.0, z)
    return {
        "z": z,
        "confidence": "one-sided 95 %" if abs(z - DEFAULT_Z) < 1e-9 else f"z = {z:g}",
        "validation_samples": int(samples),
        "min_samples": needed,
        "too_small": bool(samples < needed),
        "drop_pp": round(100.0 * mean, 3),
        "drop_upper_pp": round(100.0 * upper, 3),
        "point_estimate_threshold": point.threshold,
    }


def _per_exit(
    val: Any, labels: Any, kwargs: dict, max_drop: float, z: float, chosen: Any
) -> dict[str, Any]:
    """Greedy per-exit thresholds under the same bound, for comparison with the global one."""
    from edgelesspart.evaluation.calibration import select_per_exit_thresholds

    result = select_per_exit_thresholds(
        val, labels, SERVING_THRESHOLDS, max_drop, z, kwargs["latency_model"]
    )
    result["global_latency_mean_ms"] = round(chosen.latency_mean_ms, 3)
    result["served"] = False
    return result


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
    margin = serving.get("margin") or {}
    bound = (
        f", {margin['confidence']} bound of the drop {margin['drop_upper_pp']:.2f} pt on "
        f"{margin['validation_samples']} validation samples (point estimate alone would pick "
        f"{margin['point_estimate_threshold']:g})"
        if margin
        else ""
    )
    line = (
        f"serving: threshold {serving['threshold']:g} ({serving['confidence']}, per-exit "
        f"temperatures fitted on validation, within {serving['max_accuracy_drop_pp']:g} pt"
        f"{bound}); expected on test: edge share {100 * exp['edge_share']:.1f}%, accuracy "
        f"{100 * exp['accuracy']:.1f}% (final classifier {100 * exp['final_accuracy']:.1f}%: "
        f"{accuracy_change(exp['accuracy'], exp['final_accuracy'])}), "
        f"{exp['latency_mean_ms']:.1f} ms mean, "
        f"${exp['cost_per_million']:.2f} per 1M requests ({exp['provider']}, {exp['link']})"
    )
    if margin.get("too_small"):
        line += (
            f"\nwarning: the validation split has {margin['validation_samples']} samples; below "
            f"{margin['min_samples']} one lost sample already breaks the "
            f"{serving['max_accuracy_drop_pp']:g} pt bound, so the threshold is conservative. "
            "Use more data (e.g. --dataset digits-hard renders 3 images per digit) or a larger "
            "--max-accuracy-drop."
        )
    return line


def accuracy_change(accuracy: float, final_accuracy: float) -> str:
    """``"1.2 pt lost"`` or ``"+15.0 pt above the final classifier"`` (never a negative loss)."""
    delta = 100.0 * (float(accuracy) - float(final_accuracy))
    if delta < -0.05:
        return f"{-delta:.1f} pt lost"
    if delta > 0.05:
        return f"+{delta:.1f} pt above the final classifier"
    return "no loss"
