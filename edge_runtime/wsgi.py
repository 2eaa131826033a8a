"""WSGI entry of the edge service; the server plumbing itself is :mod:`service_http.wsgi`.

:func:`app_from_env` is a WSGI factory, e.g. for
``waitress-serve --call edge_runtime.wsgi:app_from_env`` (bundle from ``EDGELESSPART_BUNDLE``,
settings from the other ``EDGELESSPART_*`` variables). Nothing happens at import.
"""

from __future__ import annotations

import os
from typing import Any

from edgelesspart.errors import ConfigError
from service_http.wsgi import (
    CONNECTION_LIMIT,
    DEFAULT_HOST,
    BackgroundServer,
    is_loopback,
    require_token_off_loopback,
    serve,
)

__all__ = [
    "CONNECTION_LIMIT",
    "serve_edge",
    "DEFAULT_HOST",
    "BackgroundServer",
    "app_from_env",
    "is_loopback",
    "require_token_off_loopback",
    "serve",
]


def app_from_env() -> Any:
    """Build the edge app from environment variables (a waitress ``--call`` factory).

    Raises:
        ConfigError: ``EDGELESSPART_BUNDLE`` is not set.
    """
    from edge_runtime.app import create_app
    from edge_runtime.config import BUNDLE_ENV, EdgeConfig

    bundle = os.environ.get(BUNDLE_ENV)
    if not bundle:
        raise ConfigError(f"Set {BUNDLE_ENV} to the bundle directory the edge service serves.")
    return create_app(bundle, EdgeConfig.from_env())


def serve_edge(
    app: Any,
    host: str = DEFAULT_HOST,
    port: int = 8080,
    threads: int = 8,
    *,
    server: str = "async",
    sock: Any = None,
    announce: str | None = None,
) -> None:
    """Serve the edge app until interrupted (blocking): what ``serve-edge`` runs.

    ``server`` ``async``: the event-loop server with the hot ``/v1/infer`` route
    (:func:`edge_runtime.fastpath.edge_server`; ``threads`` WSGI threads for the other
    routes); ``waitress``: Flask under waitress (``threads`` request threads). ``sock``: an
    already bound socket (a pre-forked worker's) instead of ``host:port``. ``announce`` is
    printed once the port is bound.

    Raises:
        ConfigError: ``host:port`` cannot be bound (port taken, no such interface), in one line.
    """
    if server == "waitress":
        serve(app, host=host, port=port, threads=threads, sock=sock, announce=announce)
        return
    from edge_runtime.fastpath import edge_server
    from service_http.prefork import current_balancer

    where: dict[str, Any] = {"host": host, "port": port}
    if sock is not None:  # a pre-forked worker: its socket, and the workers' balancer if any
        where = {"sock": sock, "balancer": current_balancer()}
    try:
        running = edge_server(app, threads=threads, multiprocess=sock is not None, **where)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}. Is another service on that "
            "port? Choose another --port (or stop the other process)."
        ) from exc
    if announce:
        print(announce, flush=True)
    try:
        running.serve_forever()
    except KeyboardInterrupt:
        pass
