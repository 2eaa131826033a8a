"""Temperature scaling per exit and threshold selection under an accuracy budget (numpy only).

The temperature math lives in the TF-free :mod:`edgelesspart.runtime.confidence` (the services
apply the fitted temperatures from the manifest); this module fits one temperature per exit of a
trace, measures calibration (ECE) and selects a threshold under an accuracy budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edgelesspart.errors import ConfigError
from edgelesspart.evaluation.sweep import ThresholdResult
from edgelesspart.runtime.confidence import (  # noqa: F401  (re-exported)
    T_BOUNDS,
    apply_temperature,
    check_probs_labels,
    fit_temperature,
    nll,
)


def fit_temperatures(trace: Any, labels: np.ndarray) -> dict[str, float]:
    """Fit one temperature per exit of a (validation) trace."""
    return {name: fit_temperature(trace.probs[name], labels) for name in trace.exits}


def calibrate_trace(trace: Any, temperatures: Mapping[str, float]) -> Any:
    """A copy of ``trace`` with each exit's probabilities temperature-scaled."""
    missing = [e for e in trace.exits if e not in temperatures]
    if missing:
        raise ConfigError(f"No temperature for exits {missing}; fit them on the same bundle.")
    probs = {e: apply_temperature(trace.probs[e], temperatures[e]) for e in trace.exits}
    return replace(trace, probs=probs)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: the sample-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    probs, labels = check_probs_labels(probs, labels)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            gap = abs(float((pred[in_bin] == labels[in_bin]).mean()) - float(conf[in_bin].mean()))
            ece += in_bin.mean() * gap
    return float(ece)


#: one-sided 95 % normal quantile: the serving threshold's accuracy drop must hold at this
#: confidence (the same rule as SlimEdge's plan verification, ``slimedge/verify.py``).
DEFAULT_Z = 1.645


def paired_drop_bound(
    served_correct: np.ndarray, final_correct: np.ndarray, z: float = DEFAULT_Z
) -> tuple[float, float]:
    """Mean and one-sided upper confidence bound of the paired accuracy drop (fractions).

    Per sample ``d = final_correct - served_correct`` (-1, 0 or 1); the bound is
    ``mean(d) + z * std(d, ddof=1) / sqrt(n)``. A threshold whose every answer agrees with the
    final classifier's correctness has bound 0; a single lost sample out of ``n`` already puts
    it at about ``(1 + z) / n``.
    """
    served = np.asarray(served_correct, dtype=np.float64).reshape(-1)
    final = np.asarray(final_correct, dtype=np.float64).reshape(-1)
    if served.shape != final.shape or not len(served):
        raise ConfigError("paired_drop_bound needs two equal-length, non-empty correctness arrays.")
    d = final - served
    mean = float(d.mean())
    if len(d) < 2:
        return mean, mean
    return mean, mean + float(z) * float(d.std(ddof=1)) / float(np.sqrt(len(d)))


def min_samples_for_bound(max_accuracy_drop: float, z: float = DEFAULT_Z) -> int:
    """Validation samples below which losing one sample already breaks the bound.

    With ``n`` samples, one net lost sample gives a bound of about ``(1 + z) / n``; below
    ``(1 + z) / max_accuracy_drop`` samples the rule can approve only thresholds that lose
    nothing net, so it is too coarse to trade accuracy for edge answers.
    """
    if max_accuracy_drop <= 0:
        return 0
    return int(np.ceil((1.0 + z) / max_accuracy_drop))


def threshold_drop_bounds(
    trace: Any, labels: np.ndarray, thresholds: Sequence[float], z: float = DEFAULT_Z
) -> dict[float, tuple[float, float]]:
    """``threshold -> (mean drop, upper bound)`` of the paired drop against the final exit."""
    from edgelesspart.evaluation.sweep import answering_exit, confidences

    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    conf, pred = confidences(trace, labels)
    final_correct = pred[:, -1] == labels
    rows = np.arange(len(labels))
    out = {}
    for t in thresholds:
        idx = answering_exit(conf, float(t))
        out[float(t)] = paired_drop_bound(pred[rows, idx] == labels, final_correct, z)
    return out


def select_threshold(
    results: Sequence[ThresholdResult],
    full_accuracy: float,
    max_accuracy_drop: float,
    drop_bounds: Mapping[float, tuple[float, float]] | None = None,
) -> ThresholdResult | None:
    """The lowest-expected-latency threshold whose accuracy is within the drop of the full model.

    With ``drop_bounds`` (from :func:`threshold_drop_bounds`) a threshold qualifies only when
    the one-sided upper confidence bound of its paired drop is within ``max_accuracy_drop``
    (the margin); without, when its point accuracy is. Ties on latency go to the higher
    accuracy, then to the lower threshold. Returns ``None`` when no threshold qualifies (include
    a threshold > 1, which reproduces the full model, to avoid it).
    """
    if not np.isfinite(max_accuracy_drop) or max_accuracy_drop < 0:
        raise ConfigError(f"--max-accuracy-drop must be >= 0, got {max_accuracy_drop}.")
    floor = full_accuracy - max_accuracy_drop - 1e-12
    if drop_bounds is None:
        ok = [r for r in results if r.accuracy >= floor]
    else:
        ok = [
            r
            for r in results
            if r.threshold > 1.0 or drop_bounds[float(r.threshold)][1] <= max_accuracy_drop + 1e-12
        ]
    if not ok:
        return None
    return min(ok, key=lambda r: (r.latency_mean_ms, -r.accuracy, r.threshold))


def select_per_exit_thresholds(
    trace: Any,
    labels: np.ndarray,
    grid: Sequence[float],
    max_accuracy_drop: float,
    z: float,
    latency_model: Any,
    max_rounds: int = 8,
) -> dict[str, Any]:
    """One threshold per early exit, chosen greedily under the paired-drop bound.

    Starting from every early exit off (threshold above 1), each round makes the one move
    (an exit's threshold set to a grid value) that lowers the mean latency most while the
    one-sided bound of the paired drop stays within ``max_accuracy_drop``; it stops when no
    move helps. Returns the thresholds and their validation latency, edge share and bound.
    """
    from edgelesspart.evaluation.sweep import confidences, exit_costs

    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    conf, pred = confidences(trace, labels)
    costs = exit_costs(trace, latency_model)
    rows = np.arange(len(labels))
    final_correct = pred[:, -1] == labels
    early = len(trace.exits) - 1

    def score(ts: list[float]) -> tuple[float, float, np.ndarray]:
        mask = np.zeros_like(conf, dtype=bool)
        for k, t in enumerate(ts):
            mask[:, k] = (conf[:, k] >= t) & (t <= 1.0)
        mask[:, -1] = True
        idx = mask.argmax(axis=1)
        _, upper = paired_drop_bound(pred[rows, idx] == labels, final_correct, z)
        return float(costs.latency_ms[idx].mean()), upper, idx

    current = [1.01] * early
    latency, upper, idx = score(current)
    for _ in range(max_rounds):
        best: tuple[float, int, float] | None = None
        for k in range(early):
            for t in grid:
                if t == current[k]:
                    continue
                trial = current.copy()
                trial[k] = float(t)
                lat, up, _ = score(trial)
                if up <= max_accuracy_drop + 1e-12 and lat < latency - 1e-9:
                    if best is None or lat < best[0]:
                        best = (lat, k, float(t))
        if best is None:
            break
        current[best[1]] = best[2]
        latency, upper, idx = score(current)
    offloaded = costs.offloaded[idx]
    return {
        "thresholds": {name: t for name, t in zip(trace.exits[:-1], current)},
        "latency_mean_ms": round(latency, 3),
        "edge_share": round(1.0 - float(offloaded.mean()), 5),
        "drop_upper_pp": round(100.0 * upper, 3),
        "split": "validation",
    }
