"""Profiles as data: per cut point latency, memory and boundary size on one device.

Pure Python (no TensorFlow): the profiler in :mod:`edgelesspart.profiling.profiler` measures a
:class:`ModelProfile` on this host; :mod:`edgelesspart.profiling.devices` turns it into the profile
of
another device. The planner reads only these dataclasses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgelesspart.errors import ProfileError

PROFILE_VERSION = 1


@dataclass(frozen=True)
class CutPointProfile:
    """Measurements for the model prefix that ends at one cut point.

    Attributes:
        name: the cut point (layer name; ``"output"`` for the model's output).
        index: position among the cut points, 0-based, in model order.
        latency_ms: cumulative batch-1 latency from the input to this cut point.
        memory_bytes: peak memory of the prefix: weights up to here + peak live activations.
        weight_bytes: cumulative parameter bytes up to here.
        boundary_shape: shape of the cut tensor without the batch dimension.
        boundary_bytes: raw float32 bytes of that tensor for one sample.
        flops: cumulative multiply-accumulates x2 (estimate), 0 if unknown.
        encoded_bytes: codec name -> mean wire payload bytes of the cut tensor for one sample
            (frame header included), measured on real samples; empty when not measured. The
            planner reads it for link time (raw ``boundary_bytes`` otherwise).
        encoded_bytes_max: codec name -> the largest of those payloads; a hard payload limit
            (Lambda) is checked against it (against ``encoded_bytes`` when it is missing).
    """

    name: str
    index: int
    latency_ms: float
    memory_bytes: int
    weight_bytes: int
    boundary_shape: tuple[int, ...]
    boundary_bytes: int
    flops: int = 0
    encoded_bytes: dict[str, int] = field(default_factory=dict, hash=False)
    encoded_bytes_max: dict[str, int] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "index": self.index,
            "latency_ms": self.latency_ms,
            "memory_bytes": self.memory_bytes,
            "weight_bytes": self.weight_bytes,
            "boundary_shape": list(self.boundary_shape),
            "boundary_bytes": self.boundary_bytes,
            "flops": self.flops,
            **({"encoded_bytes": dict(self.encoded_bytes)} if self.encoded_bytes else {}),
            **(
                {"encoded_bytes_max": dict(self.encoded_bytes_max)}
                if self.encoded_bytes_max
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CutPointProfile:
        """Build from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            index=int(data["index"]),
            latency_ms=float(data["latency_ms"]),
            memory_bytes=int(data["memory_bytes"]),
            weight_bytes=int(data.get("weight_bytes", 0)),
            boundary_shape=tuple(int(d) for d in data.get("boundary_shape", ())),
            boundary_bytes=int(data["boundary_bytes"]),
            flops=int(data.get("flops", 0)),
            encoded_bytes={
                str(k): int(v) for k, v in dict(data.get("encoded_bytes") or {}).items()
            },
            encoded_bytes_max={
                str(k): int(v) for k, v in dict(data.get("encoded_bytes_max") or {}).items()
            },
        )


@dataclass(frozen=True)
class ModelProfile:
    """A model profiled on one device: one :class:`CutPointProfile` per cut point.

    The last entry is the whole model (name ``"output"``), so ``cut_points[-1].latency_ms`` is
    the full network's latency and ``cut_points[-1].memory_bytes`` its memory.
    """

    model: str
    device: str
    input_shape: tuple[int, ...]
    cut_points: tuple[CutPointProfile, ...]
    method: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = PROFILE_VERSION

    def __post_init__(self) -> None:
        if not self.cut_points:
            raise ProfileError(f"Profile of {self.model!r} on {self.device!r} has no cut points.")

    @property
    def total(self) -> CutPointProfile:
        """The whole model's entry (the last cut point)."""
        return self.cut_points[-1]

    def at(self, name: str) -> CutPointProfile:
        """The entry of cut point ``name``."""
        for cp in self.cut_points:
            if cp.name == name:
                return cp
        names = ", ".join(cp.name for cp in self.cut_points)
        raise ProfileError(f"Cut point {name!r} is not in the profile; known: {names}.")

    def scaled(self, device: str, latency_factor: float, source: str = "") -> ModelProfile:
        """This profile with every latency multiplied by ``latency_factor`` (memory unchanged)."""
        if latency_factor <= 0:
            raise ProfileError(f"Latency factor must be > 0, got {latency_factor}.")
        cps = tuple(
            replace(cp, latency_ms=cp.latency_ms * latency_factor) for cp in self.cut_points
        )
        return replace(
            self,
            device=device,
            cut_points=cps,
            method=f"{self.method} x{latency_factor:g}",
            source=source or self.source,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "version": self.version,
            "model": self.model,
            "device": self.device,
            "input_shape": list(self.input_shape),
            "method": self.method,
            "source": self.source,
            "extra": dict(self.extra),
            "cut_points": [cp.to_dict() for cp in self.cut_points],
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelProfile:
        """Build from :meth:`to_dict` output."""
        if not isinstance(data, dict):
            raise ProfileError(f"A profile must be a JSON object, got {type(data).__name__}.")
        if data.get("version", PROFILE_VERSION) != PROFILE_VERSION:
            raise ProfileError(f"Unsupported profile version {data.get('version')!r}.")
        try:
            return cls(
                model=str(data["model"]),
                device=str(data["device"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                cut_points=tuple(CutPointProfile.from_dict(c) for c in data["cut_points"]),
                method=str(data.get("method", "")),
                source=str(data.get("source", "")),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"Malformed profile: missing or bad field {exc}.") from exc

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON."""
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | Path) -> ModelProfile:
        """Read a profile written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ProfileError(f"Cannot read profile {path}: {exc}.") from exc
        return cls.from_dict(data)
