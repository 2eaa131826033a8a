"""Emulate slow devices and links by *sleeping* for the missing time, and watch the host CPU.

A stage running on this host with slowdown ``k`` must take ``k`` times its own compute. Its
compute is measured as the thread's CPU time (``time.thread_time``), which other processes on a
busy host do not inflate; the stage then sleeps ``k × cpu − wall`` more, so a stage delayed by a
crowded host sleeps less, never more. When the wall time already exceeds ``k × cpu`` the host,
not the emulated device, set the pace: :meth:`DeviceEmulation.pad` reports that, and the
benchmark flags such runs. A link adds ``rtt + bytes × 8 / bandwidth`` of sleep on the sender.
Sleeping never burns CPU. No TensorFlow, no Ray.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from edgelesspart.errors import ConfigError


@dataclass(frozen=True)
class DeviceEmulation:
    """How a stage pretends to be a slower device and sends over a slower link.

    Attributes:
        slowdown: the emulated device is this many times slower than the host's CPU time
            (1 = no emulation; a Raspberry Pi 4B running ResNet50 under LiteRT is about 9.3).
        link_mbps: emulated bandwidth of the link the stage sends on (``None``: no delay).
        link_rtt_ms: round-trip time charged once per transfer.
    """

    slowdown: float = 1.0
    link_mbps: float | None = None
    link_rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.slowdown >= 1.0:
            raise ConfigError(
                f"slowdown must be >= 1 (the emulated device is slower than the host), "
                f"got {self.slowdown!r}; emulate a faster device by giving the host less work."
            )
        if self.link_mbps is not None and not self.link_mbps > 0:
            raise ConfigError(f"link_mbps must be > 0 Mbit/s, got {self.link_mbps!r}.")
        if not self.link_rtt_ms >= 0:
            raise ConfigError(f"link_rtt_ms must be >= 0, got {self.link_rtt_ms!r}.")

    @property
    def active(self) -> bool:
        """Whether anything is emulated at all."""
        return self.slowdown > 1.0 or self.link_mbps is not None

    def compute_pad_s(self, cpu_s: float, wall_s: float) -> tuple[float, bool]:
        """(seconds to sleep, host-bound?) after a compute that took ``cpu_s`` / ``wall_s``."""
        if self.slowdown <= 1.0:
            return 0.0, False
        target = self.slowdown * cpu_s
        return max(0.0, target - wall_s), wall_s > target

    def link_s(self, nbytes: int) -> float:
        """Seconds the emulated link needs for ``nbytes`` (0 without a link)."""
        if self.link_mbps is None:
            return 0.0
        return self.link_rtt_ms / 1000.0 + nbytes * 8 / (self.link_mbps * 1e6)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DeviceEmulation:
        """Build from :meth:`to_dict` output (``None`` or ``{}``: no emulation)."""
        data = dict(data or {})
        mbps = data.get("link_mbps")
        return cls(
            slowdown=float(data.get("slowdown", 1.0)),
            link_mbps=None if mbps is None else float(mbps),
            link_rtt_ms=float(data.get("link_rtt_ms", 0.0)),
        )


def sleep_s(seconds: float) -> float:
    """Sleep ``seconds`` (if > 0) and return how long the sleep really took."""
    if seconds <= 0:
        return 0.0
    start = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - start


def _read_cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; ``None`` where unreadable."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    values = [float(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values) - idle, sum(values)


class HostCpuMeter:
    """Host-wide CPU utilisation between :meth:`start` and :meth:`stop` (``/proc/stat``).

    Also records this host's load average at the end, so a reader sees how busy the shared
    machine was. ``utilisation`` is 0..1 of all CPUs; ``None`` where ``/proc/stat`` is absent.
    """

    def __init__(self) -> None:
        self._start: tuple[float, float] | None = None
        self._wall = 0.0
        self.result: dict[str, Any] = {}

    def start(self) -> HostCpuMeter:
        """Take the first reading."""
        self._start = _read_cpu_times()
        self._wall = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        """Take the second reading and return the utilisation record."""
        end = _read_cpu_times()
        util = None
        if self._start is not None and end is not None and end[1] > self._start[1]:
            util = (end[0] - self._start[0]) / (end[1] - self._start[1])
        try:
            load = os.getloadavg()
        except OSError:
            load = (float("nan"),) * 3
        self.result = {
            "cpu_utilisation": util,
            "cpus": os.cpu_count(),
            "loadavg_1m": load[0],
            "seconds": time.perf_counter() - self._wall,
        }
        return self.result

    def __enter__(self) -> HostCpuMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
