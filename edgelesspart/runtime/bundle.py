"""Load an exported bundle: validate its manifest and files, and build segment runners.

A service loads only the stages it runs (the edge service the first stage, the cloud function
the rest), so a cloud package may ship only its own segment files. With ``verify=True`` every
file the loaded stages need must be present with the SHA-256 the manifest lists; every other
listed file that is present is checked too (a tampered file is refused even if unused), and
when all stages are loaded every listed file must be present.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgelesspart.errors import BundleError
from edgelesspart.runtime import backends
from edgelesspart.runtime.manifest import (
    InputSpec,
    Manifest,
    SegmentSpec,
    TensorSpec,
    load_manifest,
    safe_path,
    sha256_file,
    verify_files,
)
from edgelesspart.runtime.segments import SegmentRunner

TFLITE = "tflite"


def _check_hash(bundle_dir: Path, manifest: Manifest, rel: str, required: bool) -> None:
    path = safe_path(bundle_dir, rel)
    if not path.is_file():
        if required:
            raise BundleError(f"Bundle file {rel!r} listed in manifest.json is missing.")
        return
    expected = manifest.files[rel]
    actual = sha256_file(path)
    if actual != expected:
        raise BundleError(
            f"Bundle file {rel!r} does not match its hash in manifest.json (expected "
            f"{expected[:12]}…, got {actual[:12]}…): the file was modified or corrupted. "
            "Rebuild or re-copy the bundle."
        )


def _verify_partial(bundle_dir: Path, manifest: Manifest, loaded: Sequence[SegmentSpec]) -> None:
    needed = {rel for seg in loaded for rel in seg.files.values()}
    for rel in manifest.files:
        _check_hash(bundle_dir, manifest, rel, required=rel in needed)


def _check_chain(manifest: Manifest) -> None:
    """Each segment takes what the one before hands on; exits have one probability per class."""
    expected: TensorSpec | None = manifest.input.tensor
    for seg in manifest.segments:
        if expected is None:
            raise BundleError(f"Segment {seg.name!r} follows a segment with no boundary output.")
        if tuple(seg.input.shape) != tuple(expected.shape):
            raise BundleError(
                f"Segment {seg.name!r} takes shape {tuple(seg.input.shape)} but receives "
                f"{tuple(expected.shape)} from before it; manifest.json is inconsistent."
            )
        expected = seg.boundary
    if len(manifest.classes) < 2:
        raise BundleError(f"manifest.json lists {len(manifest.classes)} classes; need >= 2.")


class Bundle:
    """A loaded bundle: its manifest and one :class:`SegmentRunner` per loaded segment.

    Build it with :meth:`load`. Runners exist only for the stages asked for.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        runners: dict[str, SegmentRunner],
        stages: tuple[str, ...],
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._runners = dict(runners)
        self.stages = stages

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        verify: bool = True,
        stages: Sequence[str] | None = None,
        pool_size: int = 4,
        num_threads: int = 1,
        backend: str = backends.DEFAULT_BACKEND,
    ) -> Bundle:
        """Read and validate a bundle directory and create runners for the chosen stages.

        Args:
            path: the bundle directory (holding ``manifest.json``).
            verify: check file hashes against the manifest.
            stages: stage names to load (default: all, in plan order).
            pool_size: interpreters per segment (= concurrent calls per segment).
            num_threads: CPU threads per interpreter.
            backend: ``litert`` (the ``.tflite`` files) or ``keras`` (the ``.keras`` files, with
                TensorFlow; see :mod:`edgelesspart.runtime.backends`).

        Raises:
            BundleError: missing/corrupt manifest or files, unknown stage, or a segment whose
                model does not match the manifest.
        """
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"Bundle directory {root} does not exist or is not a directory.")
        manifest = load_manifest(root, verify=False)
        _check_chain(manifest)
        names = manifest.stage_names if stages is None else tuple(dict.fromkeys(stages))
        unknown = [s for s in names if s not in manifest.stage_names]
        if unknown or not names:
            raise BundleError(
                f"Unknown stage(s) {unknown or list(names)}; this bundle has stages "
                f"{list(manifest.stage_names)}."
            )
        ordered = tuple(s for s in manifest.stage_names if s in names)
        loaded = [seg for seg in manifest.segments if seg.stage in ordered]
        if verify and set(ordered) == set(manifest.stage_names):
            verify_files(root, manifest)
        elif verify:
            _verify_partial(root, manifest, loaded)
        runners = {}
        fmt = backends.file_format(backend)
        for seg in loaded:
            rel = seg.files.get(fmt)
            if rel is None:
                raise BundleError(
                    f"Segment {seg.name!r} has no {fmt!r} file (formats: {sorted(seg.files)}); "
                    f"the {backend} backend needs one. Re-export with the {fmt} format."
                )
            runners[seg.name] = SegmentRunner(
                safe_path(root, rel),
                seg,
                pool_size=pool_size,
                num_threads=num_threads,
                backend=backend,
            )
        return cls(root, manifest, runners, ordered)

    @property
    def bundle_id(self) -> str:
        """The manifest's bundle id (checked on every offloaded tensor)."""
        return self.manifest.bundle_id

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, indexed by label."""
        return self.manifest.classes

    @property
    def input_spec(self) -> InputSpec:
        """What the model's first segment takes, and how images are preprocessed."""
        return self.manifest.input

    def segments(self, stage: str) -> tuple[SegmentSpec, ...]:
        """The segments of ``stage`` in execution order.

        Raises:
            BundleError: ``stage`` is not a stage of this bundle.
        """
        if stage not in self.manifest.stage_names:
            known = list(self.manifest.stage_names)
            raise BundleError(f"Unknown stage {stage!r}; this bundle has stages {known}.")
        return self.manifest.stage_segments(stage)

    def runner(self, segment: str) -> SegmentRunner:
        """The runner of a loaded segment.

        Raises:
            BundleError: the segment does not exist or its stage was not loaded.
        """
        try:
            return self._runners[segment]
        except KeyError:
            raise BundleError(
                f"Segment {segment!r} is not loaded; loaded segments are "
                f"{list(self._runners)} (stages {list(self.stages)})."
            ) from None

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, bundle_id={self.bundle_id!r}, stages={self.stages})"
