"""Profiling kits as data: ``kit.json``, its slices and their integrity checks (TF-free).

A kit is written at build time (:func:`edgelesspart.profiling.kit.write_kit`) and measured on
the device (:func:`edgelesspart.runtime.device_profiler.profile_kit`); the layout is described in
:mod:`edgelesspart.runtime.device_profiler`. Every slice is listed with its sha256 and checked
before anything runs; no path may leave the kit directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelesspart.errors import BundleError

KIT_VERSION = 1
KIT_MANIFEST = "kit.json"
WHOLE = "whole"


@dataclass(frozen=True)
class KitCutPoint:
    """One candidate cut point of a kit: the slice that ends there and what the host measured.

    Attributes:
        name: cut point name (``"output"`` for the model's output).
        index: position among the candidates, 0-based.
        slice: kit-relative path of the ``.tflite`` stretch ending at this cut point.
        memory_bytes: prefix memory (weights + peak live activations, from the graph).
        weight_bytes: prefix parameter bytes.
        boundary_shape: shape of the cut tensor without the batch dimension.
        boundary_bytes: raw float32 bytes of that tensor for one sample.
    """

    name: str
    index: int
    slice: str
    memory_bytes: int
    weight_bytes: int
    boundary_shape: tuple[int, ...]
    boundary_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "index": self.index,
            "slice": self.slice,
            "memory_bytes": self.memory_bytes,
            "weight_bytes": self.weight_bytes,
            "boundary_shape": list(self.boundary_shape),
            "boundary_bytes": self.boundary_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KitCutPoint:
        """Build from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            index=int(data["index"]),
            slice=str(data["slice"]),
            memory_bytes=int(data["memory_bytes"]),
            weight_bytes=int(data["weight_bytes"]),
            boundary_shape=tuple(int(d) for d in data["boundary_shape"]),
            boundary_bytes=int(data["boundary_bytes"]),
        )


@dataclass(frozen=True)
class KitManifest:
    """``kit.json``: what a profiling kit holds (see the module docstring)."""

    kit_id: str
    model: str
    input_shape: tuple[int, ...]
    cut_points: tuple[KitCutPoint, ...]
    whole: str
    files: dict[str, str]
    created: str = ""
    version: int = KIT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "version": self.version,
            "kit_id": self.kit_id,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "cut_points": [cp.to_dict() for cp in self.cut_points],
            "whole": self.whole,
            "files": dict(self.files),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Any) -> KitManifest:
        """Build from :meth:`to_dict` output; raise :class:`BundleError` when malformed."""
        if not isinstance(data, dict):
            raise BundleError(f"{KIT_MANIFEST} must hold a JSON object.")
        if data.get("version") != KIT_VERSION:
            raise BundleError(
                f"Unsupported profiling kit version {data.get('version')!r}; this edgelesspart "
                f"reads version {KIT_VERSION}. Rewrite the kit with the same edgelesspart version."
            )
        try:
            kit = cls(
                kit_id=str(data["kit_id"]),
                model=str(data["model"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                cut_points=tuple(KitCutPoint.from_dict(c) for c in data["cut_points"]),
                whole=str(data["whole"]),
                files={str(k): str(v) for k, v in data["files"].items()},
                created=str(data.get("created", "")),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # e.g. files as a list
            raise BundleError(f"Malformed {KIT_MANIFEST}: missing or bad field {exc}.") from exc
        if not kit.cut_points:
            raise BundleError(f"{KIT_MANIFEST} lists no cut points.")
        return kit


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kit_path(root: Path, rel: str) -> Path:
    """``root / rel``, refusing paths that leave the kit directory."""
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"Kit file {rel!r} points outside the kit directory {root}.")
    return path


def load_kit(kit_dir: str | Path) -> KitManifest:
    """Read ``kit.json`` and check every listed file against its sha256.

    Raises:
        BundleError: no kit there, malformed manifest, or a missing/modified slice.
    """
    root = Path(kit_dir)
    manifest = root / KIT_MANIFEST
    if not manifest.is_file():
        raise BundleError(
            f"{root} is not a profiling kit (no {KIT_MANIFEST}). Write one with `edgelesspart "
            "build --profiling-kit DIR` or `edgelesspart profile-kit`."
        )
    try:
        kit = KitManifest.from_dict(json.loads(manifest.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest} is not valid JSON: {exc}.") from exc
    needed = {cp.slice for cp in kit.cut_points} | {kit.whole}
    for rel in sorted(needed):
        if rel not in kit.files:
            raise BundleError(f"Kit file {rel!r} has no sha256 in {KIT_MANIFEST}.")
        path = kit_path(root, rel)
        if not path.is_file():
            raise BundleError(f"Kit file {rel!r} listed in {KIT_MANIFEST} is missing.")
        if _sha256(path) != kit.files[rel]:
            raise BundleError(
                f"Kit file {rel!r} does not match its sha256 in {KIT_MANIFEST}: it was modified "
                "or truncated in transit. Copy the kit again."
            )
    return kit
