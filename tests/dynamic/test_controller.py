"""The width controller on synthetic metric streams: a fluid model of a 4-stage chain.

GIVEN measured-looking curves (latency roughly proportional to width, small accuracy drops),
WHEN a stage slows down mid-run and later recovers, THEN the controller narrows that stage (and
only as far as needed), holds without flapping, and restores full width afterwards; every
decision has a reason.
"""

from __future__ import annotations

import pytest

from edgelesspart.dynamic.controller import (
    ControllerConfig,
    Decision,
    Observation,
    StageCurve,
    StageMetrics,
    WidthController,
)
from edgelesspart.errors import ConfigError

WIDTHS = (1.0, 0.75, 0.5, 0.25)
LATENCY = {1.0: 40.0, 0.75: 31.0, 0.5: 22.0, 0.25: 13.0}
DROP = {1.0: 0.0, 0.75: 0.002, 0.5: 0.006, 0.25: 0.02}
TICK_S = 0.5


def curves(n: int = 4) -> list[StageCurve]:
    return [StageCurve(WIDTHS, LATENCY, DROP) for _ in range(n)]


class FluidChain:
    """A chain of stages with queues: each tick, work arrives and each stage serves what it can."""

    def __init__(self, n: int = 4) -> None:
        self.queue = [0.0] * n
        self.slow = [1.0] * n

    def tick(self, rate: float, widths: tuple[float, ...], now: float) -> Observation:
        inflow = rate * TICK_S
        stages = []
        for k, w in enumerate(widths):
            service_ms = LATENCY[w] * self.slow[k]
            capacity = TICK_S * 1000.0 / service_ms
            self.queue[k] += inflow
            served = min(self.queue[k], capacity)
            self.queue[k] -= served
            inflow = served
            stages.append(StageMetrics(service_ms, round(self.queue[k]), served / TICK_S, w))
        return Observation(now, rate, tuple(stages))


def run(controller: WidthController, chain: FluidChain, ticks: range, rate: float, log: list):
    for t in ticks:
        obs = chain.tick(rate, controller.widths, t * TICK_S)
        log.append(controller.step(obs))


def test_reacts_to_injected_slowdown_and_recovers() -> None:
    # GIVEN a chain at 60% load (40 ms stages, 15 req/s: ~280 ms end to end) and a 400 ms SLO
    ctl = WidthController(curves(), 0.99, ControllerConfig(slo_ms=400.0))
    chain, log = FluidChain(), []
    run(ctl, chain, range(0, 20), 15.0, log)
    assert ctl.widths == (1.0, 1.0, 1.0, 1.0)
    # WHEN stage 2 becomes 2.5x slower (capacity 10 req/s < 15 req/s)
    chain.slow[2] = 2.5
    run(ctl, chain, range(20, 60), 15.0, log)
    # THEN within a few ticks stage 2 is narrowed most, enough to carry the load (another
    # stage may give up a little width for the latency headroom, at a smaller accuracy cost)
    narrowed = next(i for i, d in enumerate(log) if d.changed)
    assert 20 < narrowed <= 24
    assert ctl.widths[2] < 1.0 and ctl.widths[2] == min(ctl.widths)
    assert ctl.widths[:2] == (1.0, 1.0)
    assert 15.0 * LATENCY[ctl.widths[2]] * 2.5 / 1000 < 0.9
    assert sum(chain.queue) < 2  # the backlog drained
    assert "stage 2 is the bottleneck" in log[narrowed].reason
    # WHEN the node recovers
    chain.slow[2] = 1.0
    run(ctl, chain, range(60, 100), 15.0, log)
    # THEN full width comes back, after the calm patience, and the reason says why
    assert ctl.widths == (1.0, 1.0, 1.0, 1.0)
    restored = [d for d in ctl.decisions if d.widths == (1.0, 1.0, 1.0, 1.0)]
    assert restored and restored[-1].reason.startswith("pressure gone")
    calm_s = (ctl.config.patience_down - 1) * TICK_S
    assert restored[-1].time_s >= 60 * TICK_S + calm_s - 1e-9
    # and it took few steps: no flapping
    assert len(ctl.decisions) <= 4


def test_no_flapping_between_the_bands() -> None:
    # GIVEN a stage slowed 2x (narrowed), then only partly recovering: full width would run it
    # at 78%, between the low (75%) and high (90%) bands
    ctl = WidthController(curves(), 0.99, ControllerConfig(slo_ms=400.0))
    chain, log = FluidChain(), []
    chain.slow[1] = 2.0
    run(ctl, chain, range(0, 40), 15.0, log)
    assert ctl.widths[1] < 1.0
    chain.slow[1] = 1.3
    run(ctl, chain, range(40, 240), 15.0, log)
    # THEN it widens at most once, never back to full width, and then holds for good
    later = [d for d in ctl.decisions if d.time_s >= 40 * TICK_S]
    assert len(later) <= 1
    assert ctl.widths[1] < 1.0
    assert not any(d.changed for d in log[-150:])
    assert all(d.reason for d in log)


def test_steady_load_changes_nothing() -> None:
    ctl = WidthController(curves(), 0.99, ControllerConfig(slo_ms=400.0))
    chain, log = FluidChain(), []
    run(ctl, chain, range(0, 100), 15.0, log)
    assert ctl.decisions == []
    assert all(d.reason.startswith("hold:") for d in log)


def test_pressure_must_persist_before_narrowing() -> None:
    # GIVEN a single tick of a very high rate, then normal load
    ctl = WidthController(curves(), 0.99, ControllerConfig(slo_ms=400.0, patience_up=3))
    chain, log = FluidChain(), []
    run(ctl, chain, range(0, 1), 40.0, log)
    chain.queue = [0.0] * 4
    run(ctl, chain, range(1, 10), 10.0, log)
    # THEN the spike alone changed nothing
    assert ctl.decisions == []
    assert log[0].reason.startswith("hold: pressure 1/3")


def test_unreachable_slo_takes_the_fastest_widths_and_says_so() -> None:
    ctl = WidthController(curves(), 0.99, ControllerConfig(slo_ms=30.0, patience_up=1))
    chain = FluidChain()
    decision = ctl.step(chain.tick(5.0, ctl.widths, 0.0))
    assert decision.changed
    assert decision.widths == (0.25, 0.25, 0.25, 0.25)
    assert "no widths meet the SLO" in decision.reason


def test_prefers_narrowing_the_slow_stage_over_others() -> None:
    # GIVEN stage 0 slowed 2x at 15 req/s and a loose SLO: only stage 0 must give up accuracy
    ctl = WidthController(curves(), 0.99, ControllerConfig(slo_ms=600.0, patience_up=1))
    chain = FluidChain()
    chain.slow[0] = 2.0
    log: list[Decision] = []
    run(ctl, chain, range(0, 20), 15.0, log)
    decision = ctl.decisions[-1]
    assert decision.widths[1:] == (1.0, 1.0, 1.0)
    assert decision.widths[0] in (0.5, 0.25)
    assert decision.predicted_accuracy == pytest.approx(0.99 - DROP[decision.widths[0]])
    assert isinstance(decision, Decision) and decision.to_dict()["changed"] is True


def test_rejects_bad_configuration_and_mismatched_observations() -> None:
    with pytest.raises(ConfigError, match="slo-ms must be > 0"):
        ControllerConfig(slo_ms=0)
    with pytest.raises(ConfigError, match="low < target <= high"):
        ControllerConfig(slo_ms=100, low_utilisation=0.8, target_utilisation=0.7)
    with pytest.raises(ConfigError, match="lacks latency"):
        StageCurve(WIDTHS, {1.0: 1.0}, DROP)
    ctl = WidthController(curves(2), 0.99, ControllerConfig(slo_ms=100))
    with pytest.raises(ConfigError, match="Observation has 1 stages"):
        ctl.step(Observation(0.0, 1.0, (StageMetrics(1.0, 0, 1.0, 1.0),)))


def test_curve_round_trip() -> None:
    curve = StageCurve(WIDTHS, LATENCY, DROP)
    assert StageCurve.from_dict(curve.to_dict()) == curve


def test_widens_back_to_full_width_when_idle_after_pressure() -> None:
    # GIVEN a single-node edge narrowed by a 4x slowdown under traffic
    controller = WidthController(curves(1), 0.9, ControllerConfig(slo_ms=60.0))
    chain, log = FluidChain(1), []
    chain.slow = [4.0]
    run(controller, chain, range(0, 20), rate=8.0, log=log)
    assert controller.widths == (0.25,)
    # WHEN the traffic stops: ticks with no arrivals and no service-time sample
    idle = []
    for t in range(20, 80):
        obs = Observation(t * TICK_S, 0.0, (StageMetrics(None, 0, 0.0, controller.widths[0]),))
        idle.append(controller.step(obs))
    # THEN the controller widens back to full width without any traffic, saying why
    assert controller.widths == (1.0,)
    widened = [d for d in idle if d.changed]
    assert widened and all(d.widths[0] > d.previous[0] for d in widened)
    assert widened[0].reason.startswith("pressure gone")
    assert controller.slowdown[0] < 1.5
    # AND when traffic returns on a node that is still slow, it narrows again
    run(controller, chain, range(80, 100), rate=8.0, log=log)
    assert controller.widths[0] < 1.0


def test_a_stage_behind_an_exit_is_loaded_only_by_the_rows_it_computes() -> None:
    # GIVEN stage 1 slowed 2.5x at 15 req/s (10 req/s capacity at full width), behind an exit
    # that answers 90 % of the requests: stage 1 computes 1.5 req/s, 15 % busy
    def observe(share: float | None, now: float, ctl: WidthController) -> Observation:
        stages = (
            StageMetrics(LATENCY[ctl.widths[0]], 0, 15.0, ctl.widths[0]),
            StageMetrics(LATENCY[ctl.widths[1]] * 2.5, 0, 15.0, ctl.widths[1], share),
        )
        return Observation(now, 15.0, stages)

    behind_exit = WidthController(curves(2), 0.99, ControllerConfig(slo_ms=600.0))
    for t in range(20):
        behind_exit.step(observe(0.1, t * TICK_S, behind_exit))
    # THEN it keeps full width (the load it sees is the share it computes)
    assert behind_exit.widths == (1.0, 1.0)
    assert behind_exit.share[1] == pytest.approx(0.1, abs=1e-3)
    # WHILE the same stage computing every request (no share: all of them) is narrowed
    every_row = WidthController(curves(2), 0.99, ControllerConfig(slo_ms=600.0))
    for t in range(20):
        every_row.step(observe(None, t * TICK_S, every_row))
    assert every_row.widths[1] < 1.0 and every_row.widths[0] == 1.0


def test_with_a_shed_route_it_narrows_within_the_budget_and_sheds_the_rest() -> None:
    # GIVEN one node (40 ms at full width, 15 req/s) whose narrowest width costs 2 points,
    # a 1-point accuracy budget, and the whole model in the cloud (accuracy 0.985)
    drop = {1.0: 0.0, 0.75: 0.002, 0.5: 0.006, 0.25: 0.02}
    curve = StageCurve(WIDTHS, LATENCY, drop)
    ctl = WidthController([curve], 0.99, ControllerConfig(slo_ms=600.0), shed_accuracy=0.985)
    chain = FluidChain(1)
    log: list[Decision] = []

    def run_shedding(ticks: range) -> None:
        for t in ticks:  # 15 req/s arrive; the shed share never reaches the node
            obs = chain.tick(15.0 * (1 - ctl.shed), ctl.widths, t * TICK_S)
            log.append(ctl.step(Observation(obs.time_s, 15.0, obs.stages)))

    # WHEN the node is slowed 4x (0.5 would run it at 132 %, 0.25 at 78 %)
    chain.slow = [4.0]
    run_shedding(range(0, 20))
    # THEN it takes the narrowest width within the budget and sheds the rest (40 % brings the
    # node to 79 %; a little more while the backlog drains), never 0.25
    assert ctl.widths == (0.5,)
    assert 0.4 <= ctl.shed <= 0.5
    assert all(d.widths != (0.25,) for d in ctl.decisions)
    assert sum(chain.queue) < 1  # the backlog drained
    last = ctl.decisions[-1]
    assert f"shedding {last.shed:.0%} to the cloud" in last.reason
    share = last.shed
    assert last.predicted_accuracy == pytest.approx((1 - share) * 0.984 + share * 0.985)
    assert last.to_dict()["shed"] == share
    # WHEN the node recovers, THEN it stops shedding and goes back to full width
    chain.slow = [1.0]
    run_shedding(range(20, 80))
    assert ctl.widths == (1.0,) and ctl.shed == 0.0
