"""Pre-forked worker processes sharing one port (``serve-edge --workers N``, ``serve-cloud``).

One Python process serves from one core at a time for everything that holds the GIL (HTTP
parsing, JSON, the executor's bookkeeping); a Jetson Orin Nano has 6 cores and a Pi 5 has 4. So
:func:`run_workers` forks ``N`` workers *before anything is loaded* (no model, no LiteRT or
TensorFlow state crosses a fork; each worker loads the bundle itself).

How connections reach the workers. By default on Linux each worker binds its own listening
socket to the same port with ``SO_REUSEPORT`` and the kernel spreads new connections over them
by a hash of the addresses; elsewhere the workers share the parent's socket. A hash spreads
*long-lived* connections unevenly: 16 keep-alive clients landed 5/11 or 6/10 on two workers in
2 of 6 tries here (issue 24), and a worker with 5 clients idles while the other queues. With
``balanced=True`` (the event-loop edge server) the workers share one listening socket and an
:class:`AcceptBalancer`: each worker's connection count sits in shared memory, and a worker
calls ``accept`` only while no other worker has fewer connections, so keep-alive clients end up
spread evenly (the least-loaded worker takes the next one).

The parent only supervises: it restarts a worker that dies (at most ``max_restarts`` times in
a row within a minute, then gives up and stops the others), and on SIGTERM/SIGINT it stops every
worker and waits for them. Each worker keeps its own admission gate, batcher and circuit
breaker (see ``docs/serving.md``); metrics are published per worker into a shared directory and
summed by whichever worker answers ``/metrics`` (:mod:`service_http.metrics`).
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from edgelesspart.errors import ConfigError
from service_http.aserver import bind_socket

LOG = logging.getLogger("edgelesspart.prefork")
#: Environment variable naming the directory where workers publish their metrics.
METRICS_DIR_ENV = "EDGELESSPART_METRICS_DIR"


def check_workers(workers: int) -> int:
    """Validate a worker count (1 .. 4 x cores)."""
    cores = os.cpu_count() or 1
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 4 * cores:
        raise ConfigError(
            f"--workers must be an int between 1 and {4 * cores} (4 x the {cores} cores here), "
            f"got {workers!r}."
        )
    return workers


class AcceptBalancer:
    """Every worker's open-connection count in shared memory (made before the fork).

    A worker serving from the shared listening socket asks :meth:`my_turn` before each
    ``accept``: it may take the next connection only while no *live* worker has fewer. Live
    means accepting now: each worker's accept loop stamps a heartbeat at least every 0.2 s, and
    a worker whose stamp is older than ``stale_s`` (still loading its bundle, hung, or dead and
    not yet restarted) is left out, so it never holds the others back. Counts and stamps are
    8-byte aligned slots, each written only by its own worker (under a per-process lock) and
    read by all; a restarted worker's slot starts again at 0.
    """

    def __init__(self, workers: int, stale_s: float = 1.0) -> None:
        self.workers = int(workers)
        self.stale_s = float(stale_s)
        self._memory = mmap.mmap(-1, 16 * self.workers)  # anonymous: shared with the children
        self._counts = f"{self.workers}q"
        self._beats = f"{self.workers}d"
        self.index = -1
        self._lock = threading.Lock()

    def bind(self, index: int) -> AcceptBalancer:
        """In a worker: use slot ``index``, from 0 connections, not yet live; returns self."""
        self.index = int(index)
        self._lock = threading.Lock()  # a fresh lock in the child
        struct.pack_into("q", self._memory, 8 * self.index, 0)
        struct.pack_into("d", self._memory, 8 * (self.workers + self.index), 0.0)
        return self

    def counts(self) -> tuple[int, ...]:
        """Every worker's current connection count."""
        return struct.unpack_from(self._counts, self._memory)

    def my_turn(self) -> bool:
        """Stamp this worker live; whether no live worker has fewer connections than it."""
        now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host
        struct.pack_into("d", self._memory, 8 * (self.workers + self.index), now)
        counts = self.counts()
        beats = struct.unpack_from(self._beats, self._memory, 8 * self.workers)
        live = [c for c, b in zip(counts, beats) if now - b < self.stale_s]
        return counts[self.index] <= min(live)

    def add(self, delta: int) -> None:
        """Count ``delta`` connections more (or fewer) for this worker."""
        with self._lock:
            offset = 8 * self.index
            (value,) = struct.unpack_from("q", self._memory, offset)
            struct.pack_into("q", self._memory, offset, max(0, value + delta))


_BALANCER: AcceptBalancer | None = None


def current_balancer() -> AcceptBalancer | None:
    """This worker's :class:`AcceptBalancer` (``None`` outside a balanced pre-forked worker)."""
    return _BALANCER


def run_workers(
    workers: int,
    host: str,
    port: int,
    serve: Callable[[socket.socket, int], None],
    *,
    max_restarts: int = 5,
    on_ready: Callable[[int], None] | None = None,
    balanced: bool = False,
) -> int:
    """Fork ``workers`` processes that each call ``serve(listening_socket, worker_index)``.

    ``serve`` must load everything it needs itself (after the fork) and block until the
    process is told to stop (SIGTERM). Returns the exit code for the command (0 after a
    clean stop, 1 when workers kept dying).

    Args:
        workers: worker processes (>= 1).
        host, port: where to listen; port 0 picks a free port (shared by every worker).
        serve: the worker's body.
        max_restarts: consecutive restarts within a minute before giving up.
        on_ready: called in the parent with the port once the workers are forked.
        balanced: share one listening socket and spread connections with an
            :class:`AcceptBalancer` (``serve`` must accept through
            :func:`current_balancer`, as the event-loop server does); else ``SO_REUSEPORT``.
    """
    check_workers(workers)
    reuse = not balanced and hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")
    balancer = AcceptBalancer(workers) if balanced else None
    anchor = bind_socket(host, port, reuse_port=reuse)  # reserves the port (and picks one)
    port = anchor.getsockname()[1]
    if not reuse and not balanced:
        anchor.listen(1024)
    # balanced: the first worker that is ready listens (until then a connection is refused,
    # as with SO_REUSEPORT, rather than left waiting in the backlog while workers load)
    metrics_dir = os.environ.get(METRICS_DIR_ENV) or tempfile.mkdtemp(prefix="edgelesspart-m-")
    os.environ[METRICS_DIR_ENV] = metrics_dir

    def spawn(index: int) -> int:
        global _BALANCER
        pid = os.fork()
        if pid:
            return pid
        code = 0
        try:  # the child: its own socket on the shared port (or the parent's), then serve
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with SIGTERM
            signal.signal(signal.SIGTERM, _raise_exit)
            sock = anchor
            if balancer is not None:
                _BALANCER = balancer.bind(index)
            if reuse:
                sock = bind_socket(host, port, reuse_port=True)
                anchor.close()
            serve(sock, index)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0
        except BaseException:  # noqa: BLE001 - logged; the parent restarts the worker
            LOG.exception("worker %d failed", index)
            code = 1
        finally:
            logging.shutdown()
        os._exit(code)

    children = {spawn(i): i for i in range(workers)}
    if on_ready is not None:
        on_ready(port)
    return _supervise(children, spawn, max_restarts)


def _raise_exit(_signum: int, _frame: object) -> None:
    """SIGTERM in a worker: unwind (close connections, stop the batcher), or exit within 5 s.

    An event loop may run the handler inside its own callback and swallow the SystemExit, so
    a timer makes sure the worker ends anyway.
    """
    timer = threading.Timer(5.0, os._exit, args=(0,))
    timer.daemon = True
    timer.start()
    raise SystemExit(0)


def _supervise(children: dict[int, int], spawn: Callable[[int], int], max_restarts: int) -> int:
    """Wait on the workers: restart the ones that die, stop all on SIGTERM/SIGINT."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            _kill(pid)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    restarts: list[float] = []
    code = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
                continue
            index = children.pop(pid, None)
            if index is None or stopping:
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60.0] + [now]
            if len(restarts) > max_restarts:
                LOG.error("workers keep dying (%d restarts in a minute); stopping", len(restarts))
                code = 1
                stop(signal.SIGTERM, None)
                continue
            LOG.warning("worker %d (pid %d) exited with %s; restarting", index, pid, status)
            children[spawn(index)] = index
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
