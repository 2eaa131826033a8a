"""Dynamic batching: coalesce concurrent requests into one executor run (TF-free).

Like the dynamic batchers of Triton and TF Serving: request threads :meth:`DynamicBatcher.submit`
their (already validated) rows and block; a worker thread takes the oldest waiting request,
adds every other waiting request with the same threshold while the batch stays within
``max_rows``, waits up to ``max_delay_us`` microseconds for more if the batch is not full, runs
the whole batch once, and hands each request its own slice of the result. Exit decisions stay
per row (the executor decides row by row), so a request's answers do not depend on what it was
batched with; only the threshold must match, which is why requests with different thresholds
never share a batch.

``max_rows = 0`` turns batching off (the caller runs each request itself); ``max_delay_us = 0``
never waits on purpose but still coalesces the requests that queued while the previous batch
ran, which costs a lone request nothing. A request larger than ``max_rows`` runs alone.

Why it pays: a LiteRT invoke has a fixed cost per call, and on a small CNN or a MobileNetV2
edge part one call on 16 rows costs far less than 16 calls on one row; the HTTP threads parse
requests while the worker runs the previous batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from edgelesspart.errors import ConfigError, EdgeLessPartError, QueueDeadline, ServiceClosed

R = TypeVar("R")

__all__ = ["BatchSettings", "DynamicBatcher"]


@dataclass(frozen=True)
class BatchSettings:
    """How a service coalesces requests.

    Attributes:
        max_rows: most rows in one executor run (0 = batching off).
        max_delay_us: longest wait for more requests once one is waiting, in microseconds.
        workers: batches run in parallel (each worker runs one batch at a time).
    """

    max_rows: int = 0
    max_delay_us: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        for name, low in (("max_rows", 0), ("max_delay_us", 0), ("workers", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"Batching {name} must be an int >= {low}, got {value!r}.")
        if self.max_delay_us > 1_000_000:
            raise ConfigError(
                f"Batching max_delay_us is {self.max_delay_us}; keep it under 1 s (1000000 us)."
            )

    @property
    def enabled(self) -> bool:
        """Whether requests are coalesced at all."""
        return self.max_rows > 0

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready dict."""
        return {
            "max_rows": self.max_rows,
            "max_delay_us": self.max_delay_us,
            "workers": self.workers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSettings:
        """Inverse of :meth:`to_dict`."""
        return cls(
            **{k: int(data[k]) for k in ("max_rows", "max_delay_us", "workers") if k in data}
        )


class _Request:
    __slots__ = ("x", "threshold", "done", "result", "error", "callback", "deadline")

    def __init__(
        self,
        x: np.ndarray,
        threshold: float,
        callback: Callable[[Any, BaseException | None], None] | None = None,
        deadline: float | None = None,
    ) -> None:
        self.x = x
        self.threshold = threshold
        self.callback = callback
        self.done = None if callback is not None else threading.Event()
        self.deadline = deadline  # time.monotonic() by which its batch must start, or None
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any, error: BaseException | None) -> None:
        """Hand the request its result (or error): wake the waiting thread or call back."""
        if self.callback is not None:
            self.callback(result, error)
            return
        self.result, self.error = result, error
        self.done.set()  # type: ignore[union-attr]


class DynamicBatcher(Generic[R]):
    """Run ``run(x, threshold)`` on coalesced batches; split the result back per request.

    Args:
        run: runs a batch ``(N, ...)`` at one threshold and returns its result.
        split: cuts a batch result into per-request results, given the requests' row counts.
        settings: batch size, queue delay and workers (must be enabled).
        name: thread name prefix.

    Thread-safe. :meth:`close` stops the workers after the queued requests.

    Deadlines: a request submitted with ``deadline_s`` must *start* (its batch must begin to
    run) within that many seconds, as in Triton's queue policy. One whose wait, estimated from
    the rows queued ahead of it and the measured cost per row, is already longer is refused at
    once, and one still queued when its deadline passes is refused then; both with
    :class:`~edgelesspart.errors.QueueDeadline` (HTTP 429). Requests that can be served in
    time are never refused, however many wait.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray, float], R],
        split: Callable[[R, Sequence[int]], Sequence[R]],
        settings: BatchSettings,
        name: str = "batcher",
    ) -> None:
        if not settings.enabled:
            raise ConfigError("DynamicBatcher needs max_rows >= 1 (0 means: do not batch).")
        self.settings = settings
        self._run, self._split = run, split
        self._delay_s = settings.max_delay_us / 1e6
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stats = {"batches": 0, "requests": 0, "rows": 0, "largest": 0, "expired": 0}
        self._queued_rows = 0
        self._row_s = 0.0  # moving average of run seconds per row (0 until the first batch)
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{k}", daemon=True)
            for k in range(settings.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, x: np.ndarray, threshold: float, deadline_s: float | None = None) -> R:
        """Queue ``x`` (validated rows) and block until its slice of a batch result is ready.

        Raises:
            ServiceClosed: the batcher is closed (the service is shutting down).
            QueueDeadline: the request could not start within ``deadline_s``.
            Exception: whatever ``run`` raised for the batch this request was in.
        """
        request = _Request(x, float(threshold))
        self._enqueue(request, deadline_s)
        request.done.wait()  # type: ignore[union-attr]
        if request.error is not None:
            raise request.error
        return request.result

    def submit_callback(
        self,
        x: np.ndarray,
        threshold: float,
        callback: Callable[[Any, BaseException | None], None],
        deadline_s: float | None = None,
    ) -> None:
        """Queue ``x`` without blocking; ``callback(result, error)`` runs on a worker thread.

        For event-loop servers: the callback must be quick and thread-safe (e.g. schedule the
        reply with ``loop.call_soon_threadsafe``).

        Raises:
            ServiceClosed: the batcher is closed.
            QueueDeadline: the rows queued ahead cannot be run within ``deadline_s``.
        """
        self._enqueue(_Request(x, float(threshold), callback), deadline_s)

    def expected_wait_s(self) -> float:
        """Estimated seconds before a request queued now starts (queued rows x cost per row)."""
        with self._cond:
            return self._queued_rows * self._row_s / self.settings.workers

    def _enqueue(self, request: _Request, deadline_s: float | None) -> None:
        with self._cond:
            if self._closed:
                raise ServiceClosed("The batcher is closed; the service is shutting down.")
            if deadline_s is not None:
                wait = self._queued_rows * self._row_s / self.settings.workers
                if wait > deadline_s:
                    self._stats["expired"] += 1
                    raise QueueDeadline(
                        f"{self._queued_rows} rows are queued ahead (about {wait:.2f} s of work), "
                        f"more than this request's {deadline_s:g} s queueing deadline; retry "
                        "later or send to another replica."
                    )
                request.deadline = time.monotonic() + deadline_s
            self._queue.append(request)
            self._queued_rows += len(request.x)
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        """Batches run, requests and rows served, and the largest batch so far (rows)."""
        with self._cond:
            return dict(self._stats)

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking requests; the workers finish what is queued, then exit."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    # ----------------------------------------------------------------------------- workers

    def _work(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._execute(batch)

    def _collect(self) -> list[_Request] | None:
        """The next batch: the oldest request plus compatible ones, waiting up to the delay."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            self._queued_rows -= len(first.x)
            batch, rows = [first], len(first.x)
            deadline = time.monotonic() + self._delay_s
            while rows < self.settings.max_rows:
                rows = self._take_compatible(batch, rows)
                left = deadline - time.monotonic()
                if rows >= self.settings.max_rows or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            return batch

    def _take_compatible(self, batch: list[_Request], rows: int) -> int:
        """Move queued requests with the batch's threshold that still fit into ``batch``."""
        limit, threshold = self.settings.max_rows, batch[0].threshold
        kept: deque[_Request] = deque()
        while self._queue:
            request = self._queue.popleft()
            if request.threshold == threshold and rows + len(request.x) <= limit:
                batch.append(request)
                rows += len(request.x)
                self._queued_rows -= len(request.x)
            else:
                kept.append(request)
        self._queue.extend(kept)
        if kept:
            self._cond.notify()  # another worker may take what this batch cannot
        return rows

    def _expire(self, batch: list[_Request]) -> list[_Request]:
        """Refuse the requests whose queueing deadline has passed; return the others."""
        now = time.monotonic()
        late = [r for r in batch if r.deadline is not None and now > r.deadline]
        if not late:
            return batch
        with self._cond:
            self._stats["expired"] += len(late)
        for request in late:
            waited = now - request.deadline  # type: ignore[operator]
            request.finish(None, QueueDeadline(
                f"The request waited in the batch queue past its deadline (by {waited:.3f} s); "
                "the service is saturated, retry later or send to another replica."
            ))  # fmt: skip
        return [r for r in batch if r.deadline is None or now <= r.deadline]

    def _execute(self, batch: list[_Request]) -> None:
        batch = self._expire(batch)
        if not batch:
            return
        sizes = [len(r.x) for r in batch]
        start = time.perf_counter()
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([r.x for r in batch])
            parts = self._split(self._run(x, batch[0].threshold), sizes)
            if len(parts) != len(batch):
                raise EdgeLessPartError(
                    f"Batch split returned {len(parts)} parts for {len(batch)} requests."
                )
        except BaseException as exc:  # every request of the batch gets the error
            for request in batch:
                request.finish(None, exc)
            return
        row_s = (time.perf_counter() - start) / sum(sizes)
        with self._cond:
            stats = self._stats
            stats["batches"] += 1
            stats["requests"] += len(batch)
            stats["rows"] += sum(sizes)
            stats["largest"] = max(stats["largest"], sum(sizes))
            self._row_s = row_s if not self._row_s else 0.8 * self._row_s + 0.2 * row_s
        for request, part in zip(batch, parts):
            request.finish(part, None)


def split_list(items: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    """Cut a per-row list (e.g. the cloud's answers) into consecutive parts of ``sizes`` rows."""
    parts, start = [], 0
    for n in sizes:
        parts.append(list(items[start : start + n]))
        start += n
    if start != len(items):
        raise EdgeLessPartError(f"Cannot split {len(items)} rows into parts of {list(sizes)}.")
    return parts


def split_stage_result(result: Any, sizes: Sequence[int]) -> list[Any]:
    """Cut a batch's :class:`~edgelesspart.runtime.executor.StageResult` per request.

    Each part has its rows' answers and best exits, its pending rows re-numbered from 0 and
    the matching rows of the boundary tensor (``None`` when none of its rows is pending).
    """
    from edgelesspart.runtime.executor import StageResult

    pending = np.asarray(result.pending, dtype=np.int64)
    answers = split_list(result.answers, sizes)
    best = split_list(result.best, sizes)
    parts, start = [], 0
    for k, n in enumerate(sizes):
        mask = (pending >= start) & (pending < start + n)
        mine = pending[mask] - start
        boundary = None
        if len(mine) and result.boundary is not None:
            boundary = result.boundary[mask]
        parts.append(StageResult(answers[k], mine, boundary, best[k]))
        start += n
    return parts
