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
    from edgelesspart.evaluation import compute
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
    timing = compute.time_interleaved(bundle, data.x_val)  # full model and segments, one trace
    payoff = exit_payoff(bundle_path, val, chosen.threshold, timing)
    return {
        "payoff": {**payoff, "split": "validation"},
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


#: below this validation edge share, the latency rule's edge exits are called useless
USELESS_EDGE_SHARE = 0.3


def exit_payoff(
    bundle_path: str | Path, trace: Any, threshold: float, timing: Any
) -> dict[str, Any]:
    """Whether each early exit pays for itself at ``threshold``, from measured host times.

    ``timing`` is the bundle's interleaved timing
    (:func:`~edgelesspart.evaluation.compute.time_interleaved`): the full model and every
    segment measured in the same trace. Per exit: its measured head cost is the timed segment
    ending in it minus that segment's share of the full model (the host profile gives the
    share, the interleaved full-model time the milliseconds); it costs that on every sample
    that reaches it, and saves the rest of the full model on every sample it answers. The net
    saving is :func:`~edgelesspart.evaluation.compute.measured_compute`, every head included.
    """
    from edgelesspart.evaluation.compute import measured_compute
    from edgelesspart.evaluation.pipeline import load_backbone
    from edgelesspart.evaluation.sweep import StageMemory, answering_exit, confidences
    from edgelesspart.profiling.profile import ModelProfile
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(bundle_path, verify=False)
    backbone = load_backbone(_BundleView(manifest, Path(bundle_path)), trace, StageMemory())
    net = measured_compute(trace, threshold, timing, backbone.full_ms)
    if not (Path(bundle_path) / "profile.json").is_file():  # no host profile: no per-exit split
        return {"exits": {}, "net": net}
    profile = ModelProfile.load(Path(bundle_path) / "profile.json")
    profile_full = profile.total.latency_ms
    full_ms = float(net["full_model_host_ms"])
    # the profile's cumulative latency as a share of its full model, in interleaved ms
    cumulative = {cp.name: cp.latency_ms / profile_full * full_ms for cp in profile.cut_points}
    seg_ms = timing.segment_means()
    conf, _ = confidences(trace)
    idx = answering_exit(conf, threshold)
    exits: dict[str, Any] = {}
    for k, name in enumerate(trace.exits[:-1]):
        segment = next((s for s in manifest.segments if s.exit == name), None)
        if segment is None or segment.end not in cumulative:
            continue
        stretch = cumulative[segment.end] - cumulative.get(segment.start, 0.0)
        head_ms = max(0.0, float(seg_ms[segment.name]) - stretch)
        reach = float((idx >= k).mean())
        answered = float((idx == k).mean())
        saves = answered * max(0.0, full_ms - cumulative[segment.end])
        costs = reach * head_ms
        exits[name] = {
            "cut_point": segment.end,
            "head_ms": round(head_ms, 4),
            "reach": round(reach, 4),
            "answered": round(answered, 4),
            "expected_saving_ms": round(saves, 4),
            "expected_cost_ms": round(costs, 4),
            "pays_off": bool(saves > costs),
        }
    return {"exits": exits, "net": net}


class _BundleView:
    """What :func:`load_backbone` reads of a bundle (its manifest and path)."""

    def __init__(self, manifest: Any, path: Path) -> None:
        self.manifest, self.path = manifest, path


def payoff_warnings(
    payoff: dict[str, Any], constraint: str, edge_share: float, split: str
) -> list[str]:
    """Warnings: exits that cost more than they save, a net loss, useless latency-rule exits."""
    out = []
    for name, row in payoff["exits"].items():
        if not row["pays_off"]:
            out.append(
                f"exit {name} at {row['cut_point']} does not pay off: its measured head costs "
                f"{row['head_ms']:.3f} ms on the {100 * row['reach']:.0f}% of samples that reach "
                f"it ({row['expected_cost_ms']:.3f} ms per sample) but saves "
                f"{row['expected_saving_ms']:.3f} ms per sample"
            )
    net = payoff["net"].get("saving")
    if net is not None and net < 1.0:
        out.append(
            f"with its exits the model needs {1 / net:.2f}x MORE host compute than without them "
            f"at the serving threshold ({payoff['net']['served_host_ms']:.3f} vs "
            f"{payoff['net']['full_model_host_ms']:.3f} ms, measured): fewer exits "
            "(--exits-per-part) or --constraint expected-latency would do better"
        )
    if constraint == "latency" and edge_share < USELESS_EDGE_SHARE:
        out.append(
            f"the latency rule splits at {split}, where the edge exits answer only "
            f"{100 * edge_share:.1f}% of validation samples: they are nearly useless. "
            "--constraint expected-latency (or expected-cost) places the split and exits by their "
            "measured answer rates and does better here"
        )
    return out
