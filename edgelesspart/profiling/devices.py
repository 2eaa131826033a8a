"""Device profiles: how fast a device runs a model, and its memory budget.

A :class:`DeviceProfile` is data (one JSON file per device in ``edgelesspart/profiling/catalog/``,
or a
``DEVICE.json`` written by ``edgelesspart profile-device``). The planner turns the profile
measured on this host (:mod:`edgelesspart.profiling.profiler`) into the device's profile in one of
three
ways, and records which (``extra["latency_source"]``):

* ``measured-profile``: the device ran the build's profiling kit (``profile-device``); its own
  per cut point latencies replace the host's, with no factor;
* ``host-reference``: the device has a published full-network latency for a reference model
  (``measured_ms``, e.g. ResNet50 on a Raspberry Pi 4) and this host's latency for the same model
  is **measured at build time** with the profiler's LiteRT path
  (:func:`edgelesspart.profiling.kit.host_reference_ms`); the factor is their ratio, for the
  model itself when the device has a figure for it, else for the reference model;
* ``speed_factor``: the device's generic factor (cloud tiers, which have no published figures).

``host_reference_ms`` in a device file is a legacy, machine-specific constant: the build never
uses it when it can measure; :func:`latency_factor_with_reason` falls back to it only when no
host measurement is passed (``stored-reference``). Memory is not scaled: the prefix of a model
needs the same bytes on every device.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from edgelesspart.errors import ProfileError
from edgelesspart.profiling.profile import ModelProfile
from edgelesspart.runtime.device_profiler import (
    MeasuredProfile,
    is_measured_profile,
)

#: ``model name -> (this host's latency in ms, how it was obtained)``.
HostReference = Callable[[str], tuple[float, str]]

DEVICE_VERSION = 1
DEVICE_KINDS = ("edge", "cloud", "host")
CLOUD_PROVIDERS = ("gcf", "lambda")
_PACKAGE = "edgelesspart.profiling"
_FOLDER = "catalog"
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
    measured: MeasuredProfile | None = field(default=None, compare=False, repr=False)

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
            **({"measured_profile": self.measured.to_dict()} if self.measured else {}),
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


def device_from_measurement(
    measured: MeasuredProfile, path: str | Path | None = None
) -> DeviceProfile:
    """The edge :class:`DeviceProfile` of a ``profile-device`` measurement (no factor).

    Loaded from a file (``path``), the device is named by the file's absolute path, so a plan's
    stage device can be loaded again by name (``evaluate`` and the build's serving-threshold
    choice do); the measured name (``--name``) stays in the profile and the source line.
    """
    ident = measured.identity
    return DeviceProfile(
        name=str(Path(path).resolve()) if path is not None else measured.name,
        kind="edge",
        memory_bytes=max(1, measured.memory_budget_bytes),
        speed_factor=None,
        source=f"{measured.name!r} measured with edgelesspart profile-device on "
        f"{ident.get('cpu_model')} "
        f"({ident.get('cores')} cores, LiteRT {ident.get('litert_version')}, "
        f"{measured.created}), kit {measured.kit_id}",
        notes="Per cut point latencies measured on the device itself; memory_bytes is "
        f"{measured.settings.get('memory_fraction', '?')} of the device's memory.",
        measured=measured,
    )


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
        if is_measured_profile(data):
            return device_from_measurement(MeasuredProfile.from_dict(data), path)
        return DeviceProfile.from_dict(data)
    known = list_devices()
    if text not in known:
        raise ProfileError(
            f"Unknown device {text!r}. Bundled devices: {', '.join(known)}; "
            "or pass the path of a device JSON file."
        )
    data = json.loads(_bundled().joinpath(f"{text}.json").read_text(encoding="utf-8"))
    return DeviceProfile.from_dict(data)


def latency_factor_with_reason(
    device: DeviceProfile, model_name: str, host_reference: HostReference | None = None
) -> tuple[float, str]:
    """The latency multiplier of ``device`` for ``model_name`` and how it was obtained.

    Args:
        device: the device.
        model_name: the model being planned.
        host_reference: measures (or reads from its cache) this host's latency of a reference
            model; when given and the device has a published figure, the factor is
            ``measured_ms[ref] / host_reference(ref)``, where ``ref`` is the model itself if the
            device has a figure for it, else the device's first reference model.

    Returns:
        ``(factor, reason)``: ``reason`` is ``"measured-profile"`` (factor 1: a device measured
        with profile-device, whose latencies are used directly), ``"host-reference"``,
        ``"stored-reference"`` (legacy ``host_reference_ms``) or ``"speed_factor"``.

    Raises:
        ProfileError: the device has neither a figure for the model nor a speed factor.
    """
    key = model_name.lower()
    if device.measured is not None:
        return 1.0, "measured-profile"
    if device.measured_ms and host_reference is not None:
        ref = key if key in device.measured_ms else sorted(device.measured_ms)[0]
        host_ms, _ = host_reference(ref)
        if not host_ms > 0:
            raise ProfileError(f"This host's reference latency of {ref!r} must be > 0 ms.")
        return device.measured_ms[ref] / host_ms, "host-reference"
    if key in device.measured_ms and key in device.host_reference_ms:
        return device.measured_ms[key] / device.host_reference_ms[key], "stored-reference"
    if device.speed_factor is not None:
        return device.speed_factor, "speed_factor"
    raise ProfileError(
        f"Device {device.name!r} has no latency for model {model_name!r} (measured for: "
        f"{', '.join(sorted(device.measured_ms)) or 'none'}) and no speed_factor; add one of "
        "them to the device file, or measure the device with `edgelesspart profile-device`."
    )


def latency_factor(device: DeviceProfile, model_name: str) -> float:
    """The latency multiplier of ``device`` for ``model_name`` (see
    :func:`latency_factor_with_reason`)."""
    return latency_factor_with_reason(device, model_name)[0]


def profile_from_measurement(host_profile: ModelProfile, measured: MeasuredProfile) -> ModelProfile:
    """The host profile with every latency replaced by the device's measured median.

    Memory, boundary and codec bytes stay the host's (they do not depend on the device).

    Raises:
        ProfileError: the measurement is of another model or misses one of the profile's cut
            points (the kit was written with other ``--max-cut-points``).
    """
    if measured.model.lower() != host_profile.model.lower():
        raise ProfileError(
            f"The measured profile of {measured.name!r} is of model {measured.model!r}, the build "
            f"plans {host_profile.model!r}. Write a kit for this model (build --profiling-kit) "
            "and run profile-device on it."
        )
    names = {cp.name for cp in measured.cut_points}
    missing = [cp.name for cp in host_profile.cut_points if cp.name not in names]
    if missing:
        raise ProfileError(
            f"The measured profile of {measured.name!r} has no latency at cut points {missing}; "
            "its kit was written with other candidate cut points or layer names. Write the kit "
            "with `build --profiling-kit`, or with `profile-kit` and the same --max-cut-points "
            "(Keras numbers auto-named layers per process), and measure again."
        )
    cps = tuple(
        replace(cp, latency_ms=measured.at(cp.name).latency_ms) for cp in host_profile.cut_points
    )
    extra = {
        **host_profile.extra,
        "latency_source": "measured-profile",
        "latency_factor": 1.0,
        "latency_factor_reason": "measured-profile",
        "latency_p95_ms": {cp.name: cp.latency_p95_ms for cp in measured.cut_points},
        "device_identity": dict(measured.identity),
        "kit_id": measured.kit_id,
        "measured_name": measured.name,
        "measured_full_model_ms": measured.full_model_ms,
        "measured_peak_rss_bytes": measured.peak_rss_bytes,
        "scaled_from": None,
    }
    return replace(
        host_profile,
        device=measured.name,
        cut_points=cps,
        method=f"measured on the device with profile-device ({measured.settings.get('repeats')} "
        "chain runs, median)",
        source=f"edgelesspart profile-device on {measured.identity.get('cpu_model')}",
        extra=extra,
    )


def profile_for_device(
    host_profile: ModelProfile,
    device: DeviceProfile,
    host_reference: HostReference | None = None,
) -> ModelProfile:
    """The profile of ``host_profile``'s model on ``device`` (latencies only; memory unchanged).

    A device measured with ``profile-device`` gets its own latencies; any other is scaled (see
    :func:`latency_factor_with_reason`). ``extra`` records ``latency_source``, the factor and
    its reason, and, for ``host-reference``, this host's reference latency and where it came
    from.
    """
    if device.measured is not None:
        return replace(profile_from_measurement(host_profile, device.measured), device=device.name)
    notes: dict[str, Any] = {}

    def _recording(ref: str) -> tuple[float, str]:
        ms, how = host_reference(ref)  # type: ignore[misc]
        notes.update(
            {"host_reference_model": ref, "host_reference_ms": ms, "host_reference_how": how}
        )
        return ms, how

    factor, reason = latency_factor_with_reason(
        device, host_profile.model, _recording if host_reference is not None else None
    )
    scaled = host_profile.scaled(
        device.name,
        factor,
        source=f"{host_profile.source} scaled to {device.name} ({reason}: x{factor:.4g})".strip(),
    )
    extra = {
        **scaled.extra,
        **notes,
        "latency_source": f"scaled ({reason})",
        "latency_factor": factor,
        "latency_factor_reason": reason,
        "scaled_from": host_profile.device,
    }
    return replace(scaled, extra=extra)


def latency_sources(edge: ModelProfile, cloud: ModelProfile) -> dict[str, dict[str, Any]]:
    """What a plan records about where each stage's latencies came from (see module docs)."""
    out: dict[str, dict[str, Any]] = {}
    for role, profile in (("edge", edge), ("cloud", cloud)):
        extra = profile.extra
        entry: dict[str, Any] = {
            "device": profile.device,
            "source": extra.get("latency_source", "unknown"),
            "factor": extra.get("latency_factor"),
        }
        for key in ("host_reference_model", "host_reference_ms", "host_reference_how", "kit_id"):
            if key in extra:
                entry[key] = extra[key]
        entry["summary"] = describe_latency_source(profile)
        out[role] = entry
    return out


def describe_latency_source(profile: ModelProfile) -> str:
    """One human line: measured on the device, or scaled by which factor from what."""
    extra = profile.extra
    reason = extra.get("latency_factor_reason")
    if reason == "measured-profile":
        ident = extra.get("device_identity", {})
        return (
            f"{extra.get('measured_name', profile.device)}: measured on the device with "
            f"profile-device ({ident.get('cpu_model')}, kit {extra.get('kit_id')}), no factor"
        )
    factor = float(extra.get("latency_factor", 1.0))
    if reason == "host-reference":
        return (
            f"{profile.device}: scaled x{factor:.3g} = published {extra['host_reference_model']} "
            f"/ this host's {extra['host_reference_ms']:.1f} ms ({extra['host_reference_how']})"
        )
    return f"{profile.device}: scaled x{factor:.3g} ({reason})"


DEFAULT_PROVIDER = "gcf"
#: Cloud Functions generation ``package-cloud`` packages and ``evaluate`` prices by default:
#: current ``gcloud functions deploy`` deploys 2nd gen (Cloud Run functions).
DEFAULT_GCF_GENERATION = 2


def pricing_provider(provider: str, gcf_generation: int = DEFAULT_GCF_GENERATION) -> str:
    """The price table of ``provider``: ``gcf`` becomes the table of ``gcf_generation``.

    Raises:
        ConfigError: a generation other than 1 or 2.
    """
    from edgelesspart.errors import ConfigError

    if gcf_generation not in (1, 2):
        raise ConfigError(f"Cloud Functions generation must be 1 or 2, got {gcf_generation!r}.")
    if provider == "gcf":
        return "gcf-1st-gen" if gcf_generation == 1 else "gcf-2nd-gen"
    return provider


def bundle_cloud_provider(bundle: str | Path) -> str:
    """The serverless provider the bundle was planned for: its cloud stage device's ``provider``.

    ``gcf`` for ``gcf-2gb`` (the default cloud device, and the paper's cost model), ``lambda`` for
    ``lambda-2gb``; :data:`DEFAULT_PROVIDER` when the device is not a bundled or readable one.
    ``package-cloud`` and ``evaluate`` both default to it, so what is priced is what is packaged.
    """
    from edgelesspart.runtime.manifest import load_manifest

    device = load_manifest(bundle, verify=False).plan.stages[-1].device
    try:
        provider = load_device(device).provider
    except ProfileError:
        provider = None
    return provider or DEFAULT_PROVIDER
