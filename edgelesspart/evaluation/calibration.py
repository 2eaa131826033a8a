"""Temperature scaling per exit and threshold selection under an accuracy budget (numpy only).

Temperature scaling (Guo et al., 2017) divides an exit's logits by one scalar ``T`` fitted on
the validation split by minimising the negative log-likelihood. We only have probabilities, so
the logits are ``log(p)`` (softmax is shift-invariant, so this loses nothing). The NLL is convex
in ``1/T``, hence unimodal in ``log T``, and a golden-section search over ``log T`` finds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edgelesspart.errors import ConfigError, InputError
from edgelesspart.evaluation.sweep import ThresholdResult

T_BOUNDS = (0.05, 20.0)
_EPS = 1e-12
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise InputError(
            f"Calibration needs (N, C) probabilities and N labels with N > 0; got probabilities "
            f"of shape {probs.shape} and {labels.shape[0]} labels."
        )
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise InputError(
            f"Labels must lie in [0, {probs.shape[1] - 1}], got {labels.min()}..{labels.max()}."
        )
    return probs, labels


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities as ``softmax(log(p) / T)``; returns float32 ``(N, C)``."""
    if not np.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"A temperature must be a positive number, got {temperature}.")
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under temperature-scaled ``probs``."""
    probs, labels = _check(probs, labels)
    logits = np.log(np.clip(probs, _EPS, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=1))
    return float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))


def fit_temperature(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    bounds: tuple[float, float] = T_BOUNDS,
    tol: float = 1e-4,
) -> float:
    """Fit the temperature minimising the NLL by golden-section search over ``log T``.

    Args:
        probs: ``(N, C)`` probabilities of one exit on the validation split.
        labels: ``N`` integer labels.
        bounds: the search interval for ``T``.
        tol: stop when the interval in ``log T`` is narrower than this.

    Returns:
        The fitted temperature (``> 1`` softens an over-confident exit).
    """
    probs, labels = _check(probs, labels)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    c, d = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fc, fd = nll(probs, labels, math.exp(c)), nll(probs, labels, math.exp(d))
    while hi - lo > tol:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - _GOLDEN * (hi - lo)
            fc = nll(probs, labels, math.exp(c))
        else:
            lo, c, fc = c, d, fd
            d = lo + _GOLDEN * (hi - lo)
            fd = nll(probs, labels, math.exp(d))
    return float(math.exp((lo + hi) / 2.0))


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
    probs, labels = _check(probs, labels)
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
