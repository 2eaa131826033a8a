"""The cloud part: the TF-free logic every cloud entry point shares.

The Lambda handler, the HTTP entry and the local servers are thin wrappers around one
:class:`CloudPart`: it loads only the stages after the first (the cloud segments), decodes an
offloaded boundary tensor in any codec, checks it was made for this bundle, and runs the
remaining stages with early exits until the final classifier. Errors a client can cause come
back as ``{"error": {"type", "message"}, "status": 4xx}`` from :meth:`CloudPart.handle_event`,
or as :class:`~edgelesspart.errors.EdgeLessPartError` from :meth:`CloudPart.continue_request`
(map them with :func:`status_for`); a fault of the cloud itself (a broken bundle, a segment
failing on validated input) is a 500 with a correlation id that is also in the log.

The decode bound is tied to the bundle: before anything is decompressed or decoded, the
header's shape and dtype must match the first cloud segment's input spec (the bundle's boundary
tensor) and its batch may not exceed ``max_rows``, so a few hundred compressed bytes cannot make
the cloud allocate more than ``max_rows`` boundary rows.

With :class:`~edgelesspart.runtime.batching.BatchSettings` enabled, concurrent requests are
coalesced into one run of the cloud stages (see :mod:`edgelesspart.runtime.batching`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import (
    BundleError,
    BundleMismatchError,
    CodecError,
    ConfigError,
    EdgeLessPartError,
    InputError,
    ServiceClosed,
)
from edgelesspart.runtime import codecs
from edgelesspart.runtime.batching import BatchSettings, DynamicBatcher, split_list
from edgelesspart.runtime.bundle import Bundle
from edgelesspart.runtime.confidence import serving_threshold
from edgelesspart.runtime.executor import Answer, ProgressiveExecutor, check_threshold
from edgelesspart.runtime.manifest import load_manifest
from edgelesspart.runtime.preprocess import validate_input
from edgelesspart.runtime.wire import MAX_REQUEST_ROWS

#: Largest decoded tensor the cloud part accepts (bytes), whatever the bundle.
MAX_TENSOR_BYTES = 64 * 2**20
#: Most boundary rows one request may carry (the edge's offloaders split larger offloads).
MAX_ROWS = MAX_REQUEST_ROWS
#: dtypes an offloaded boundary tensor may have (cast to the segment's dtype after decoding).
BOUNDARY_DTYPES = {"float32": 4, "float16": 2, "float64": 8}
LOG = logging.getLogger("edgelesspart.cloud")


def status_for(exc: EdgeLessPartError) -> int:
    """The HTTP status of an error: 409 wrong bundle, 400 a bad request, 503 shutting down,
    500 a cloud fault."""
    if isinstance(exc, BundleMismatchError):
        return 409
    if isinstance(exc, ServiceClosed):  # its batcher is closed: retry, nothing to log
        return 503
    if isinstance(exc, (InputError, CodecError, ConfigError)):
        return 400
    return 500


def error_response(exc: EdgeLessPartError) -> dict[str, Any]:
    """The JSON error body every cloud entry point returns for ``exc``.

    A 500 (a fault of the cloud, not the caller) is logged with its traceback under a
    correlation id, and the body names that id instead of the internal details.
    """
    status = status_for(exc)
    message = str(exc)
    if status == 500:
        correlation = uuid.uuid4().hex[:16]
        LOG.error(
            "internal error [%s]: %s: %s",
            correlation,
            type(exc).__name__,
            exc,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        message = f"Internal error in the cloud part (correlation id {correlation})."
    return {"error": {"type": type(exc).__name__, "message": message}, "status": status}


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


class CloudPart:
    """Load the cloud stage(s) of a bundle and continue offloaded tensors.

    Args:
        bundle_path: the bundle directory (a cloud package may hold only its own segments).
        verify: check file hashes against the manifest.
        pool_size: interpreters per segment (= concurrent requests per segment).
        stages: stages to run (default: the stages the plan marks ``tier: cloud``, else every
            stage after the first).
        threshold: default threshold when neither the call nor the tensor's meta sets one;
            ``None``: the manifest's ``serving.threshold`` (chosen by the build on validation).
        max_bytes: largest decoded tensor accepted, whatever the header says.
        max_rows: most boundary rows in one request (checked in the header, before decoding).
        batch: dynamic batching of concurrent requests (default: off).

    Raises:
        BundleError: the bundle is invalid, has a single stage, or the chosen stages do not end
            in the final classifier.
    """

    def __init__(
        self,
        bundle_path: str | Path,
        *,
        verify: bool = True,
        pool_size: int = 4,
        stages: Sequence[str] | None = None,
        threshold: float | None = None,
        max_bytes: int = MAX_TENSOR_BYTES,
        max_rows: int = MAX_ROWS,
        batch: BatchSettings | None = None,
    ) -> None:
        start = time.perf_counter()
        if stages is None:
            manifest = load_manifest(bundle_path, verify=False)
            names = manifest.stage_names
            if len(names) < 2:
                raise BundleError(
                    f"Bundle has the single stage {list(names)}: there is no cloud part to load."
                )
            # a chain of edge nodes with a cloud tail marks its cloud stage(s) tier: cloud
            marked = [s.name for s in manifest.plan.stages if s.options.get("tier") == "cloud"]
            stages = marked or names[1:]
        self.bundle = Bundle.load(bundle_path, verify=verify, stages=stages, pool_size=pool_size)
        if threshold is None:
            threshold = serving_threshold(self.bundle.manifest.serving)
        self.executors = [
            ProgressiveExecutor(self.bundle, s, threshold) for s in self.bundle.stages
        ]
        self.threshold = self.executors[0].threshold
        self.max_bytes = int(max_bytes)
        self.max_rows = int(max_rows)
        if not self.executors[-1].is_final:
            raise BundleError(
                f"Cloud stages {list(self.bundle.stages)} do not end in the final classifier; "
                "load every stage after the split."
            )
        self._lock = threading.Lock()
        self._cold = True
        self.batcher: DynamicBatcher | None = None
        if batch is not None and batch.enabled:
            self.batcher = DynamicBatcher(self.run, split_list, batch, name="cloud-batch")
        self.init_ms = _ms(start)

    @property
    def bundle_id(self) -> str:
        """The bundle id every offloaded tensor must carry in ``meta.bundle_id``."""
        return self.bundle.bundle_id

    def close(self) -> None:
        """Stop the batching workers (if any) after the queued requests."""
        if self.batcher is not None:
            self.batcher.close()

    def answer(self, x: np.ndarray, threshold: float | None = None) -> list[Answer]:
        """Like :meth:`run`, but through the dynamic batcher when batching is on.

        Raises:
            InputError: ``x`` does not match the first cloud segment's input.
        """
        if self.batcher is None:
            return self.run(x, threshold)
        thr = self.threshold if threshold is None else check_threshold(threshold)
        x = validate_input(x, self.executors[0].input_spec)  # one bad request fails alone
        return self.batcher.submit(x, thr)

    def run(self, x: np.ndarray, threshold: float | None = None) -> list[Answer]:
        """Run the cloud stages on a boundary batch; every row gets an answer.

        Raises:
            InputError: ``x`` does not match the first cloud segment's input.
        """
        thr = self.threshold if threshold is None else check_threshold(threshold)
        current = validate_input(x, self.executors[0].input_spec)
        rows = np.arange(len(current))
        answers: list[Answer | None] = [None] * len(rows)
        for executor in self.executors:
            result = executor.run(current, thr)
            for i, answer in enumerate(result.answers):
                if answer is not None:
                    answers[int(rows[i])] = answer
            if not len(result.pending):
                break
            rows, current = rows[result.pending], result.boundary
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:
            raise BundleError(f"The cloud stages left rows {missing[:10]} without an answer.")
        return [a for a in answers if a is not None]

    def _check_meta(self, header: dict[str, Any]) -> dict[str, Any]:
        meta = header.get("meta") or {}
        if not isinstance(meta, dict):
            raise InputError(f"Tensor header 'meta' must be a JSON object, got {meta!r}.")
        got = meta.get("bundle_id")
        if got != self.bundle_id:
            raise BundleMismatchError(
                f"Tensor was made for bundle {got!r}, but this cloud part serves bundle "
                f"{self.bundle_id!r}. Deploy the same bundle on the edge and in the cloud "
                "(and send meta.bundle_id)."
            )
        return meta

    def _check_shape(self, header: dict[str, Any]) -> int:
        """Refuse a header whose tensor is not ``(rows, *boundary)`` of a float dtype; the bytes.

        Returns:
            The decoded size the header announces, the bound passed to the decoder.
        """
        spec = self.executors[0].input_spec
        want = tuple(int(d) for d in spec.shape)
        shape, dtype = header.get("shape"), header.get("dtype")
        ok = (
            isinstance(shape, list)
            and len(shape) == len(want) + 1
            and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            and tuple(shape[1:]) == want
        )
        if not ok:
            got = tuple(shape) if isinstance(shape, list) else shape
            raise InputError(
                f"Expected a boundary tensor of shape (N, {', '.join(map(str, want))}) "
                f"{spec.dtype} (this bundle's cloud input), got shape {got!r:.80} in the tensor "
                "header; the edge and the cloud must serve the same bundle."
            )
        if not 1 <= shape[0] <= self.max_rows:
            raise InputError(
                f"Tensor has {shape[0]} rows; this cloud part accepts 1..{self.max_rows} per "
                "request (the edge splits larger offloads)."
            )
        if dtype not in BOUNDARY_DTYPES:
            raise InputError(
                f"Tensor dtype {dtype!r:.40} is not a boundary dtype; expected one of "
                f"{sorted(BOUNDARY_DTYPES)}."
            )
        return shape[0] * math.prod(want) * BOUNDARY_DTYPES[dtype]

    def continue_request(self, payload: bytes, *, threshold: float | None = None) -> dict:
        """Decode an offloaded tensor, check its bundle id and run the cloud stages.

        Args:
            payload: an encoded tensor (any codec) whose ``meta.bundle_id`` is this bundle's.
            threshold: overrides ``meta.threshold``, which overrides the default.

        Returns:
            ``{"answers": [answer dicts], "timings": {"decode", "run", "total"}, "bundle_id"}``.

        Raises:
            CodecError: corrupt payload or unknown codec. BundleError: bundle id mismatch.
            InputError: wrong shape (checked in the header, before decoding) or values.
            ConfigError: bad threshold.
        """
        start = time.perf_counter()
        if not isinstance(payload, (bytes, bytearray, memoryview)) or not len(payload):
            raise InputError("Expected a non-empty encoded tensor (bytes), got nothing usable.")
        data = bytes(payload)
        header = codecs.read_header(data, max_bytes=self.max_bytes)
        meta = self._check_meta(header)
        limit = min(self.max_bytes, self._check_shape(header))
        array, _ = codecs.decode_tensor(data, max_bytes=limit)
        decode_ms = _ms(start)
        if threshold is None:
            threshold = meta.get("threshold", self.threshold)
        run_start = time.perf_counter()
        answers = self.answer(array, check_threshold(threshold))
        timings = {"decode": decode_ms, "run": _ms(run_start), "total": _ms(start)}
        return {
            "answers": [a.to_dict() for a in answers],
            "timings": timings,
            "bundle_id": self.bundle_id,
        }

    def _take_cold(self) -> bool:
        with self._lock:
            cold, self._cold = self._cold, False
        return cold

    def handle_event(self, event: dict) -> dict:
        """Answer a Lambda-style JSON event ``{"tensor_b64": str, "threshold": float?}``.

        Returns:
            ``{"answers", "bundle_id", "cold_start", "init_ms", "timings"}``, or
            ``{"error": {"type", "message"}, "status": 4xx}`` for a bad request.
        """
        cold = self._take_cold()
        try:
            if not isinstance(event, dict):
                raise InputError(
                    f"Expected a JSON object event with 'tensor_b64', got {type(event).__name__}."
                )
            encoded = event.get("tensor_b64")
            if not isinstance(encoded, str) or not encoded:
                raise InputError(
                    "Event needs 'tensor_b64': the base64 of an encoded tensor "
                    f"(got {type(encoded).__name__})."
                )
            result = self.continue_request(
                codecs.from_base64(encoded), threshold=event.get("threshold")
            )
        except EdgeLessPartError as exc:
            return error_response(exc)
        return {**result, "cold_start": cold, "init_ms": self.init_ms}

    def __repr__(self) -> str:
        return f"CloudPart(bundle_id={self.bundle_id!r}, stages={self.bundle.stages})"
