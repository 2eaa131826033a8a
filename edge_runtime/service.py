"""The edge service's model side: run the edge stage, offload pending rows, never lose a row.

:class:`EdgeService` knows nothing about HTTP. It runs the edge stage with the progressive
executor (rows confident at an edge exit are answered and never leave the device), sends only
the pending rows' boundary tensor to the cloud through an :class:`Offloader`, and when the
cloud fails answers those rows from their best local exit, marked ``degraded`` with the reason.

Cloud calls run in a small bounded pool: at most ``offload_workers`` calls are in flight, and a
request that finds the pool full is answered degraded at once. So a slow cloud can hold at most
that many request threads, and local early-exit answers keep flowing on the others.

Every cloud answer is validated field by field before it is merged; anything malformed makes
the rows degraded, never a 500. A cloud that refuses the call with a configuration error (401,
403, 404, 409) is reported loudly: a warning in the log, ``edgelesspart_offload_rejected_total``
by status, and the reason ``cloud rejected the call: <status>`` on every degraded answer.

With ``batch_max_rows > 0`` concurrent requests share one run of the edge stage
(:mod:`edgelesspart.runtime.batching`); each request still offloads its own pending rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.config import DEFAULT_CODEC, EdgeConfig
from edge_runtime.metrics import EdgeMetrics, bounded_label
from edgelesspart.errors import EdgeLessPartError, OffloadError, OffloadRejected, QueueDeadline
from edgelesspart.runtime.manifest import FINAL_EXIT

LOG = logging.getLogger("edgelesspart.edge")

#: ``dispatch`` ``auto``, one process: an edge stage that takes less than this per row on this
#: host (best of 7 runs, every segment run) runs on the event loop's thread. A hand-off to a
#: worker thread and back costs ~0.5 ms of CPU and two wake-ups: on the 2-core host (64 px small
#: CNN, 0.7-1.0 ms here) inline served 1.0-1.13 k answers/s against 0.87-0.97 k on the thread
#: pool, at 0.85-0.92 ms of CPU per request against 1.3-1.4 ms; a longer stage gains more from
#: running on both cores (MobileNetV2 at 96 px, 2.4 ms here: 0.42-0.43 k inline, 0.49 k pool).
INLINE_MAX_MS = 1.5
#: ``dispatch`` ``auto`` with ``workers > 1``: the processes already use the cores, so the loop
#: runs the stage itself unless a run would keep its other connections waiting this long.
INLINE_MAX_MS_WORKERS = 50.0
#: Inline dispatch decodes an image on the loop's thread only up to this many pixels (a 512 x
#: 512 PNG decodes in about a millisecond); a larger one, or one whose header cannot be read, is
#: decoded and run on a worker thread, so one big image never stalls the other connections.
INLINE_MAX_IMAGE_PIXELS = 512 * 512


@dataclass(frozen=True)
class InferenceResult:
    """Answers for every row of one request, in input order."""

    answers: list[dict[str, Any]]
    offloaded: int
    degraded: int
    timings: dict[str, float]


def make_offloader(config: EdgeConfig) -> Any:
    """Build the offloader ``config.cloud`` names (``None`` when the edge runs alone)."""
    if config.cloud is None:
        return None
    from edgelesspart.runtime.offload import HttpOffloader, LambdaOffloader, OffloadPolicy

    policy = OffloadPolicy(
        timeout_s=config.offload_timeout_s,
        connect_timeout_s=config.connect_timeout_s,
        retries=config.offload_retries,
        codec=config.codec or DEFAULT_CODEC,
        breaker_failures=config.breaker_failures,
        breaker_reset_s=config.breaker_reset_s,
    )
    if config.cloud.startswith("lambda://"):
        name = config.cloud.removeprefix("lambda://")
        return LambdaOffloader(
            name,
            endpoint_url=config.lambda_endpoint,
            region=config.region,
            policy=policy,
            secret=config.cloud_token,
        )
    return HttpOffloader(
        config.cloud.rstrip("/"),
        policy,
        token=config.cloud_token,
        max_request_bytes=config.offload_max_bytes,
        id_token_file=config.cloud_id_token_file,
    )


class EdgeService:
    """The edge stage of a bundle plus the way to the cloud for rows it cannot answer."""

    def __init__(
        self,
        bundle: Any,
        config: EdgeConfig,
        offloader: Any = None,
        metrics: EdgeMetrics | None = None,
    ) -> None:
        from edgelesspart.runtime.executor import ProgressiveExecutor

        self.bundle = bundle
        manifest = bundle.manifest
        config = config.with_bundle_codec(manifest.codec).with_bundle_threshold(manifest.serving)
        self.config = config
        self.offloader = offloader
        self.metrics = metrics or EdgeMetrics()
        self.stage = bundle.manifest.stage_names[0]
        self.executor = ProgressiveExecutor(bundle, self.stage, threshold=config.threshold)
        self.batcher = _make_batcher(self.executor, config)
        self._exits = frozenset(e.name for e in manifest.exits) | {FINAL_EXIT, "none"}
        self._stages = frozenset(manifest.stage_names)
        self._pool = ThreadPoolExecutor(config.offload_workers, thread_name_prefix="offload")
        self._slots = threading.BoundedSemaphore(config.offload_workers)
        policy = getattr(offloader, "policy", None)
        worst = getattr(policy, "max_total_s", None) or (config.offload_retries + 1) * (
            config.offload_timeout_s + config.connect_timeout_s
        )
        self.deadline_s = float(worst) + 1.0
        self.closed = False
        self._sent_lock = threading.Lock()
        self._sent_seen = 0
        self.inline, self.dispatch_reason = self._resolve_dispatch()

    @classmethod
    def load(
        cls, bundle_path: str | Path, config: EdgeConfig, offloader: Any = None
    ) -> EdgeService:
        """Load the bundle's first stage (only) and build the service."""
        from edgelesspart.runtime.bundle import Bundle
        from edgelesspart.runtime.manifest import load_manifest

        manifest = load_manifest(bundle_path, verify=False)
        config = config.with_bundle_codec(manifest.codec)
        bundle = Bundle.load(
            bundle_path,
            verify=config.verify,
            stages=[manifest.stage_names[0]],
            pool_size=config.pool_size,
            backend=config.backend,
        )
        if offloader is None:
            offloader = make_offloader(config)
        return cls(bundle, config, offloader)

    def _resolve_dispatch(self) -> tuple[bool, str]:
        """Whether hot requests run the edge stage on the caller's (the loop's) thread, and why."""
        config = self.config
        if self.batcher is not None:
            return False, "pool: dynamic batching is on (rows run in the batcher)"
        if config.dispatch != "auto":
            return config.dispatch == "inline", f"{config.dispatch}: set by dispatch"
        ms = self.edge_stage_ms()
        limit = INLINE_MAX_MS if config.workers <= 1 else INLINE_MAX_MS_WORKERS
        where = "one process" if config.workers <= 1 else f"{config.workers} worker processes"
        took = f"the edge stage takes {ms:.2f} ms per row here"
        if ms < limit:
            return True, f"inline: {took} (< {limit:g} ms, {where})"
        return False, f"pool: {took} (>= {limit:g} ms, {where})"

    def edge_stage_ms(self, repeats: int = 7) -> float:
        """The edge stage's time per row here, all segments run (ms, best of ``repeats``)."""
        spec = self.executor.input_spec
        x = np.zeros((1, *spec.shape), dtype=spec.dtype)
        warm = self.config.pool_size + 2  # each pooled interpreter's first run packs weights
        times = []
        for i in range(warm + repeats):
            t0 = time.perf_counter()
            self.executor.run(x, threshold=2.0, trusted=True)  # above 1: no row exits early
            if i >= warm:
                times.append((time.perf_counter() - t0) * 1000.0)
        return float(min(times))

    @property
    def cloud_kind(self) -> str | None:
        """``http``, ``lambda``, ``in-process`` or ``None`` (edge only)."""
        if self.offloader is None:
            return None
        if self.config.cloud:
            return self.config.cloud.split("://", 1)[0]
        return type(self.offloader).__name__

    def infer(self, x: np.ndarray, threshold: float | None = None) -> InferenceResult:
        """Answer every row of ``x``: locally when confident, else through the cloud.

        Raises:
            InputError: ``x`` does not match the bundle's input (shape, dtype, NaN/Inf).
            QueueDeadline: batching is on and the request could not start within
                ``queue_timeout_s`` (HTTP 429).
            EdgeLessPartError: a row was left without an answer (a server fault, never silent).
        """
        start = time.perf_counter()
        thr = self.config.threshold if threshold is None else threshold
        return self._complete(self._run_edge(x, thr), thr, start)

    def infer_async(
        self,
        x: np.ndarray | Callable[[], np.ndarray],
        threshold: float | None,
        done: Any,
        executor: Any,
    ) -> None:
        """Answer ``x`` without blocking the caller; ``done(result, error)`` gets the outcome.

        With batching on, the rows join the dynamic batcher's queue (deadline
        ``queue_timeout_s``) and ``done`` runs on the batcher's thread, or on ``executor`` when
        rows must wait for the cloud; with batching off the whole :meth:`infer` runs on
        ``executor``, or, when :attr:`inline` (``dispatch``), the edge stage and ``done`` run
        on the calling thread and only rows that wait for the cloud go to ``executor``.
        Invalid input raises here, before anything is queued (inline: it goes to ``done``).

        ``x`` may also be a callable that returns the batch (an image still to be decoded):
        it is called on ``executor``, in the same hand-off as the inference (batching off) or
        just before the rows join the batcher's queue, and what it raises goes to ``done``.

        Raises:
            InputError: ``x`` does not match the bundle's input.
            QueueDeadline: the rows queued ahead cannot be run within the deadline.
            ServiceClosed: the service is shutting down.
        """
        start = time.perf_counter()
        thr = self.config.threshold if threshold is None else threshold
        if self.inline and _cheap(x):  # here (the loop's thread); a cloud wait goes to a thread
            try:
                result = self._run_edge(x() if callable(x) else x, thr)
            except BaseException as exc:  # noqa: BLE001 - rendered by the caller
                done(None, exc)
                return
            if len(result.pending) and self.offloader is not None:
                executor.submit(_deliver, done, lambda: self._complete(result, thr, start))
            else:
                _deliver(done, lambda: self._complete(result, thr, start))
            return
        if self.batcher is None:
            queued, deadline = time.monotonic(), self.config.queue_timeout_s

            def run() -> InferenceResult:
                waited = time.monotonic() - queued
                if waited > deadline:  # the same queueing deadline as the batcher's
                    raise QueueDeadline(
                        f"The request waited {waited:.3f} s for a worker thread, more than its "
                        f"{deadline:g} s queueing deadline; retry later or send elsewhere."
                    )
                return self.infer(x() if callable(x) else x, threshold)

            executor.submit(_deliver, done, run)
            return
        if callable(x):  # decode on a worker thread, then queue the rows (errors to done)
            decode = x

            def decode_then_queue() -> None:
                try:
                    self.infer_async(decode(), threshold, done, executor)
                except BaseException as exc:  # noqa: BLE001 - rendered by the caller
                    done(None, exc)

            executor.submit(decode_then_queue)
            return
        from edgelesspart.runtime.executor import check_threshold
        from edgelesspart.runtime.preprocess import validate_input

        rows = validate_input(x, self.executor.input_spec)

        def finish(result: Any, error: BaseException | None) -> None:
            if error is not None:
                done(None, error)
            elif len(result.pending) and self.offloader is not None:  # blocking: off this thread
                executor.submit(_deliver, done, lambda: self._complete(result, thr, start))
            else:
                _deliver(done, lambda: self._complete(result, thr, start))

        self.batcher.submit_callback(
            rows, check_threshold(thr), finish, deadline_s=self.config.queue_timeout_s
        )

    def _complete(self, result: Any, thr: float, start: float) -> InferenceResult:
        """The answers of an edge-stage result: local ones, then the cloud's for pending rows."""
        edge_ms = (time.perf_counter() - start) * 1000.0
        answers: list[dict[str, Any] | None] = [a.to_dict() if a else None for a in result.answers]
        for answer in answers:
            if answer is not None:
                self._count_answer(answer)
        pending = [int(i) for i in np.asarray(result.pending).reshape(-1)]
        offload_ms, degraded = 0.0, 0
        if pending:
            t0 = time.perf_counter()
            cloud, reason = self._offload(result.boundary, thr)
            offload_ms = (time.perf_counter() - t0) * 1000.0
            for j, row in enumerate(pending):
                if cloud is not None:
                    answers[row] = _merge(result.best[row], cloud[j], offload_ms)
                    self._count_answer(answers[row])
                else:
                    answers[row] = self._degraded(result.best[row], reason)
                    degraded += 1
        missing = [i for i, a in enumerate(answers) if a is None]
        if missing:  # answers and rows must stay aligned: never drop a row silently
            raise EdgeLessPartError(
                f"Rows {missing[:10]} of {len(answers)} were left without an answer "
                f"(pending rows {pending[:10]}); this is a bug in the edge service."
            )
        total_ms = (time.perf_counter() - start) * 1000.0
        timings = {"edge_ms": edge_ms, "offload_ms": offload_ms, "total_ms": total_ms}
        return InferenceResult(answers, len(pending), degraded, timings)  # type: ignore[arg-type]

    def _run_edge(self, x: np.ndarray, threshold: float) -> Any:
        """The edge stage's result for ``x``: alone, or in a coalesced batch."""
        if self.batcher is None:
            return self.executor.run(x, threshold=threshold)
        from edgelesspart.runtime.executor import check_threshold
        from edgelesspart.runtime.preprocess import validate_input

        rows = validate_input(x, self.executor.input_spec)  # a bad request fails on its own
        return self.batcher.submit(
            rows, check_threshold(threshold), deadline_s=self.config.queue_timeout_s
        )

    def _count_answer(self, answer: dict[str, Any]) -> None:
        """Count an answer; exit and stage labels come from the manifest, never from a reply."""
        self.metrics.answers.inc(
            exit=bounded_label(answer.get("exit"), self._exits),
            stage=bounded_label(answer.get("stage"), self._stages),
        )

    def _offload(self, boundary: np.ndarray, threshold: float) -> tuple[list[dict] | None, str]:
        """Send the pending rows' boundary tensor; return (answers, "") or (None, reason)."""
        rows = int(boundary.shape[0])
        if self.offloader is None:
            return None, "no cloud configured: this edge service runs alone"
        if not self._slots.acquire(blocking=False):
            self.metrics.offloads.inc(outcome="busy")
            return None, (
                f"cloud busy: {self.config.offload_workers} offloads already in flight; "
                "answered from the best edge exit"
            )
        meta = {"bundle_id": self.bundle.bundle_id, "rows": rows}
        self.metrics.offloaded_rows.inc(rows)
        t0 = time.perf_counter()
        try:
            future = self._pool.submit(
                self.offloader.offload, boundary, threshold=threshold, meta=meta
            )
        except RuntimeError:
            self._slots.release()
            return None, "service is shutting down"
        future.add_done_callback(lambda _f: self._slots.release())
        outcome, answers, reason = self._wait(future, rows)
        self._count_bytes(boundary)
        self.metrics.offloads.inc(outcome=outcome)
        self.metrics.offload_latency.observe(time.perf_counter() - t0, outcome=outcome)
        return answers, reason

    def _count_bytes(self, boundary: np.ndarray) -> None:
        """Add the bytes the offloader put on the wire (raw tensor bytes if it cannot tell)."""
        stats = getattr(self.offloader, "stats", None)
        if stats is None:
            self.metrics.bytes_sent.inc(float(boundary.nbytes))
            return
        with self._sent_lock:
            total = int(stats().get("bytes_sent", 0))
            delta, self._sent_seen = max(0, total - self._sent_seen), max(total, self._sent_seen)
        self.metrics.bytes_sent.inc(float(delta))

    def _wait(self, future: Any, rows: int) -> tuple[str, list[dict] | None, str]:
        """(outcome label, answers or None, reason); outcome labels are a fixed small set."""
        from edgelesspart.runtime.offload import check_answers

        try:
            answers = future.result(timeout=self.deadline_s)
        except FutureTimeout:
            return "deadline", None, f"cloud did not answer within {self.deadline_s:.1f} s"
        except OffloadRejected as exc:
            return self._rejected(exc)
        except OffloadError as exc:
            return type(exc).__name__, None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # no row is ever lost: any transport failure degrades
            LOG.exception("offload failed unexpectedly")
            return "error", None, f"offload failed: {type(exc).__name__}: {exc}"
        try:  # whatever the offloader is, a malformed answer must not reach the client
            return "ok", check_answers({"answers": answers}, rows), ""
        except OffloadRejected as exc:
            return "bad_answer", None, f"OffloadRejected: {exc}"

    def _rejected(self, exc: OffloadRejected) -> tuple[str, None, str]:
        """A refusal: 4xx from the cloud is reported loudly (log, metric, explicit reason)."""
        status = exc.status
        if isinstance(status, int) and 400 <= status < 500:
            self.metrics.offload_rejected.inc(status=str(status))
            LOG.warning("cloud rejected the call: %s: %s", status, exc)
            return "rejected", None, f"cloud rejected the call: {status}: {exc}"
        return "OffloadRejected", None, f"OffloadRejected: {exc}"

    def _degraded(self, best: Any, reason: str) -> dict[str, Any]:
        kind = reason.split(":", 1)[0]
        self.metrics.degraded.inc(reason=bounded_label(kind, DEGRADED_KINDS))
        if best is None:
            self.metrics.answers.inc(exit="none", stage=self.stage)
            return {
                "label": None,
                "class_name": None,
                "confidence": 0.0,
                "exit": None,
                "stage": self.stage,
                "timings": {},
                "degraded": True,
                "reason": f"{reason}; the edge stage has no exit to answer from",
            }
        answer = best.to_dict()
        answer.update(degraded=True, reason=reason)
        self._count_answer(answer)
        return answer

    def close(self) -> None:
        """Stop accepting offloads (in-flight calls finish on their own) and batches."""
        self.closed = True
        if self.batcher is not None:
            self.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.offloader, "close", None)
        if close is not None:
            close()


#: The degraded-answer reasons counted by name; any other reason is counted as ``other``.
DEGRADED_KINDS = frozenset(
    {
        "OffloadTimeout",
        "OffloadUnavailable",
        "OffloadRejected",
        "OffloadError",
        "cloud rejected the call",
        "cloud busy",
        "no cloud configured",
        "service is shutting down",
        "offload failed",
    }
)


def _cheap(x: Any) -> bool:
    """Whether a batch (or an image still to decode) may be run on the caller's thread."""
    if not callable(x):
        return True
    pixels = getattr(x, "pixels", None)
    return pixels is not None and pixels <= INLINE_MAX_IMAGE_PIXELS


def _deliver(done: Any, compute: Any) -> None:
    """Call ``done(compute(), None)``, or ``done(None, error)`` when ``compute`` raises."""
    try:
        value = compute()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, which renders it
        done(None, exc)
        return
    done(value, None)


def _make_batcher(executor: Any, config: EdgeConfig) -> Any:
    """A dynamic batcher around ``executor.run`` when the config enables batching."""
    settings = config.batch_settings()
    if not settings.enabled:
        return None
    from edgelesspart.runtime.batching import DynamicBatcher, split_stage_result

    def run(x: np.ndarray, threshold: float) -> Any:
        return executor.run(x, threshold=threshold, trusted=True)

    return DynamicBatcher(run, split_stage_result, settings, name="edge-batch")


def _merge(edge_best: Any, cloud_answer: dict[str, Any], offload_ms: float) -> dict[str, Any]:
    """A cloud answer with the edge's segment timings in front of the cloud's."""
    answer = dict(cloud_answer)
    timings: dict[str, float] = {}
    edge_total = 0.0
    if edge_best is not None:
        edge_timings = dict(edge_best.timings)
        edge_total = float(edge_timings.pop("total", 0.0))
        timings.update(edge_timings)
    cloud_timings = cloud_answer.get("timings")
    cloud_timings = dict(cloud_timings) if isinstance(cloud_timings, dict) else {}
    cloud_timings.pop("total", None)
    timings.update(cloud_timings)
    timings["offload"] = offload_ms
    timings["total"] = edge_total + offload_ms
    answer["timings"] = timings
    answer.setdefault("degraded", False)
    answer.setdefault("reason", None)
    return answer
