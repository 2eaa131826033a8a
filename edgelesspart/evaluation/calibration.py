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


def select_threshold(
    results: Sequence[ThresholdResult], full_accuracy: float, max_accuracy_drop: float
) -> ThresholdResult | None:
    """The lowest-expected-latency threshold whose accuracy is within the drop of the full model.

    Ties on latency go to the higher accuracy, then to the lower threshold. Returns ``None`` when
    no threshold qualifies (include a threshold > 1, which reproduces the full model, to avoid it).
    """
    if not np.isfinite(max_accuracy_drop) or max_accuracy_drop < 0:
        raise ConfigError(f"--max-accuracy-drop must be >= 0, got {max_accuracy_drop}.")
    floor = full_accuracy - max_accuracy_drop - 1e-12
    ok = [r for r in results if r.accuracy >= floor]
    if not ok:
        return None
    return min(ok, key=lambda r: (r.latency_mean_ms, -r.accuracy, r.threshold))
