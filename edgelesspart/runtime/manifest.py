"""Bundle manifest: schema, (de)serialisation, path safety and file-hash verification.

A bundle is a directory holding ``manifest.json`` plus the files it lists (segments as
``.tflite`` and ``.keras``, the generated exit code, profile, evaluation). Every listed file has
a SHA-256 in ``manifest.files``; :func:`load_manifest` refuses a bundle whose files do not match,
and any path that is absolute or leaves the bundle directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgelesspart.errors import BundleError, PlanError
from edgelesspart.runtime.plan import Plan

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
FINAL_EXIT = "final"
#: the full model without exits (LiteRT), kept in a bundle to time its exits' saving against
REFERENCE_MODEL_PATH = "reference/full_model.tflite"


@dataclass(frozen=True)
class TensorSpec:
    """Shape (without the batch dimension) and dtype of a tensor."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def nbytes(self) -> int:
        """Bytes of one sample of this tensor."""
        size = 1
        for dim in self.shape:
            size *= int(dim)
        itemsize = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int32": 4}.get(
            self.dtype, 4
        )
        return size * itemsize

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        """Build from :meth:`to_dict` output."""
        return cls(
            shape=tuple(int(d) for d in data["shape"]), dtype=str(data.get("dtype", "float32"))
        )


@dataclass(frozen=True)
class InputSpec:
    """What the first segment takes, and how a raw image becomes that tensor.

    ``preprocessing`` keys: ``height``, ``width``, ``channels`` (1 or 3), ``scale`` and
    ``offset`` (``x * scale + offset`` applied to 0-255 pixels).
    """

    tensor: TensorSpec
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {**self.tensor.to_dict(), "preprocessing": dict(self.preprocessing)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """Build from :meth:`to_dict` output."""
        return cls(TensorSpec.from_dict(data), dict(data.get("preprocessing", {})))


@dataclass(frozen=True)
class SegmentSpec:
    """One executable unit: input tensor -> (exit probabilities?, boundary tensor?).

    ``exit`` names the exit head the segment ends in (``"final"`` for the model's classifier),
    or is ``None`` when the segment only hands its boundary on (a split without an exit).
    ``boundary`` is ``None`` for the last segment of the model. ``files`` maps a format
    (``tflite``, ``keras``) to a bundle-relative path. The LiteRT signature takes ``x`` and
    returns ``probs`` and/or ``boundary``.
    """

    name: str
    stage: str
    start: str
    end: str
    input: TensorSpec
    exit: str | None
    boundary: TensorSpec | None
    files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "stage": self.stage,
            "start": self.start,
            "end": self.end,
            "input": self.input.to_dict(),
            "exit": self.exit,
            "boundary": self.boundary.to_dict() if self.boundary else None,
            "files": dict(self.files),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentSpec:
        """Build from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            stage=str(data["stage"]),
            start=str(data["start"]),
            end=str(data["end"]),
            input=TensorSpec.from_dict(data["input"]),
            exit=None if data.get("exit") is None else str(data["exit"]),
            boundary=TensorSpec.from_dict(data["boundary"]) if data.get("boundary") else None,
            files={str(k): str(v) for k, v in data["files"].items()},
        )


@dataclass(frozen=True)
class ExitInfo:
    """An exit head: where it sits, which stage runs it, how it was made and how it did."""

    name: str
    cut_point: str
    stage: str
    segment: str
    source: str = "default"
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "cut_point": self.cut_point,
            "stage": self.stage,
            "segment": self.segment,
            "source": self.source,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitInfo:
        """Build from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            cut_point=str(data["cut_point"]),
            stage=str(data["stage"]),
            segment=str(data["segment"]),
            source=str(data.get("source", "default")),
            metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
        )


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime and the evaluator need to know about a bundle."""

    bundle_id: str
    model: dict[str, Any]
    input: InputSpec
    classes: tuple[str, ...]
    plan: Plan
    segments: tuple[SegmentSpec, ...]
    exits: tuple[ExitInfo, ...]
    files: dict[str, str]
    codec: dict[str, Any] = field(default_factory=lambda: {"name": "raw"})
    profile: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    #: How the services answer by default, chosen by the build on validation:
    #: ``{"threshold", "confidence", "temperatures": {exit: T}, ...}`` (see
    #: ``edgelesspart.runtime.confidence``). ``{}`` in bundles built before it existed: the
    #: services then use threshold 0.8 and uncalibrated max-softmax, as before.
    serving: dict[str, Any] = field(default_factory=dict)

    def stage_segments(self, stage: str) -> tuple[SegmentSpec, ...]:
        """The segments of one stage, in execution order."""
        return tuple(s for s in self.segments if s.stage == stage)

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Stage names in execution order."""
        return tuple(s.name for s in self.plan.stages)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the content of ``manifest.json``)."""
        return {
            "schema_version": self.schema_version,
            "bundle_id": self.bundle_id,
            "created": self.created,
            "model": dict(self.model),
            "input": self.input.to_dict(),
            "classes": list(self.classes),
            "plan": self.plan.to_dict(),
            "segments": [s.to_dict() for s in self.segments],
            "exits": [e.to_dict() for e in self.exits],
            "codec": dict(self.codec),
            "profile": dict(self.profile),
            "training": dict(self.training),
            "extra": dict(self.extra),
            "serving": dict(self.serving),
            "files": dict(self.files),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build from :meth:`to_dict` output, checking the schema version and required keys."""
        if not isinstance(data, dict):
            raise BundleError(f"manifest.json must hold a JSON object, got {type(data).__name__}.")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"Unsupported manifest schema_version {version!r}; this EdgeLessPart reads "
                f"version {SCHEMA_VERSION}. Rebuild the bundle with `edgelesspart build`."
            )
        try:
            manifest = cls(
                bundle_id=str(data["bundle_id"]),
                model=dict(data["model"]),
                input=InputSpec.from_dict(data["input"]),
                classes=tuple(str(c) for c in data["classes"]),
                plan=Plan.from_dict(data["plan"]),
                segments=tuple(SegmentSpec.from_dict(s) for s in data["segments"]),
                exits=tuple(ExitInfo.from_dict(e) for e in data["exits"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                codec=dict(data.get("codec", {"name": "raw"})),
                profile=dict(data.get("profile", {})),
                training=dict(data.get("training", {})),
                extra=dict(data.get("extra", {})),
                created=str(data.get("created", "")),
                serving=dict(data.get("serving") or {}),
            )
        except PlanError as exc:
            raise BundleError(f"manifest.json has a bad plan: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"manifest.json is malformed: missing or bad field {exc}.") from exc
        _check_consistency(manifest)
        return manifest


def _check_consistency(manifest: Manifest) -> None:
    if not manifest.segments:
        raise BundleError("manifest.json lists no segments.")
    stages = set(manifest.stage_names)
    for seg in manifest.segments:
        if seg.stage not in stages:
            raise BundleError(f"Segment {seg.name!r} names unknown stage {seg.stage!r}.")
        for rel in seg.files.values():
            if rel not in manifest.files:
                raise BundleError(f"Segment file {rel!r} has no hash in manifest.files.")
    if manifest.segments[-1].exit != FINAL_EXIT or manifest.segments[-1].boundary is not None:
        raise BundleError("The last segment must end in the final classifier with no boundary.")


def safe_path(bundle_dir: str | Path, relative: str) -> Path:
    """Resolve a bundle-relative path, refusing absolute paths and escapes from the bundle."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith(("/", "\\")) or ".." in pure.parts or not relative:
        raise BundleError(f"Bundle path {relative!r} is absolute or leaves the bundle; refused.")
    root = Path(bundle_dir).resolve()
    target = (root / Path(*pure.parts)).resolve()
    if root != target and root not in target.parents:
        raise BundleError(f"Bundle path {relative!r} resolves outside {root}; refused.")
    return target


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(bundle_dir: str | Path, relatives: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Map each bundle-relative path to its SHA-256."""
    return {rel: sha256_file(safe_path(bundle_dir, rel)) for rel in sorted(set(relatives))}


def verify_files(bundle_dir: str | Path, manifest: Manifest) -> None:
    """Raise :class:`BundleError` if any listed file is missing or its hash differs."""
    for rel, expected in manifest.files.items():
        path = safe_path(bundle_dir, rel)
        if not path.is_file():
            raise BundleError(f"Bundle file {rel!r} listed in manifest.json is missing.")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"Bundle file {rel!r} does not match its hash in manifest.json "
                f"(expected {expected[:12]}…, got {actual[:12]}…): the file was modified or "
                "corrupted. Rebuild or re-copy the bundle."
            )


def load_manifest(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    """Read ``manifest.json`` from a bundle directory, validate it and (by default) its files."""
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"No {MANIFEST_NAME} in {bundle}: not a bundle. Create one with `edgelesspart build`."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}.") from exc
    manifest = Manifest.from_dict(data)
    if verify:
        verify_files(bundle, manifest)
    return manifest


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` (sorted keys, 2-space indent) and return its path."""
    path = Path(bundle_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n", "utf-8")
    return path
