"""Per-node energy from busy and idle time: a *model*, not a measurement.

``energy = idle_w × wall_s + (load_w − idle_w) × busy_s`` -- the accepted fallback when a device
cannot measure its own power (CodeCarbon and PowerAPI use variants of it). The Raspberry Pi 4B
figures come from the official Raspberry Pi documentation (power-supplies page: 0.6 A idle and
1.2 A under stress at 5.1 V, i.e. about 3.1 W and 6.1 W, 2019 firmware; later firmware draws
0.5-1 W less). Where the host exposes Intel RAPL (``/sys/class/powercap/intel-rapl:0/energy_uj``,
root-only since CVE-2020-8694) :class:`RaplMeter` reads the host's *measured* package energy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgelesspart.errors import ConfigError

RAPL_PATH = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
RAPL_RANGE_PATH = Path("/sys/class/powercap/intel-rapl:0/max_energy_range_uj")


@dataclass(frozen=True)
class PowerModel:
    """Idle and full-load power of a device, with where the numbers come from."""

    device: str
    idle_w: float
    load_w: float
    source: str

    def __post_init__(self) -> None:
        if not 0 <= self.idle_w <= self.load_w:
            raise ConfigError(
                f"Power model of {self.device!r} needs 0 <= idle_w <= load_w, got "
                f"{self.idle_w} and {self.load_w}."
            )

    def energy_j(self, busy_s: float, wall_s: float) -> float:
        """Modelled joules of a node that was busy ``busy_s`` of ``wall_s`` seconds."""
        if busy_s < 0 or wall_s < 0:
            raise ConfigError(f"busy_s and wall_s must be >= 0, got {busy_s} and {wall_s}.")
        busy = min(busy_s, wall_s)
        return self.idle_w * wall_s + (self.load_w - self.idle_w) * busy

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


RPI4 = PowerModel(
    device="rpi4",
    idle_w=3.1,
    load_w=6.1,
    source="Raspberry Pi documentation, power supplies: Pi 4B 0.6 A idle / 1.2 A stress at "
    "5.1 V (2019 firmware), via REFERENCE.md §8.4; a model, not a measurement",
)
POWER_MODELS: dict[str, PowerModel] = {"rpi4": RPI4}


def power_model(device: str) -> PowerModel:
    """The documented power model of ``device``.

    Raises:
        ConfigError: no model for that device (the message lists the known ones).
    """
    try:
        return POWER_MODELS[device]
    except KeyError:
        raise ConfigError(
            f"No power model for device {device!r}; known: {', '.join(POWER_MODELS)}. "
            "Add a PowerModel with a cited source."
        ) from None


def node_energy(model: PowerModel, busy_s: float, wall_s: float, items: int) -> dict[str, Any]:
    """Modelled energy of one node over a run, total and per item."""
    joules = model.energy_j(busy_s, wall_s)
    return {
        "device": model.device,
        "busy_s": busy_s,
        "wall_s": wall_s,
        "utilisation": busy_s / wall_s if wall_s > 0 else 0.0,
        "energy_j": joules,
        "energy_per_item_j": joules / items if items else None,
        "kind": "model",
    }


class RaplMeter:
    """Host package energy from RAPL between :meth:`start` and :meth:`stop`, where readable."""

    def __init__(self, path: Path = RAPL_PATH) -> None:
        self.path = path
        self._start: int | None = None

    def _read(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    @property
    def readable(self) -> bool:
        """Whether the RAPL counter can be read here (often root-only)."""
        return self._read() is not None

    def start(self) -> RaplMeter:
        """Take the first reading."""
        self._start = self._read()
        return self

    def stop(self) -> dict[str, Any]:
        """Measured joules since :meth:`start` (``None`` with the reason when unreadable)."""
        end = self._read()
        if self._start is None or end is None:
            return {"energy_j": None, "kind": "measured", "note": f"{self.path} not readable"}
        delta = end - self._start
        if delta < 0:  # the counter wrapped
            try:
                delta += int(RAPL_RANGE_PATH.read_text().strip())
            except (OSError, ValueError):
                return {"energy_j": None, "kind": "measured", "note": "RAPL counter wrapped"}
        return {"energy_j": delta / 1e6, "kind": "measured", "note": "RAPL package 0"}
