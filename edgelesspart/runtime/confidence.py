"""Calibrated exit confidence: temperature scaling and the confidence measure (numpy only).

Must not import TensorFlow: the edge service, the cloud function and the evaluator all score
exits through :class:`ExitScorer`, so a served answer's ``confidence`` and an evaluated sweep use
the same numbers.

* **Temperature scaling** (Guo et al., ICML 2017). An exit outputs probabilities ``p``; its
  logits are ``log p`` up to a per-row constant (softmax is shift-invariant), so the calibrated
  probabilities are ``softmax(log(p) / T)``. ``T`` is fitted per exit on the validation split by
  minimising the negative log-likelihood; the NLL is convex in ``1/T``, hence unimodal in
  ``log T``, and a golden-section search over ``log T`` finds it. ``T > 1`` softens an
  over-confident exit; ``T = 1`` changes nothing. The top-1 label never changes.
* **Confidence measure**: ``max-softmax`` (top-1 calibrated probability, as in the
  EdgeLessPart paper) or ``entropy`` (BranchyNet, Teerapittayanon et al. 2016): the normalised
  entropy ``H(p) / log C`` lies in [0, 1] and the confidence is ``1 - H(p) / log C``, so that
  "answer when confidence >= threshold" is BranchyNet's "answer when entropy <= 1 - threshold"
  (in units of ``log C``). Both lie in [0, 1]; a threshold above 1 disables early exits.

The manifest's ``serving`` entry (written by the build) holds ``{"confidence": measure,
"temperatures": {exit: T}, "threshold": t, ...}``; :meth:`ExitScorer.from_serving` reads it, and
an old bundle without it scores exactly as before (``T = 1``, ``max-softmax``). A bundle built
with the temperatures in its exit heads (``build --temperatures-in-graph yes``, the default)
lists them under ``temperatures_in_graph`` instead: those segments already output
``softmax(logits / T)``, so the runtime applies nothing to them (``T = 1`` here).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError, ConfigError, InputError

MAX_SOFTMAX = "max-softmax"
ENTROPY = "entropy"
MEASURES = (MAX_SOFTMAX, ENTROPY)
T_BOUNDS = (0.05, 20.0)
_EPS = 1e-12
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def check_measure(measure: Any) -> str:
    """Return ``measure`` if it is a known confidence measure.

    Raises:
        ConfigError: anything but ``max-softmax`` or ``entropy``.
    """
    if measure not in MEASURES:
        raise ConfigError(
            f"Unknown confidence measure {measure!r}; choose max-softmax (top-1 probability) "
            "or entropy (1 - normalised entropy, BranchyNet)."
        )
    return str(measure)


def check_temperature(value: Any) -> float:
    """Return ``value`` as a float if it is a positive finite temperature.

    Raises:
        ConfigError: not a positive finite number.
    """
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"A temperature must be a positive number, got {value!r}.") from exc
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ConfigError(f"A temperature must be a positive number, got {value!r}.")
    return number


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale probabilities as ``softmax(log(p) / T)``; returns float32 ``(N, C)``."""
    return _scaled(np.asarray(probs), check_temperature(temperature))


def _scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """:func:`apply_temperature` for an array and an already checked temperature."""
    if temperature == 1.0:
        return probs if probs.dtype == np.float32 else probs.astype(np.float32)
    logits = np.log(np.clip(probs.astype(np.float64), _EPS, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def _top1_scaled(row: list[float], temperature: float) -> tuple[int, float] | None:
    """(label, max-softmax confidence) of one row scaled as :func:`_scaled` does, in ``math``.

    The scaled softmax's top value is ``1 / sum_j exp((log p_j - log p_max) / T)``, i.e.
    ``1 / sum_j (p_j / p_max) ** (1 / T)``: one power per class instead of a log and an exp
    (the executor's batch-1 path runs this at every exit). ``None`` when another class is
    within 1e-6 of the top logit, i.e. its ratio is above ``exp(-1e-6)`` (float32 rounding
    could then make numpy's ``argmax`` pick another index: the caller uses numpy).
    """
    inverse = 1.0 / temperature
    top = max(row)
    scale = top if top > _EPS else _EPS
    ratios = [((v if v > _EPS else _EPS) / scale) ** inverse for v in row]
    if sum(1 for r in ratios if r > _NEAR_TIE) > 1:
        return None
    return row.index(top), _STRUCT_F32.unpack(_STRUCT_F32.pack(1.0 / sum(ratios)))[0]


_NEAR_TIE = math.exp(-1e-6)  # a ratio above this: a logit within 1e-6 of the top one
_STRUCT_F32 = struct.Struct("f")


def score(probs: np.ndarray, measure: str = MAX_SOFTMAX) -> np.ndarray:
    """Per-row confidence in [0, 1] of ``(N, C)`` probabilities under ``measure``."""
    probs = np.asarray(probs)
    if measure == MAX_SOFTMAX:  # max of the float32 values, widened: the same as widen-then-max
        return probs.max(axis=1).astype(np.float64)
    check_measure(measure)
    probs = probs.astype(np.float64)
    classes = probs.shape[1]
    if classes < 2:
        return np.ones(probs.shape[0])
    p = np.clip(probs, 0.0, 1.0)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.clip(p, _EPS, None)), 0.0), axis=1)
    return np.clip(1.0 - entropy / math.log(classes), 0.0, 1.0)


def check_probs_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under temperature-scaled ``probs``."""
    probs, labels = check_probs_labels(probs, labels)
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
    probs, labels = check_probs_labels(probs, labels)
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


@dataclass(frozen=True)
class ExitScorer:
    """How a bundle's exits are scored: per-exit temperatures plus the confidence measure.

    Attributes:
        measure: ``max-softmax`` or ``entropy``.
        temperatures: exit name -> temperature; an exit not listed uses ``T = 1``.
    """

    measure: str = MAX_SOFTMAX
    temperatures: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_measure(self.measure)
        for value in self.temperatures.values():
            check_temperature(value)

    @classmethod
    def from_serving(cls, serving: Mapping[str, Any] | None) -> ExitScorer:
        """Read a manifest ``serving`` entry (``{}`` or ``None``: uncalibrated max-softmax).

        Raises:
            ConfigError: an unknown measure or a bad temperature.
        """
        serving = serving or {}
        temps = serving.get("temperatures") or {}
        if not isinstance(temps, Mapping):
            raise ConfigError(
                f"serving.temperatures must map exit names to numbers, got {temps!r}."
            )
        # exits whose exported head already applies its temperature (a record): never again
        in_graph = serving.get("temperatures_in_graph") or {}
        if not isinstance(in_graph, Mapping):
            raise ConfigError(
                f"serving.temperatures_in_graph must map exit names to numbers, got {in_graph!r}."
            )
        both = sorted(set(map(str, temps)) & set(map(str, in_graph)))
        if both:
            raise ConfigError(
                f"Exits {both} are listed in serving.temperatures and in "
                "serving.temperatures_in_graph; their heads already apply the temperature, so "
                "scaling again would distort the confidence. Rebuild the bundle."
            )
        for value in in_graph.values():
            check_temperature(value)
        return cls(
            measure=str(serving.get("confidence", MAX_SOFTMAX)),
            temperatures={str(k): check_temperature(v) for k, v in temps.items()},
        )

    def calibrate(self, exit_name: str, probs: np.ndarray) -> np.ndarray:
        """The exit's temperature-scaled probabilities (float32, same shape).

        At ``T = 1`` a float32 array comes back as it is (no copy); the temperatures were
        checked when the scorer was built, so they are not checked again per call.
        """
        return _scaled(np.asarray(probs), self.temperatures.get(exit_name, 1.0))

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """Per-row confidence of already calibrated probabilities."""
        return score(probs, self.measure)

    def top1(
        self, exit_name: str, probs: np.ndarray, threshold: float | None = None
    ) -> tuple[list[int], list[float]]:
        """Per-row top-1 label and confidence of an exit's raw probabilities, as Python lists.

        The same numbers as ``argmax`` of :meth:`calibrate` and :meth:`confidence` of it (the
        served answers are defined by those), computed with fewer numpy calls: one sample
        under max-softmax is read as one Python list (the executor's batch-1 case) and, with a
        temperature, scaled with ``math`` in float64 as :meth:`calibrate` does. ``math`` and
        numpy may round ``log``/``exp`` differently in the last float64 bit, so a confidence
        within 1e-6 of ``threshold`` (where that could flip the decision) and a near-tie for
        the top label are computed by :meth:`calibrate` itself.
        """
        if len(probs) == 1:
            label, confidence = self.top1_one(exit_name, probs, threshold)
            return [label], [confidence]
        calibrated = self.calibrate(exit_name, probs)
        return calibrated.argmax(axis=1).tolist(), self.confidence(calibrated).tolist()

    def top1_one(
        self, exit_name: str, probs: np.ndarray, threshold: float | None = None
    ) -> tuple[int, float]:
        """:meth:`top1` of a batch of one ``(1, C)``, as one ``(label, confidence)`` pair.

        The executor's batch-1 path calls this at every exit. Under max-softmax a float32 row
        is read as one Python list; an exit without a temperature (``T = 1``: uncalibrated,
        or calibrated inside the exported head, see ``serving.temperatures_in_graph``) is then
        ``max`` and ``index``, and one with a temperature is scaled with ``math`` (see
        :meth:`top1` for when numpy decides instead).
        """
        if self.measure == MAX_SOFTMAX and probs.dtype == np.float32:
            row = probs[0].tolist()  # float32 -> float is exact, as is astype(float64)
            total = sum(row)
            if total == total and total != math.inf:  # no NaN/Inf: max/index agree with numpy
                temperature = self.temperatures.get(exit_name, 1.0)
                if temperature == 1.0:
                    best = max(row)
                    return row.index(best), best
                fast = _top1_scaled(row, temperature)
                if fast is not None and (threshold is None or abs(fast[1] - threshold) > 1e-6):
                    return fast
        calibrated = self.calibrate(exit_name, probs)
        return int(calibrated[0].argmax()), float(self.confidence(calibrated)[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"confidence", "temperatures"}`` (the scoring part of ``serving``)."""
        return {"confidence": self.measure, "temperatures": dict(self.temperatures)}


#: The services' threshold for a bundle whose manifest records none (built before ``serving``).
DEFAULT_THRESHOLD = 0.8


def serving_threshold(serving: Mapping[str, Any] | None) -> float:
    """The bundle's default threshold: ``serving["threshold"]``, else :data:`DEFAULT_THRESHOLD`.

    Raises:
        BundleError: the manifest's threshold is not a number >= 0 (``true``, ``"0.8"``, NaN).
    """
    value = (serving or {}).get("threshold")
    if value is None:
        return DEFAULT_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise BundleError(
            f"manifest.json serving.threshold must be a number >= 0, got {value!r}; rebuild the "
            "bundle or fix the field."
        )
    return float(value)


def scorer_for(serving: Mapping[str, Any] | None) -> ExitScorer:
    """:meth:`ExitScorer.from_serving`, raising :class:`BundleError` for a bad manifest entry."""
    try:
        return ExitScorer.from_serving(serving)
    except ConfigError as exc:
        raise BundleError(f"manifest.json has a bad serving entry: {exc}") from exc
