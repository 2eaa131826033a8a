"""One pipeline stage: a chain of LiteRT segments that decodes, computes, encodes and forwards.

:class:`StageWorker` is a plain class; the dispatcher turns it into a long-lived Ray actor
(``ray.remote(StageWorker)``), so this module needs neither Ray nor TensorFlow. The worker
receives the manifest and *its own* segment files (so a device needs no copy of the bundle):
as references into Ray's object store that the dispatcher owns
(:class:`~edgelesspart.pipeline.supervision.BlobStore`), fetched in the constructor so that a
restart -- after a kill or on a replacement node -- fetches them again, or as plain bytes
in-process. It checks each file against the SHA-256 the manifest lists and writes them to a
private temporary directory for the LiteRT interpreters. Between stages only wire frames
(:mod:`edgelesspart.runtime.codecs`: JSON header + tensor bytes) travel, never pickled objects.

A frame whose header says ``final`` (an early exit already answered) passes through untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError, ConfigError
from edgelesspart.pipeline.emulation import DeviceEmulation, sleep_s
from edgelesspart.runtime.codecs import decode_tensor, encode_tensor, require_codec
from edgelesspart.runtime.manifest import Manifest, SegmentSpec

RESULT_CODEC = "raw"
#: A learned bottleneck's label (:class:`~edgelesspart.model.bottleneck.BottleneckShape`).
BOTTLENECK_LABEL = re.compile(r"bn\d+s\d+")
#: Ray concurrency groups of a stage actor: one thread computes while the other sends (the
#: emulated link), so a node works on input i+1 while input i is on the wire.
CONCURRENCY_GROUPS = {"compute": 1, "link": 1}


def link_codec(name: str) -> str:
    """The runtime codec of a link codec choice: ``int8`` for a learned bottleneck's crossing
    (``bn8s1+int8``: the bottleneck's code sent with int8), else ``name`` itself.

    A crossing's encoder and decoder are inside the stages' segments (exported by
    :func:`~edgelesspart.pipeline.export.export_chain`); on the wire it is a codec like any other.
    """
    label, plus, codec = str(name).partition("+")
    if plus and BOTTLENECK_LABEL.fullmatch(label):
        return codec
    return str(name)


@dataclass(frozen=True)
class StageSpec:
    """What one stage actor runs and how.

    Attributes:
        name: stage name (``stage0`` ...).
        segments: the bundle segments it runs, in order.
        codec_out: codec of the link it sends on (``None`` for the last stage, which returns
            raw probabilities to the dispatcher).
        resource: Ray custom resource that pins it to a node (``None``: anywhere).
        emulation: device slowdown and link emulation.
        threshold: early exits of this stage answer at this top-1 confidence (``None``: off).
    """

    name: str
    segments: tuple[str, ...]
    codec_out: str | None = None
    resource: str | None = None
    emulation: DeviceEmulation = field(default_factory=DeviceEmulation)
    threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.segments:
            raise ConfigError(f"Stage {self.name!r} needs at least one segment.")
        if self.codec_out is not None:
            require_codec(self.codec_out)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"Stage threshold must be in [0, 1], got {self.threshold!r}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "segments": list(self.segments),
            "codec_out": self.codec_out,
            "resource": self.resource,
            "emulation": self.emulation.to_dict(),
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageSpec:
        """Build from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            segments=tuple(str(s) for s in data["segments"]),
            codec_out=data.get("codec_out"),
            resource=data.get("resource"),
            emulation=DeviceEmulation.from_dict(data.get("emulation")),
            threshold=data.get("threshold"),
        )

    def with_(self, **changes: Any) -> StageSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)


def stage_files(bundle_dir: str | Path, manifest: Manifest, spec: StageSpec) -> dict[str, bytes]:
    """The LiteRT files ``spec`` needs, read from the bundle (relative path -> bytes)."""
    from edgelesspart.runtime.manifest import safe_path

    by_name = {s.name: s for s in manifest.segments}
    files = {}
    for name in spec.segments:
        if name not in by_name:
            raise BundleError(f"Stage {spec.name!r} names unknown segment {name!r}.")
        rel = by_name[name].files.get("tflite")
        if rel is None:
            raise BundleError(f"Segment {name!r} has no tflite file; re-export the bundle.")
        files[rel] = safe_path(bundle_dir, rel).read_bytes()
    return files


def _write_checked(root: Path, manifest: Manifest, rel: str, data: bytes) -> Path:
    expected = manifest.files.get(rel)
    actual = hashlib.sha256(data).hexdigest()
    if expected != actual:
        raise BundleError(
            f"Stage file {rel!r} does not match manifest.json (expected "
            f"{str(expected)[:12]}…, got {actual[:12]}…); the dispatcher's bundle is corrupt."
        )
    path = root / Path(rel).name
    path.write_bytes(data)
    return path


class StageWorker:
    """Runs one stage. Built by Ray as an actor; callable directly in-process too.

    Args:
        manifest: the bundle manifest as a dict (``Manifest.to_dict()``).
        spec: the :class:`StageSpec` as a dict.
        files: relative path -> bytes of the segment files (see :func:`stage_files`), or the
            :meth:`~edgelesspart.pipeline.supervision.BlobStore.handles` of those bytes.
    """

    def __init__(
        self, manifest: dict[str, Any], spec: dict[str, Any], files: dict[str, Any]
    ) -> None:
        from edgelesspart.pipeline.supervision import resolve_files
        from edgelesspart.runtime.confidence import scorer_for
        from edgelesspart.runtime.segments import SegmentRunner

        files = resolve_files(files)

        self.manifest = Manifest.from_dict(manifest)
        self.scorer = scorer_for(self.manifest.serving)  # the exits' calibration, as the edge
        self.spec = StageSpec.from_dict(spec)
        by_name: dict[str, SegmentSpec] = {s.name: s for s in self.manifest.segments}
        self.runners = []
        # The files only live while the interpreters load them: an actor ends with ray.kill
        # (no __del__), so a directory kept for its lifetime was left behind on every node.
        # pool_size=1: each runner's one interpreter is built here and never again from the file.
        with tempfile.TemporaryDirectory(prefix=f"elp-{self.spec.name}-") as tmp:
            for name in self.spec.segments:
                seg = by_name[name]
                rel = seg.files["tflite"]
                if rel not in files:
                    raise BundleError(f"Stage {self.spec.name!r} was not given file {rel!r}.")
                path = _write_checked(Path(tmp), self.manifest, rel, files[rel])
                self.runners.append(SegmentRunner(path, seg, pool_size=1, num_threads=1))
        self.started = time.time()

    def ready(self) -> dict[str, Any]:
        """Who and where this worker is (the dispatcher waits on it after creating the actor)."""
        node = None
        try:  # inside a Ray actor: the id of the node it was placed on
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        return {
            "stage": self.spec.name,
            "pid": os.getpid(),
            "node_id": node,
            "started": self.started,
        }

    def _compute(
        self, x: np.ndarray, threshold: float | None = None
    ) -> tuple[np.ndarray, bool, str | None, dict[str, Any] | None]:
        """Run the segments; return (tensor to send, is it final probabilities?, exit name,
        the last exit's answer that did not reach the threshold, or ``None``).

        ``threshold`` (a request's override) replaces the stage's own when given.
        """
        first = True
        threshold = self.spec.threshold if threshold is None else threshold
        best = None
        for runner in self.runners:
            probs, boundary = runner(x, trusted=not first)
            first = False
            seg = runner.spec
            if probs is not None and seg.exit is not None:
                probs = self.scorer.calibrate(seg.exit, probs)
            if boundary is None:
                return probs, True, seg.exit, None
            if probs is not None:
                confidence = self.scorer.confidence(probs)  # every row must be confident
                if threshold is not None and float(np.min(confidence)) >= threshold:
                    return probs, True, seg.exit, None
                best = {"exit": seg.exit, "stage": self.spec.name,
                        "probs": np.asarray(probs, np.float64).reshape(-1).tolist()}  # fmt: skip
            x = boundary
        return x, False, None, best

    def forward(self, payload: bytes) -> tuple[bytes, dict[str, Any]]:
        """Decode ``payload``, run the stage and encode the result (padded to the emulated
        device's time). Sending is :meth:`send`, on the actor's link thread.

        Returns:
            ``(frame, stats)``: the frame for the next stage (or the dispatcher) and this call's
            measurements. The dispatcher calls it with ``num_returns=2`` so the frame goes on to
            the next stage while the stats come back to it.
        """
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        x, header = decode_tensor(payload)
        meta = dict(header.get("meta") or {})
        exit_name = meta.get("exit")
        passed_through = bool(meta.get("final"))
        if passed_through:
            out = payload
        else:
            y, final, exit_name, best = self._compute(x, meta.get("threshold"))
            codec = RESULT_CODEC if final else self.spec.codec_out or RESULT_CODEC
            meta.update({"final": final, "exit": exit_name, "by": self.spec.name})
            if best is not None:  # the last local exit: a cloud tail's degraded answer
                meta["best"] = best
            out = encode_tensor(np.ascontiguousarray(y), codec, meta=meta)
        wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
        pad, host_bound = self.spec.emulation.compute_pad_s(cpu, wall)
        slept = sleep_s(pad)
        stats = {
            "stage": self.spec.name,
            "seq": meta.get("seq"),
            "pid": os.getpid(),
            "host_wall_s": wall,
            "host_cpu_s": cpu,
            "pad_s": slept,
            "busy_s": wall + slept,
            "link_s": self.spec.emulation.link_s(len(out)),
            "bytes_in": len(payload),
            "bytes_out": len(out),
            "host_bound": host_bound,
            "passed_through": passed_through,
        }
        return out, stats

    def send(self, frame: bytes) -> bytes:
        """Hand ``frame`` on after the emulated link's time (no delay without link emulation)."""
        sleep_s(self.spec.emulation.link_s(len(frame)))
        return frame
