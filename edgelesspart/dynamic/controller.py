"""The width controller: per-stage metrics in, one width per stage out, with a reason (pure).

Every tick the dispatcher (or the single-node edge) hands the controller an
:class:`Observation`: the arrival rate and, per stage, the mean service time at its current
width, its queue length and throughput. The controller

1. estimates each stage's *slowdown* (observed service time / the stage's measured latency at
   that width, smoothed), so it knows what every other width would cost on that node now, and
   smooths the arrival rate the same way (exponential, weight ``smoothing``);
2. predicts, for every combination of widths, the bottleneck utilisation ``rho = lambda x s``
   (``lambda`` includes draining the current backlog within ``drain_s``, times the smoothed
   share of requests the stage computes: behind an early exit, only the rows it did not
   answer) and the end-to-end
   latency (service times plus M/D/1 waiting ``rho / (2 (1 - rho)) x s`` per stage);
3. picks the most accurate combination (accuracy: full-width accuracy minus each narrowed
   stage's measured drop) that meets the SLO with headroom, the fastest one if none does.

With a *shed route* (``shed_accuracy``: the whole model also runs in the cloud, paid per
request) the controller has a second lever: it only considers width combinations within
``accuracy_budget`` of full width, and when none of them carries the load it sends the least
share of the arrivals (in steps of ``shed_step``, at most ``max_shed``) straight to the cloud
that brings the bottleneck under the target; among what meets the targets it prefers the least
shed (cost), then the most accurate (the shed requests count at ``shed_accuracy``). Widths
are free and fast to change but cost accuracy; the cloud costs money but not accuracy.

Hysteresis: it narrows only after ``patience_up`` ticks of pressure (the current widths predicted
to miss the SLO or to run a stage above ``high_utilisation``), to a combination that keeps every
stage under ``target_utilisation``; it widens only after ``patience_down`` calm ticks in which a
more accurate combination would stay under ``low_utilisation`` with latency headroom, and not
within ``min_dwell_s`` of the last change. So a load between the bands changes nothing, and full
width comes back once the pressure is gone. Every :class:`Decision` carries its reason.

Traffic or not: a stage that served nothing in a tick gives no service-time sample, so its
slowdown estimate would otherwise stay at whatever the last busy tick measured, and an idle
service would stay narrow until traffic returned. Instead each idle tick moves the estimate
``idle_recovery`` of the way back to nominal (1x): with no evidence of a slowdown the controller
drifts back toward full width, and the first busy tick measures the node again (narrowing once
more after ``patience_up`` ticks if it is still slow).
No TensorFlow, no Ray, no clock: time comes in with the observation.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgelesspart.dynamic.widths import DynamicManifest, check_widths, width_key
from edgelesspart.errors import ConfigError

#: Width changes the controller remembers (a long-running service must not grow without bound).
DECISIONS_KEPT = 1000

#: A stage measured faster than its curve is believed down to this factor.
MIN_SLOWDOWN = 0.1


@dataclass(frozen=True)
class StageCurve:
    """What one stage costs and loses at each width, at its nominal (unslowed) speed.

    Attributes:
        widths: widths the stage holds, widest first.
        latency_ms: service time per width on the stage's device at nominal speed.
        accuracy_drop: accuracy points (0..1) lost with only this stage at that width.
    """

    widths: tuple[float, ...]
    latency_ms: Mapping[float, float]
    accuracy_drop: Mapping[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", check_widths(self.widths))
        for w in self.widths:
            if w not in self.latency_ms or w not in self.accuracy_drop:
                raise ConfigError(f"Stage curve lacks latency or accuracy for width {w!r}.")
            if not self.latency_ms[w] > 0:
                raise ConfigError(f"Stage latency at width {w!r} must be > 0 ms.")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "widths": list(self.widths),
            "latency_ms": {width_key(w): v for w, v in self.latency_ms.items()},
            "accuracy_drop": {width_key(w): v for w, v in self.accuracy_drop.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageCurve:
        """Build from :meth:`to_dict` output."""
        return cls(
            widths=tuple(float(w) for w in data["widths"]),
            latency_ms={float(k): float(v) for k, v in data["latency_ms"].items()},
            accuracy_drop={float(k): float(v) for k, v in data["accuracy_drop"].items()},
        )


def curves_from_manifest(
    manifest: DynamicManifest,
    scale: float = 1.0,
    groups: Sequence[Sequence[int]] | None = None,
    exits: bool = False,
) -> tuple[tuple[StageCurve, ...], float]:
    """Controller curves from a width bundle, and the full-width accuracy.

    Args:
        manifest: the width bundle's manifest.
        scale: device latency = ``scale`` x build-host latency (an emulated or measured factor).
        groups: stage indices each controlled stage runs (default: one bundle stage each); a
            single-node edge passes ``[[0, 1, 2, 3]]`` and narrows all of them together, and
            its accuracy drop is then the measured uniform-width drop.
        exits: the chain serves with its exit heads (``dynamic/exits.py``): a stage's latency
            includes its head at each width (its own head per width where the bundle has
            them), and the accuracy is that of the chain *with its exits* when only that stage
            is narrowed (``serving.stage_accuracy``, validation, at the serving threshold),
            where the bundle recorded it, else the final classifier's.
    """
    measured = manifest.serving.get("stage_accuracy") if exits else None
    full = float(measured["0"][width_key(1.0)]) if measured else manifest.full_accuracy
    groups = [[i] for i in range(len(manifest.stages))] if groups is None else groups
    curves = []
    for group in groups:

        def head_ms(i: int, w: float) -> float:
            head = manifest.exit_head(i, w) if exits else None
            return float(head["latency_ms"]) if head is not None else 0.0

        lat = {
            w: scale * sum(manifest.stages[i].at(w).latency_ms + head_ms(i, w) for i in group)
            for w in manifest.widths
        }
        if len(group) == 1 and measured and str(group[0]) in measured:
            drop = {w: full - float(measured[str(group[0])][width_key(w)]) for w in manifest.widths}
        elif len(group) == 1:
            base = manifest.full_accuracy
            drop = {w: base - manifest.stages[group[0]].at(w).accuracy for w in manifest.widths}
        else:
            base = manifest.full_accuracy
            drop = {w: base - manifest.uniform_accuracy[width_key(w)] for w in manifest.widths}
        curves.append(StageCurve(manifest.widths, lat, {w: max(0.0, d) for w, d in drop.items()}))
    return tuple(curves), full


@dataclass(frozen=True)
class ControllerConfig:
    """Targets and hysteresis of :class:`WidthController` (defaults: a 0.5 s tick)."""

    slo_ms: float
    high_utilisation: float = 0.9
    target_utilisation: float = 0.8
    low_utilisation: float = 0.75
    latency_headroom: float = 0.8
    patience_up: int = 2
    patience_down: int = 6
    min_dwell_s: float = 3.0
    smoothing: float = 0.5
    drain_s: float = 5.0
    idle_recovery: float = 0.2
    accuracy_budget: float = 0.01
    max_shed: float = 0.9
    shed_step: float = 0.05

    def __post_init__(self) -> None:
        if not self.slo_ms > 0:
            raise ConfigError(f"--slo-ms must be > 0, got {self.slo_ms!r}.")
        if not 0 < self.low_utilisation < self.target_utilisation <= self.high_utilisation < 1:
            raise ConfigError(
                "Utilisation bands must satisfy 0 < low < target <= high < 1, got "
                f"{self.low_utilisation}, {self.target_utilisation}, {self.high_utilisation}."
            )
        if self.patience_up < 1 or self.patience_down < 1 or not 0 < self.smoothing <= 1:
            raise ConfigError("patience_up/down must be >= 1 and smoothing in (0, 1].")
        if not 0 <= self.idle_recovery <= 1:
            raise ConfigError(f"idle_recovery must be in [0, 1], got {self.idle_recovery!r}.")
        if not 0 <= self.accuracy_budget <= 1 or not 0 <= self.max_shed < 1:
            raise ConfigError("accuracy_budget must be in [0, 1] and max_shed in [0, 1).")
        if not 0 < self.shed_step <= 1:
            raise ConfigError(f"shed_step must be in (0, 1], got {self.shed_step!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class StageMetrics:
    """One stage over the last tick: mean service time (ms, ``None`` if it served nothing),
    items waiting or running there, items finished per second, and its current width.

    ``share``: the fraction of the items that passed the stage which it computed (``None``:
    all of them, or nothing passed). In a chain with early exits a later stage only computes
    the rows no earlier exit answered, so its load is ``share x`` the arrival rate.
    """

    service_ms: float | None
    queue: int
    throughput: float
    width: float
    share: float | None = None


@dataclass(frozen=True)
class Observation:
    """What the dispatcher saw over the last tick, at time ``time_s``."""

    time_s: float
    arrival_rate: float
    stages: tuple[StageMetrics, ...]


@dataclass(frozen=True)
class Decision:
    """The widths the controller wants after an observation, and why."""

    time_s: float
    widths: tuple[float, ...]
    previous: tuple[float, ...]
    reason: str
    bottleneck: int
    slowdown: tuple[float, ...]
    predicted_latency_ms: float
    predicted_utilisation: float
    predicted_accuracy: float
    shed: float = 0.0
    previous_shed: float = 0.0

    @property
    def changed(self) -> bool:
        """Whether the widths (or the shed share) differ from the previous ones."""
        return self.widths != self.previous or self.shed != self.previous_shed

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "time_s": round(self.time_s, 3),
            "widths": list(self.widths),
            "previous": list(self.previous),
            "changed": self.changed,
            "reason": self.reason,
            "bottleneck": self.bottleneck,
            "slowdown": [round(s, 3) for s in self.slowdown],
            "predicted_latency_ms": _finite(self.predicted_latency_ms),
            "predicted_utilisation": _finite(self.predicted_utilisation),
            "predicted_accuracy": round(self.predicted_accuracy, 5),
            "shed": self.shed,
        }


def _finite(value: float) -> float | None:
    return round(value, 3) if math.isfinite(value) else None


@dataclass(frozen=True)
class _Prediction:
    widths: tuple[float, ...]
    utilisation: float
    latency_ms: float
    accuracy: float
    bottleneck: int
    shed: float = 0.0
    edge_accuracy: float = math.nan


@dataclass
class _State:
    slowdown: list[float]
    widths: tuple[float, ...]
    share: list[float]
    shed: float = 0.0
    rate: float | None = None
    pressure: int = 0
    calm: int = 0
    last_change_s: float = -math.inf
    decisions: deque[Decision] = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))


class WidthController:
    """Picks a width per stage from observations (see the module docstring).

    Args:
        curves: one :class:`StageCurve` per stage, in chain order.
        full_accuracy: accuracy with every stage at full width.
        config: targets and hysteresis.
        shed_accuracy: the accuracy of a request shed to the cloud (the whole model there);
            ``None``: no shed route, widths are the only lever (see :meth:`step`).
    """

    def __init__(
        self,
        curves: Sequence[StageCurve],
        full_accuracy: float,
        config: ControllerConfig,
        shed_accuracy: float | None = None,
    ) -> None:
        if not curves:
            raise ConfigError("The controller needs at least one stage curve.")
        self.curves = tuple(curves)
        self.full_accuracy = float(full_accuracy)
        self.config = config
        self.shed_accuracy = None if shed_accuracy is None else float(shed_accuracy)
        self._combos = list(itertools.product(*(c.widths for c in self.curves)))
        n = len(self.curves)
        self._state = _State([1.0] * n, tuple(1.0 for _ in self.curves), [1.0] * n)

    @property
    def widths(self) -> tuple[float, ...]:
        """The widths of the last decision (full width before the first)."""
        return self._state.widths

    @property
    def shed(self) -> float:
        """The share of arrivals the last decision sheds to the cloud (0 without a route)."""
        return self._state.shed

    @property
    def slowdown(self) -> tuple[float, ...]:
        """The smoothed slowdown estimate per stage."""
        return tuple(self._state.slowdown)

    @property
    def share(self) -> tuple[float, ...]:
        """The smoothed share of the requests each stage computes (1: every request)."""
        return tuple(self._state.share)

    @property
    def decisions(self) -> list[Decision]:
        """The latest :data:`DECISIONS_KEPT` decisions that changed the widths, oldest first."""
        return list(self._state.decisions)

    def predict(
        self, widths: Sequence[float], arrival_rate: float, shed: float = 0.0
    ) -> _Prediction:
        """Utilisation of the bottleneck, latency and accuracy of ``widths`` at this load, with
        the share ``shed`` of the arrivals sent to the cloud instead."""
        rate = max(0.0, float(arrival_rate)) * (1.0 - shed)
        latency = 0.0
        worst, bottleneck = -1.0, 0
        accuracy = self.full_accuracy
        for k, (curve, w) in enumerate(zip(self.curves, widths)):
            service = curve.latency_ms[w] * self._state.slowdown[k]
            rho = rate * self._state.share[k] * service / 1000.0
            wait = math.inf if rho >= 1 else rho / (2 * (1 - rho)) * service
            latency += service + wait
            accuracy -= curve.accuracy_drop[w]
            if rho > worst:
                worst, bottleneck = rho, k
        mixed = accuracy if not shed else (1 - shed) * accuracy + shed * (self.shed_accuracy or 0)
        return _Prediction(tuple(widths), worst, latency, mixed, bottleneck, shed, accuracy)

    def _candidates(self, rate: float, utilisation: float) -> list[_Prediction]:
        """Every width combination; with a shed route, only those within the accuracy budget,
        each shedding the least share (in ``shed_step``s) that brings it under
        ``utilisation``."""
        cfg = self.config
        plain = [self.predict(c, rate) for c in self._combos]
        if self.shed_accuracy is None:
            return plain
        floor = self.full_accuracy - cfg.accuracy_budget - 1e-9
        out = []
        for p in plain:
            if p.edge_accuracy < floor:
                continue
            shed = 0.0
            if p.utilisation > utilisation:
                need = 1.0 - utilisation / p.utilisation
                shed = min(cfg.max_shed, math.ceil(need / cfg.shed_step - 1e-9) * cfg.shed_step)
            out.append(self.predict(p.widths, rate, round(shed, 6)) if shed else p)
        return out

    def _best(self, rate: float, utilisation: float, headroom: float) -> _Prediction | None:
        """Best candidate (:func:`_rank`) under ``utilisation`` and ``headroom`` x SLO."""
        best = None
        for p in self._candidates(rate, utilisation):
            if p.utilisation > utilisation or p.latency_ms > headroom * self.config.slo_ms:
                continue
            if best is None or _rank(p) > _rank(best):
                best = p
        return best

    def _fastest(self, rate: float) -> _Prediction:
        return min(
            self._candidates(rate, self.config.target_utilisation),
            key=lambda p: (p.utilisation, p.latency_ms, -p.accuracy),
        )

    def _observe(self, obs: Observation) -> float:
        """Update the smoothed slowdowns and arrival rate; return the rate plus backlog drain."""
        cfg = self.config
        for k, (m, curve) in enumerate(zip(obs.stages, self.curves)):
            old = self._state.slowdown[k]
            if m.service_ms is None:  # idle: no evidence of a slowdown, drift back to nominal
                self._state.slowdown[k] = old + cfg.idle_recovery * (1.0 - old)
                continue
            if m.width not in curve.latency_ms:
                continue
            sample = max(MIN_SLOWDOWN, m.service_ms / curve.latency_ms[m.width])
            self._state.slowdown[k] = old + cfg.smoothing * (sample - old)
        for k, m in enumerate(obs.stages):  # exits upstream: a stage computes only the rest
            if m.share is not None:
                old = self._state.share[k]
                self._state.share[k] = old + cfg.smoothing * (min(1.0, max(0.0, m.share)) - old)
        sample = max(0.0, obs.arrival_rate)
        old_rate = self._state.rate
        rate = sample if old_rate is None else old_rate + cfg.smoothing * (sample - old_rate)
        self._state.rate = rate
        backlog = sum(m.queue for m in obs.stages)
        return rate + backlog / cfg.drain_s

    def step(self, obs: Observation) -> Decision:
        """Read one observation; return the decision (``decision.changed``: apply it)."""
        if len(obs.stages) != len(self.curves):
            raise ConfigError(
                f"Observation has {len(obs.stages)} stages, the controller {len(self.curves)}."
            )
        rate = self._observe(obs)
        state, cfg = self._state, self.config
        current = self.predict(state.widths, rate, state.shed)
        pressure = current.utilisation > cfg.high_utilisation or current.latency_ms > cfg.slo_ms
        if pressure:
            state.pressure, state.calm = state.pressure + 1, 0
            if state.pressure >= cfg.patience_up:
                return self._narrow(obs.time_s, rate, current)
            return self._hold(obs.time_s, current, f"pressure {state.pressure}/{cfg.patience_up}")
        state.pressure = 0
        wider = self._best(rate, cfg.low_utilisation, cfg.latency_headroom)
        if wider is None or _rank(wider) <= _rank(current):
            state.calm = 0
            return self._hold(obs.time_s, current, "within bands")
        state.calm += 1
        dwell = obs.time_s - state.last_change_s
        if state.calm < cfg.patience_down or dwell < cfg.min_dwell_s:
            return self._hold(
                obs.time_s, current, f"calm {state.calm}/{cfg.patience_down}, dwell {dwell:.1f} s"
            )
        reason = (
            f"pressure gone: widths {_fmt(wider.widths)}{_shed(wider)} keep the bottleneck (stage "
            f"{wider.bottleneck}) at {wider.utilisation:.0%} <= {cfg.low_utilisation:.0%} and "
            f"latency {wider.latency_ms:.0f} ms <= {cfg.latency_headroom:.0%} of the "
            f"{cfg.slo_ms:.0f} ms SLO; accuracy {current.accuracy:.3f} -> {wider.accuracy:.3f}"
        )
        return self._apply(obs.time_s, wider, reason)

    def _narrow(self, now: float, rate: float, current: _Prediction) -> Decision:
        cfg = self.config
        target = self._best(rate, cfg.target_utilisation, cfg.latency_headroom)
        why = (
            f"stage {current.bottleneck} is the bottleneck (slowdown "
            f"{self._state.slowdown[current.bottleneck]:.2f}x): utilisation "
            f"{current.utilisation:.0%}, predicted latency {_ms(current.latency_ms)} vs SLO "
            f"{cfg.slo_ms:.0f} ms at {rate:.1f} req/s"
        )
        if target is None:
            target = self._fastest(rate)
            reason = (
                f"{why}; no widths meet the SLO, taking the fastest {_fmt(target.widths)}"
                f"{_shed(target)}"
            )
        else:
            reason = (
                f"{why}; {_fmt(target.widths)}{_shed(target)} keeps every stage <= "
                f"{cfg.target_utilisation:.0%} at accuracy {target.accuracy:.3f}"
            )
        if (target.widths, target.shed) == (self._state.widths, self._state.shed):
            return self._hold(now, current, f"{why}; already at the best widths")
        return self._apply(now, target, reason)

    def _apply(self, now: float, target: _Prediction, reason: str) -> Decision:
        state = self._state
        decision = Decision(
            now,
            target.widths,
            state.widths,
            reason,
            target.bottleneck,
            tuple(state.slowdown),
            target.latency_ms,
            target.utilisation,
            target.accuracy,
            target.shed,
            state.shed,
        )
        state.widths, state.pressure, state.calm, state.last_change_s = target.widths, 0, 0, now
        state.shed = target.shed
        state.decisions.append(decision)
        return decision

    def _hold(self, now: float, current: _Prediction, why: str) -> Decision:
        return Decision(
            now,
            current.widths,
            current.widths,
            f"hold: {why}",
            current.bottleneck,
            tuple(self._state.slowdown),
            current.latency_ms,
            current.utilisation,
            current.accuracy,
            current.shed,
            current.shed,
        )


def _rank(p: _Prediction) -> tuple[float, float, float, float]:
    """Preference order: less shed to the cloud (it is paid per request; the widths allowed
    are already within the accuracy budget), more accurate, then wider (measured ties favour
    full width), faster. Without a shed route the first term is always 0."""
    return (-p.shed, round(p.accuracy, 6), sum(p.widths), -p.latency_ms)


def _shed(p: _Prediction) -> str:
    return f" shedding {p.shed:.0%} to the cloud" if p.shed else ""


def _fmt(widths: Sequence[float]) -> str:
    return "[" + ", ".join(width_key(w) for w in widths) + "]"


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if math.isfinite(value) else "unbounded (queue grows)"
