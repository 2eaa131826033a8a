"""Device/link emulation by sleeping, host CPU sampling, and the per-node energy model."""

from __future__ import annotations

import time

import pytest

from edgelesspart.errors import ConfigError
from edgelesspart.pipeline.emulation import DeviceEmulation, HostCpuMeter, sleep_s
from edgelesspart.pipeline.energy import RPI4, PowerModel, RaplMeter, node_energy, power_model
from edgelesspart.pipeline.raykit import actor_options, parse_placement


def test_slowdown_pads_to_k_times_cpu_and_flags_a_crowded_host():
    emu = DeviceEmulation(slowdown=4.0)
    # GIVEN 10 ms of CPU that took 12 ms of wall time, THEN it sleeps 28 ms more (40 in all)
    assert emu.compute_pad_s(0.010, 0.012) == (pytest.approx(0.028), False)
    # GIVEN a host so busy the wall time exceeds 4 x CPU, THEN no sleep and host-bound
    assert emu.compute_pad_s(0.010, 0.050) == (0.0, True)
    assert DeviceEmulation().compute_pad_s(0.01, 0.5) == (0.0, False)


def test_link_time_is_rtt_plus_bytes_at_the_rate():
    emu = DeviceEmulation(link_mbps=100.0, link_rtt_ms=1.0)
    assert emu.link_s(1_250_000) == pytest.approx(0.001 + 0.1)
    assert DeviceEmulation().link_s(10**9) == 0.0
    assert DeviceEmulation.from_dict(emu.to_dict()) == emu


def test_sleeping_does_not_burn_cpu():
    cpu0 = time.process_time()
    slept = sleep_s(0.2)
    assert slept >= 0.2
    assert time.process_time() - cpu0 < 0.05


def test_bad_emulation_values_are_refused():
    with pytest.raises(ConfigError, match="slowdown must be >= 1"):
        DeviceEmulation(slowdown=0.5)
    with pytest.raises(ConfigError, match="link_mbps must be > 0"):
        DeviceEmulation(link_mbps=0)


def test_host_cpu_meter_reports_utilisation():
    with HostCpuMeter() as meter:
        time.sleep(0.05)
    util = meter.result["cpu_utilisation"]
    assert util is None or 0.0 <= util <= 1.0
    assert meter.result["cpus"] >= 1


def test_energy_model_is_idle_plus_busy_share():
    # GIVEN an RPi4 busy 2 s of 10 s, THEN 3.1 W x 10 s + 3.0 W x 2 s = 37 J
    record = node_energy(RPI4, busy_s=2.0, wall_s=10.0, items=4)
    assert record["energy_j"] == pytest.approx(37.0)
    assert record["energy_per_item_j"] == pytest.approx(9.25)
    assert record["kind"] == "model"
    assert power_model("rpi4") is RPI4
    with pytest.raises(ConfigError, match="No power model for device 'toaster'"):
        power_model("toaster")
    with pytest.raises(ConfigError, match="idle_w <= load_w"):
        PowerModel("x", idle_w=5, load_w=1, source="test")


def test_rapl_meter_reports_none_when_unreadable(tmp_path):
    meter = RaplMeter(tmp_path / "missing").start()
    assert not meter.readable
    assert meter.stop()["energy_j"] is None


def test_placement_and_actor_options():
    stages = ["stage0", "stage1", "stage2"]
    assert parse_placement("stage0=rpi-0, 2=rpi-2", stages) == {
        "stage0": "rpi-0",
        "stage2": "rpi-2",
    }
    with pytest.raises(ConfigError, match="Unknown stage 'stage9'"):
        parse_placement("stage9=x", stages)
    with pytest.raises(ConfigError, match="write STAGE=RESOURCE"):
        parse_placement("stage0", stages)
    opts = actor_options(resource="rpi-1", max_restarts=2, max_task_retries=5)
    assert opts == {
        "num_cpus": 0.0,
        "max_restarts": 2,
        "max_task_retries": 5,
        "resources": {"rpi-1": 1},
    }
