"""Widths, channel counts and the ``dynamic.json`` manifest of a width bundle (TF-free).

A *width* ``w`` keeps the first ``ceil(w * C)`` of a layer's ``C`` ordered channels. A width
bundle is a directory with ``dynamic.json`` and one LiteRT segment per stage and width. A stage
prunes only its inner channels, so every width of stage ``k`` takes and hands on the same
full-channel boundary tensors and each stage's width is independent. The manifest records, per
stage and width, the measured latency and the accuracy of the whole model with only that stage
narrowed, plus the accuracy at each uniform width, so a controller can trade latency for
accuracy from measured curves.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgelesspart.errors import BundleError, ConfigError
from edgelesspart.runtime.manifest import SegmentSpec, TensorSpec

SCHEMA_VERSION = 1
MANIFEST_NAME = "dynamic.json"
#: Widths every stage is exported at, widest first.
DEFAULT_WIDTHS = (1.0, 0.75, 0.5, 0.25)


def channels_at(full: int, width: float) -> int:
    """Channels a layer of ``full`` channels keeps at ``width`` (at least one)."""
    if not 0.0 < float(width) <= 1.0:
        raise ConfigError(f"A width must be in (0, 1], got {width!r}.")
    return max(1, math.ceil(float(width) * int(full) - 1e-9))


def width_key(width: float) -> str:
    """The JSON key of a width: ``1``, ``0.75``, ``0.5``, ``0.25``."""
    return f"{float(width):g}"


def check_widths(widths: Any) -> tuple[float, ...]:
    """Validate a width set; return it sorted widest first (1.0 must be in it)."""
    try:
        values = sorted({float(w) for w in widths}, reverse=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Widths must be numbers in (0, 1], got {widths!r}.") from exc
    if not values or values[0] != 1.0 or values[-1] <= 0.0:
        raise ConfigError(
            f"Widths must be in (0, 1] and include 1.0 (full width), got {widths!r}; "
            f"for example {', '.join(width_key(w) for w in DEFAULT_WIDTHS)}."
        )
    return tuple(values)


@dataclass(frozen=True)
class WidthSegment:
    """One stage at one width: its segment, measured latency and accuracy.

    ``latency_ms`` is the median LiteRT latency of one sample on the build host; ``accuracy`` is
    the test accuracy of the whole chain with only this stage at this width (others full).
    """

    width: float
    channels: int
    segment: SegmentSpec
    sha256: str
    latency_ms: float
    accuracy: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "width": self.width,
            "channels": self.channels,
            "segment": self.segment.to_dict(),
            "sha256": self.sha256,
            "latency_ms": self.latency_ms,
            "accuracy": self.accuracy,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WidthSegment:
        """Build from :meth:`to_dict` output."""
        return cls(
            width=float(data["width"]),
            channels=int(data["channels"]),
            segment=SegmentSpec.from_dict(data["segment"]),
            sha256=str(data["sha256"]),
            latency_ms=float(data["latency_ms"]),
            accuracy=float(data["accuracy"]),
        )


@dataclass(frozen=True)
class StageWidths:
    """Stage ``index`` of the chain: its full-width input and one segment per width."""

    index: int
    input: TensorSpec
    full_channels: int | None
    segments: tuple[WidthSegment, ...]

    @property
    def widths(self) -> tuple[float, ...]:
        """Widths this stage holds, widest first."""
        return tuple(s.width for s in self.segments)

    def at(self, width: float) -> WidthSegment:
        """The segment of ``width``; :class:`ConfigError` names the widths there are."""
        for seg in self.segments:
            if abs(seg.width - float(width)) < 1e-9:
                return seg
        raise ConfigError(
            f"Stage {self.index} has no width {width!r}; it holds "
            f"{', '.join(width_key(w) for w in self.widths)}."
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "index": self.index,
            "input": self.input.to_dict(),
            "full_channels": self.full_channels,
            "segments": [s.to_dict() for s in self.segments],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageWidths:
        """Build from :meth:`to_dict` output."""
        full = data.get("full_channels")
        return cls(
            index=int(data["index"]),
            input=TensorSpec.from_dict(data["input"]),
            full_channels=None if full is None else int(full),
            segments=tuple(WidthSegment.from_dict(s) for s in data["segments"]),
        )


@dataclass(frozen=True)
class DynamicManifest:
    """What a width bundle holds: stages x widths, curves, and how it was trained."""

    strategy: str
    widths: tuple[float, ...]
    stages: tuple[StageWidths, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    uniform_accuracy: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    #: Early-exit heads on stage boundaries (:mod:`edgelesspart.dynamic.exits`): dicts with
    #: ``stage``, ``name``, ``file``, ``sha256``, ``accuracy``, ``latency_ms`` (the head at
    #: full width) and optionally ``widths``: width key -> ``file``, ``sha256``, ``accuracy``,
    #: ``latency_ms`` of the head that answers when the stage runs at that width; ``()``: none.
    exits: tuple[dict[str, Any], ...] = ()
    #: ``{"threshold": t}``: the exits' default confidence threshold (``{}`` without exits).
    serving: dict[str, Any] = field(default_factory=dict)

    def exit_of(self, stage: int) -> dict[str, Any] | None:
        """The exit head after stage ``stage``, or ``None``."""
        for e in self.exits:
            if int(e["stage"]) == int(stage):
                return e
        return None

    def exit_head(self, stage: int, width: float) -> dict[str, Any] | None:
        """The exit head stage ``stage`` answers with at ``width`` (its own head for that
        width if it has one, else the stage's one head), or ``None`` without exits."""
        head = self.exit_of(stage)
        if head is None:
            return None
        own = (head.get("widths") or {}).get(width_key(width))
        return head if own is None else {**head, **own}

    def exit_files(self) -> list[tuple[str, str, str]]:
        """``(head name, file, sha256)`` of every exit head file, every width's."""
        out = []
        for head in self.exits:
            out.append((str(head["name"]), str(head["file"]), str(head["sha256"])))
            for key, own in sorted((head.get("widths") or {}).items()):
                out.append((f"{head['name']}@{key}", str(own["file"]), str(own["sha256"])))
        return out

    @property
    def full_accuracy(self) -> float:
        """Test accuracy with every stage at full width."""
        return float(self.uniform_accuracy.get(width_key(1.0), float("nan")))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "version": self.version,
            "strategy": self.strategy,
            "widths": list(self.widths),
            "stages": [s.to_dict() for s in self.stages],
            "preprocessing": dict(self.preprocessing),
            "classes": list(self.classes),
            "uniform_accuracy": dict(self.uniform_accuracy),
            "training": dict(self.training),
            "exits": [dict(e) for e in self.exits],
            "serving": dict(self.serving),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicManifest:
        """Build from :meth:`to_dict` output; refuses another schema version."""
        if int(data.get("version", -1)) != SCHEMA_VERSION:
            raise BundleError(
                f"{MANIFEST_NAME} has schema version {data.get('version')!r}; this EdgeLessPart "
                f"reads version {SCHEMA_VERSION}. Re-export the width bundle."
            )
        return cls(
            strategy=str(data["strategy"]),
            widths=check_widths(data["widths"]),
            stages=tuple(StageWidths.from_dict(s) for s in data["stages"]),
            preprocessing=dict(data.get("preprocessing", {})),
            classes=tuple(str(c) for c in data.get("classes", [])),
            uniform_accuracy={
                str(k): float(v) for k, v in data.get("uniform_accuracy", {}).items()
            },
            training=dict(data.get("training", {})),
            exits=tuple(dict(e) for e in data.get("exits", [])),
            serving=dict(data.get("serving", {})),
        )


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_manifest(manifest: DynamicManifest, directory: Path) -> Path:
    """Write ``dynamic.json`` into ``directory``."""
    out = Path(directory) / MANIFEST_NAME
    out.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return out


def segment_path(directory: Path, relative: str) -> Path:
    """Resolve a bundle-relative file, refusing absolute paths and escapes."""
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise BundleError(f"Segment path {relative!r} leaves the width bundle; re-export it.")
    return Path(directory) / rel


def load_manifest(directory: str | Path) -> DynamicManifest:
    """Read and verify ``dynamic.json``: every segment file present with its SHA-256.

    Raises:
        BundleError: no manifest, malformed JSON, wrong version, missing or altered file.
    """
    root = Path(directory)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"{root} is not a width bundle: {MANIFEST_NAME} is missing. Export one with "
            "experiments/bench_p9_dynamic.py or edgelesspart.dynamic.export.export_width_bundle."
        )
    try:
        manifest = DynamicManifest.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{path} is malformed: {type(exc).__name__}: {exc}") from exc
    for stage in manifest.stages:
        for seg in stage.segments:
            file = segment_path(root, seg.segment.files["tflite"])
            if not file.is_file() or sha256_file(file) != seg.sha256:
                raise BundleError(
                    f"Segment {seg.segment.name!r} ({file.name}) is missing or does not match "
                    f"its SHA-256 in {MANIFEST_NAME}; re-export the width bundle."
                )
    for name, rel, digest in manifest.exit_files():
        file = segment_path(root, rel)
        if not file.is_file() or sha256_file(file) != digest:
            raise BundleError(
                f"Exit head {name!r} ({file.name}) is missing or does not match its "
                f"SHA-256 in {MANIFEST_NAME}; run add_width_exits again."
            )
    return manifest
