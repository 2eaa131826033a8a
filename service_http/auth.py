"""Bearer tokens and which routes they guard.

With a token set, every route needs ``Authorization: Bearer <token>`` except the *public*
routes, a setting of each service. The default keeps only ``/healthz`` open (a load balancer's
probe carries no token); ``/metrics``, ``/v1/stats`` and ``/openapi.json`` are behind the token,
since counts of requests, exits and refusals tell an outsider about the traffic. Operators whose
scraper cannot send a token add ``/metrics`` to the public routes. Without a token nothing is
guarded (and the servers refuse to listen beyond loopback, see :mod:`service_http.wsgi`).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from edgelesspart.errors import ConfigError
from service_http.errors import Unauthorized

#: Routes open without the token unless configured otherwise.
DEFAULT_PUBLIC_ROUTES: tuple[str, ...] = ("/healthz",)


def parse_routes(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Public routes from a comma-separated string or an iterable; each must start with ``/``.

    Raises:
        ConfigError: a route does not start with ``/``.
    """
    if value is None:
        return DEFAULT_PUBLIC_ROUTES
    items = value.split(",") if isinstance(value, str) else list(value)
    routes = tuple(str(r).strip() for r in items if str(r).strip())
    bad = [r for r in routes if not r.startswith("/")]
    if bad:
        raise ConfigError(
            f"Public routes must be paths starting with '/', got {bad}; e.g. '/healthz,/metrics'."
        )
    return routes


def check_bearer(token: str | None, header: str | None) -> None:
    """Refuse (401) a request whose ``Authorization`` header is not ``Bearer <token>``.

    A no-op when ``token`` is empty. The comparison is constant-time.

    Raises:
        Unauthorized: the header is missing or wrong.
    """
    if not token:
        return
    if not hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode()):
        raise Unauthorized("Missing or wrong bearer token: send 'Authorization: Bearer <token>'.")


def guarded(path: str, token: str | None, public: Iterable[str]) -> bool:
    """Whether ``path`` needs the token: one is set and the path is not public."""
    return bool(token) and path not in public
