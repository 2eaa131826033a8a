"""Device profiles: how much slower or faster than this host a device runs, and its memory budget.

A :class:`DeviceProfile` is data (one JSON file per device in ``edgelesspart/devices/``). The
planner never measures a device: it scales the profile measured on this host
(:mod:`edgelesspart.profiler`) by a latency factor (>1 = slower than this host):

* when the device has a published full-network latency for the model (``measured_ms``) and this
  host's latency for the same model is recorded (``host_reference_ms``), the factor is their
  ratio, so per-model effects (e.g. TensorRT gains more on ResNet50 than on MobileNet) are kept;
* otherwise the device's generic ``speed_factor`` is used.

Memory is not scaled: the prefix of a model needs the same bytes on every device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from edgelesspart.errors import ProfileError
from edgelesspart.profile import ModelProfile

DEVICE_VERSION = 1
DEVICE_KINDS = ("edge", "cloud", "host")
CLOUD_PROVIDERS = ("gcf", "lambda")
_PACKAGE = "edgelesspart"
_FOLDER = "devices"
_NOT_DEVICES = {"links"}


@dataclass(frozen=True)
class DeviceProfile:
    """A compute target: memory budget and speed relative to this host.

    Attributes:
        name: device name (``rpi4``, ``jetson-orin-nano``, ``gcf-2gb``, ...).
        kind: ``edge``, ``cloud`` or ``host``.
        memory_bytes: memory budget a model part may use on this device.
        speed_factor: latency multiplier relative to this host (>1 = slower); ``None`` when only
            per-model measurements are known.
        measured_ms: published full-network batch-1 latency per model name.
        host_reference_ms: the same models' full-network latency on the reference host.
        source: citations for the numbers.
        notes: the reasoning behind the numbers (runtime path, caveats).
        memory_mb: configured memory of a cloud tier (MB), else ``None``.
        ghz: CPU clock a GCF tier pairs with its memory, else ``None``.
        vcpu: vCPUs a cloud tier gets with its memory (Lambda), else ``None``.
        provider: ``gcf`` or ``lambda`` for cloud tiers, else ``None``.
    """

    name: str
    kind: str
    memory_bytes: int
    speed_factor: float | None = None
    measured_ms: dict[str, float] = field(default_factory=dict)
    host_reference_ms: dict[str, float] = field(default_factory=dict)
    source: str = ""
    notes: str = ""
    memory_mb: int | None = None
    ghz: float | None = None
    vcpu: float | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise ProfileError(
                f"Device {self.name!r} has kind {self.kind!r}; expected one of {DEVICE_KINDS}."
            )
        if self.memory_bytes <= 0:
            raise ProfileError(
                f"Device {self.name!r} needs memory_bytes > 0, got {self.memory_bytes}."
            )
        if self.speed_factor is not None and not self.speed_factor > 0:
            raise ProfileError(
                f"Device {self.name!r} needs speed_factor > 0 (or null), got {self.speed_factor}."
            )
        for model, ms in {**self.measured_ms, **self.host_reference_ms}.items():
            if not ms > 0:
                raise ProfileError(f"Device {self.name!r}: latency of {model!r} must be > 0 ms.")
        if self.provider is not None and self.provider not in CLOUD_PROVIDERS:
            raise ProfileError(
                f"Device {self.name!r} has provider {self.provider!r}; expected one of "
                f"{CLOUD_PROVIDERS} or null."
            )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the bundled file format)."""
        return {
            "version": DEVICE_VERSION,
            "name": self.name,
            "kind": self.kind,
            "memory_bytes": self.memory_bytes,
            "speed_factor": self.speed_factor,
            "measured_ms": dict(self.measured_ms),
            "host_reference_ms": dict(self.host_reference_ms),
            "memory_mb": self.memory_mb,
            "ghz": self.ghz,
            "vcpu": self.vcpu,
            "provider": self.provider,
            "source": self.source,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DeviceProfile:
        """Build from :meth:`to_dict` output; raise :class:`ProfileError` when malformed."""
        if not isinstance(data, dict):
            raise ProfileError(f"A device file must be a JSON object, got {type(data).__name__}.")
        if data.get("version", DEVICE_VERSION) != DEVICE_VERSION:
            raise ProfileError(
                f"Unsupported device file version {data.get('version')!r}; "
                f"expected {DEVICE_VERSION}."
            )
        try:
            return cls(
                name=str(data["name"]),
                kind=str(data["kind"]),
                memory_bytes=int(data["memory_bytes"]),
                speed_factor=_opt(float, data.get("speed_factor")),
                measured_ms={str(k): float(v) for k, v in data.get("measured_ms", {}).items()},
                host_reference_ms={
                    str(k): float(v) for k, v in data.get("host_reference_ms", {}).items()
                },
                source=str(data.get("source", "")),
                notes=str(data.get("notes", "")),
                memory_mb=_opt(int, data.get("memory_mb")),
                ghz=_opt(float, data.get("ghz")),
                vcpu=_opt(float, data.get("vcpu")),
                provider=_opt(str, data.get("provider")),
            )
        except ProfileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(f"Malformed device file: missing or bad field {exc!r}.") from exc


def _opt(kind: Any, value: Any) -> Any:
    return None if value is None else kind(value)


def _bundled() -> Any:
    return resources.files(_PACKAGE).joinpath(_FOLDER)


def list_devices() -> list[str]:
    """Names of the bundled device profiles, sorted."""
    names = (
        entry.name[: -len(".json")]
        for entry in _bundled().iterdir()
        if entry.name.endswith(".json")
    )
    return sorted(n for n in names if n not in _NOT_DEVICES)


def load_device(name_or_path: str | Path) -> DeviceProfile:
    """Load a bundled device by name (``rpi4``) or a device JSON file by path.

    Raises:
        ProfileError: unknown name (the message lists the bundled ones), unreadable or malformed
            file.
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ProfileError(f"Cannot read device file {text}: {exc}.") from exc
        return DeviceProfile.from_dict(data)
    known = list_devices()
    if text not in known:
        raise ProfileError(
            f"Unknown device {text!r}. Bundled devices: {', '.join(known)}; "
            "or pass the path of a device JSON file."
        )
    data = json.loads(_bundled().joinpath(f"{text}.json").read_text(encoding="utf-8"))
    return DeviceProfile.from_dict(data)


def latency_factor_with_reason(device: DeviceProfile, model_name: str) -> tuple[float, str]:
    """The latency multiplier of ``device`` for ``model_name`` and how it was obtained.

    Returns:
        ``(factor, reason)``: ``reason`` is ``"measured"`` when the factor is
        ``measured_ms[model] / host_reference_ms[model]``, ``"speed_factor"`` when the device's
        generic factor was used.

    Raises:
        ProfileError: the device has neither a measurement for the model nor a speed factor.
    """
    key = model_name.lower()
    if key in device.measured_ms and key in device.host_reference_ms:
        return device.measured_ms[key] / device.host_reference_ms[key], "measured"
    if device.speed_factor is not None:
        return device.speed_factor, "speed_factor"
    raise ProfileError(
        f"Device {device.name!r} has no latency for model {model_name!r} (measured for: "
        f"{', '.join(sorted(device.measured_ms)) or 'none'}) and no speed_factor; add one of "
        "them to the device file."
    )


def latency_factor(device: DeviceProfile, model_name: str) -> float:
    """The latency multiplier of ``device`` for ``model_name`` (see
    :func:`latency_factor_with_reason`)."""
    return latency_factor_with_reason(device, model_name)[0]


def profile_for_device(host_profile: ModelProfile, device: DeviceProfile) -> ModelProfile:
    """Scale a profile measured on this host to ``device`` (latencies only; memory unchanged).

    The returned profile's ``extra`` records the factor and whether it was ``measured`` or the
    device's ``speed_factor``.
    """
    factor, reason = latency_factor_with_reason(device, host_profile.model)
    scaled = host_profile.scaled(
        device.name,
        factor,
        source=f"{host_profile.source} scaled to {device.name} ({reason}: x{factor:.4g})".strip(),
    )
    extra = {
        **scaled.extra,
        "latency_factor": factor,
        "latency_factor_reason": reason,
        "scaled_from": host_profile.device,
    }
    return replace(scaled, extra=extra)
