"""Admission control: a bounded number of requests at work, a bounded waiting room, then 429.

Both services guard their expensive route with one :class:`Admission`: at most ``limit``
requests run at once, at most ``queue`` more wait up to ``wait_s`` seconds for a slot, and any
other request is refused at once with :class:`~service_http.errors.TooManyRequests` (HTTP 429
with ``Retry-After``). Nothing grows without bound: the work in the process is capped by
``limit + queue`` requests, and the WSGI server's own connection limit caps what waits in front
of the app. Cheap routes (``/healthz``, ``/metrics``) are never admission-controlled, so an
overloaded service still answers its probes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from edgelesspart.errors import ConfigError
from service_http.errors import TooManyRequests


class Admission:
    """A counting gate with a bounded, time-limited waiting room. Thread-safe.

    Args:
        limit: requests allowed to run at once (>= 1).
        queue: requests allowed to wait for a slot (>= 0).
        wait_s: longest wait for a slot before the request is refused.
        retry_after_s: the ``Retry-After`` seconds sent with a refusal.
        on_reject: called with the reason (``"queue_full"`` or ``"wait_timeout"``) per refusal.
    """

    def __init__(
        self,
        limit: int,
        queue: int = 0,
        wait_s: float = 0.0,
        retry_after_s: int = 1,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        if limit < 1 or queue < 0 or wait_s < 0 or retry_after_s < 1:
            raise ConfigError(
                "Admission needs limit >= 1, queue >= 0, wait_s >= 0 and retry_after_s >= 1, "
                f"got {limit}, {queue}, {wait_s}, {retry_after_s}."
            )
        self.limit, self.queue, self.wait_s = int(limit), int(queue), float(wait_s)
        self.retry_after_s = int(retry_after_s)
        self._on_reject = on_reject
        self._cond = threading.Condition()
        self._running = 0
        self._waiting = 0
        self.peak = 0

    @property
    def running(self) -> int:
        """Requests holding a slot now."""
        with self._cond:
            return self._running

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        with self._cond:
            return self._waiting

    def enter(self) -> None:
        """Take a slot, waiting up to ``wait_s`` if the waiting room has space.

        Raises:
            TooManyRequests: every slot is taken and the waiting room is full, or the wait
                ran out.
        """
        with self._cond:
            if self._running < self.limit:
                self._take()
                return
            if self._waiting >= self.queue:
                reason = "queue_full"
            else:
                self._waiting += 1
                try:
                    ok = self._cond.wait_for(lambda: self._running < self.limit, self.wait_s)
                finally:
                    self._waiting -= 1
                if ok:
                    self._take()
                    return
                reason = "wait_timeout"
        self._refuse(reason)

    def try_enter(self) -> None:
        """Take a slot without waiting: the event-loop server's gate.

        There, a request that cannot run yet waits in the dynamic batcher's queue, bounded by
        its queueing deadline, not in a thread; so ``limit + queue`` requests are admitted at
        once and the next one is refused (``queue_full``).

        Raises:
            TooManyRequests: ``limit + queue`` requests are already in the service.
        """
        with self._cond:
            if self._running < self.limit + self.queue:
                self._take()
                return
        self._refuse("queue_full")

    def _take(self) -> None:
        self._running += 1
        self.peak = max(self.peak, self._running + self._waiting)

    def _refuse(self, reason: str) -> None:
        if self._on_reject is not None:
            self._on_reject(reason)
        raise TooManyRequests(
            f"Service saturated: {self.limit} requests at work and {self.queue} waiting "
            f"({reason.replace('_', ' ')}); retry after {self.retry_after_s} s.",
            retry_after_s=self.retry_after_s,
        )

    def leave(self) -> None:
        """Give a slot back (call exactly once per successful :meth:`enter`)."""
        with self._cond:
            self._running = max(0, self._running - 1)
            self._cond.notify()
