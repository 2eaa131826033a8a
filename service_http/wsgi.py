"""Run a WSGI app under waitress: one process, threads (never fork after loading a model).

* :func:`serve` blocks serving an app (what ``serve-edge`` and ``serve-cloud`` call).
* :class:`BackgroundServer` serves an app from a thread on a free loopback port (tests, demos).
* :func:`require_token_off_loopback` refuses to expose a service beyond loopback without a token.

Nothing happens at import.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from edgelesspart.errors import ConfigError

LOG = logging.getLogger("edgelesspart.wsgi")
DEFAULT_HOST = "127.0.0.1"
#: Most client connections waitress keeps open; beyond it the kernel backlog holds the rest.
CONNECTION_LIMIT = 100
#: Bytes per ``socket.recv`` (waitress default 8192). A 96 x 96 x 3 float32 tensor (110 KB)
#: took 14 trips through waitress's read, parse and buffer code per request; profiled under
#: load that was a quarter of the service's CPU (issue 15, P3).
RECV_BYTES = 256 * 1024


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine (127.0.0.0/8, ::1, ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token_off_loopback(host: str, token: str | None, command: str) -> None:
    """Refuse to serve on a non-loopback ``host`` without a token.

    Raises:
        ConfigError: ``host`` is reachable from other machines and ``token`` is empty.
    """
    if token or is_loopback(host):
        return
    raise ConfigError(
        f"{command} refuses to listen on {host!r} without a token: anyone on that network "
        "could call it. Pass --token (or set EDGELESSPART_TOKEN), or bind to 127.0.0.1."
    )


def serve(
    app: Any,
    host: str = DEFAULT_HOST,
    port: int = 8080,
    threads: int = 8,
    connection_limit: int = CONNECTION_LIMIT,
    announce: str | None = None,
    sock: Any = None,
) -> None:
    """Serve ``app`` with waitress until interrupted (blocking).

    ``threads`` should exceed the app's admission limit plus its waiting room, so there is
    always a thread free to answer 429 quickly; ``connection_limit`` bounds open connections.
    The socket is bound first: ``announce`` (e.g. "edge service ... on http://HOST:PORT") is
    printed only once the port is really listening. ``sock``: an already bound socket to serve
    on instead of ``host:port`` (pre-forked workers).

    Raises:
        ConfigError: the address cannot be bound (port taken, no such interface, no
            permission), as one line naming the address and what to do.
    """
    from waitress.server import create_server

    where: dict[str, Any] = {"host": host, "port": port}
    if sock is not None:
        sock.listen(1024)
        where = {"sockets": [sock]}
    try:
        server = create_server(
            app,
            **where,
            threads=threads,
            connection_limit=connection_limit,
            recv_bytes=RECV_BYTES,
            ident="edgelesspart",
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port}: {reason}. Is another service on that port? "
            "Choose another --port (or stop the other process)."
        ) from exc
    if announce:
        print(announce, flush=True)
    LOG.info("serving on http://%s:%s with %d threads", host, port, threads)
    try:
        server.run()
    finally:
        server.close()


class BackgroundServer:
    """A waitress server running in a daemon thread; use as a context manager.

    Example::

        with BackgroundServer(app) as server:
            requests.get(server.url + "/healthz", timeout=5)
    """

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0, threads: int = 8):
        from waitress.server import create_server

        # A private socket map: waitress otherwise shares one module-global map between all
        # servers in the process, so stopping one would close the others' sockets.
        self._server = create_server(
            app,
            map={},
            host=host,
            port=port,
            threads=threads,
            recv_bytes=RECV_BYTES,
            ident="edgelesspart",
            channel_timeout=30,
        )
        self.host = host
        self.port = int(self._server.effective_port)
        self._thread = threading.Thread(target=self._server.run, name="waitress", daemon=True)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        """Start serving in the background thread (a no-op if already started)."""
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection, then join the thread."""
        server = self._server
        logging.getLogger("waitress").setLevel(logging.ERROR)

        def close_all() -> None:  # runs inside the server's loop thread
            for channel in list(server._map.values()):
                channel.handle_close()

        if self._thread.is_alive():
            try:
                server.trigger.pull_trigger(close_all)
            except OSError:  # the wake-up pipe is gone: close from here instead
                close_all()
            self._thread.join(timeout)
        else:
            close_all()
        server.task_dispatcher.shutdown(timeout=timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
