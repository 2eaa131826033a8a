"""Resilience settings for offloading: the :class:`OffloadPolicy` and a :class:`CircuitBreaker`.

Pure logic (no network): the policy holds timeouts, bounded retries with exponential backoff
plus jitter, the breaker's limits and the codec; the breaker is the usual closed / open /
half-open state machine. :mod:`edgelesspart.runtime.offload` builds the transports on them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgelesspart.errors import ConfigError, EdgeLessPartError
from edgelesspart.runtime import codecs


@dataclass(frozen=True)
class OffloadPolicy:
    """How hard to try the cloud before answering degraded.

    Attributes:
        timeout_s: read timeout of one attempt.
        connect_timeout_s: connect timeout of one attempt.
        retries: extra attempts after the first (0 = try once).
        backoff_s: base delay before retry ``k`` is ``backoff_s * 2**k``...
        jitter_s: ...plus a uniform random delay in ``[0, jitter_s]``.
        breaker_failures: consecutive failures that open the circuit.
        breaker_reset_s: how long the circuit stays open before one trial call.
        codec: the tensor codec (see :data:`edgelesspart.runtime.codecs.CODECS`).
    """

    timeout_s: float = 2.0
    connect_timeout_s: float = 0.5
    retries: int = 1
    backoff_s: float = 0.05
    jitter_s: float = 0.05
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0
    codec: str = "raw"

    def __post_init__(self) -> None:
        for name in ("timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ConfigError(f"OffloadPolicy.{name} must be a number > 0, got {value!r}.")
        for name in ("backoff_s", "jitter_s", "breaker_reset_s"):
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0:
                raise ConfigError(f"OffloadPolicy.{name} must be a number >= 0, got {value!r}.")
        if (
            not isinstance(self.retries, int)
            or isinstance(self.retries, bool)
            or not (0 <= self.retries <= 10)
        ):
            raise ConfigError(
                f"OffloadPolicy.retries must be an int in 0..10, got {self.retries!r}."
            )
        if (
            not isinstance(self.breaker_failures, int)
            or isinstance(self.breaker_failures, bool)
            or self.breaker_failures < 1
        ):
            raise ConfigError(
                "OffloadPolicy.breaker_failures must be an int >= 1, "
                f"got {self.breaker_failures!r}."
            )
        try:
            codecs.require_codec(self.codec)
        except EdgeLessPartError as exc:
            raise ConfigError(f"OffloadPolicy.codec: {exc}") from exc

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        Always within ``[backoff_s * 2**attempt, backoff_s * 2**attempt + jitter_s]``.
        """
        jitter = (rng or random).uniform(0.0, self.jitter_s) if self.jitter_s else 0.0
        return self.backoff_s * (2 ** int(attempt)) + jitter

    @property
    def max_total_s(self) -> float:
        """Worst-case seconds one :meth:`Offloader.offload` call can take (excluding encoding)."""
        attempts = self.retries + 1
        waits = sum(self.backoff_s * 2**k + self.jitter_s for k in range(self.retries))
        return attempts * (self.connect_timeout_s + self.timeout_s) + waits


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


DEFAULT_POLICY = OffloadPolicy()


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open after ``reset_s`` -> closed.

    While open every call is refused at once. After ``reset_s`` one trial call is let
    through (half-open); its success closes the circuit, its failure re-opens it, and a trial
    that proves nothing either way (:meth:`record_neutral`) re-opens it too. Only a real answer
    from the cloud may close the circuit. Thread-safe.
    :meth:`transitions` counts every state change (``("closed", "open")`` → n) so services can
    export them; the open → half-open change is counted when it is observed (next call or
    state read), since the breaker has no timer of its own.

    Args:
        failures: consecutive failures that open the circuit.
        reset_s: seconds the circuit stays open before a trial call.
        clock: monotonic clock (injectable for tests).
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    def __init__(
        self, failures: int = 5, reset_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1 or reset_s < 0:
            raise ConfigError(
                f"CircuitBreaker needs failures >= 1 and reset_s >= 0, got {failures}, {reset_s}."
            )
        self.failures = int(failures)
        self.reset_s = float(reset_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self.CLOSED
        self._count = 0
        self._opened_at = 0.0
        self._trial = False
        self._transitions: dict[tuple[str, str], int] = {}

    def _move(self, state: str) -> None:
        if state != self._state:
            key = (self._state, state)
            self._transitions[key] = self._transitions.get(key, 0) + 1
            self._state = state

    def _refresh(self) -> None:
        if self._state == self.OPEN and self._clock() - self._opened_at >= self.reset_s:
            self._move(self.HALF_OPEN)
            self._trial = False

    def transitions(self) -> dict[tuple[str, str], int]:
        """How often each ``(from_state, to_state)`` change happened since creation."""
        with self._lock:
            self._refresh()
            return dict(self._transitions)

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        with self._lock:
            self._refresh()
            return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        with self._lock:
            return self._count

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open, only one trial at a time)."""
        with self._lock:
            self._refresh()
            if self._state == self.CLOSED:
                return True
            if self._state == self.HALF_OPEN and not self._trial:
                self._trial = True
                return True
            return False

    def allow_retry(self) -> bool:
        """Whether a failed call may be retried (only while the circuit is closed)."""
        with self._lock:
            return self._state == self.CLOSED

    def record_success(self) -> None:
        """A call succeeded: close the circuit."""
        with self._lock:
            self._move(self.CLOSED)
            self._count = 0
            self._trial = False

    def record_neutral(self) -> None:
        """A call ended without telling whether the cloud works (e.g. it refused one request).

        It neither closes the circuit nor counts as a failure; a half-open trial that ends
        this way re-opens the circuit, so the next trial comes after another ``reset_s``.
        """
        with self._lock:
            if self._state == self.HALF_OPEN:
                self._move(self.OPEN)
                self._opened_at = self._clock()
            self._trial = False

    def record_failure(self) -> None:
        """A call failed: count it, and open the circuit at the limit or after a failed trial."""
        with self._lock:
            self._count += 1
            if self._state == self.HALF_OPEN or self._count >= self.failures:
                self._move(self.OPEN)
                self._opened_at = self._clock()
                self._trial = False
