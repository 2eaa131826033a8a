"""Shared-secret request signing for the cloud path: HMAC-SHA256 over the body and a timestamp.

The edge and the cloud part share a secret (``--cloud-token`` on the edge, ``--token`` on
``serve-cloud``). The secret itself never travels; each request carries a signature:

* HTTP (``POST /v1/continue``): headers ``X-EdgeLessPart-Timestamp: <unix seconds>`` and
  ``X-EdgeLessPart-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``;
* a Lambda JSON event: an ``"auth": {"v": 1, "ts": <unix seconds>, "sig": <hex>}`` field, the
  HMAC of ``"v1.<ts>."`` + the canonical JSON (sorted keys, no spaces) of the event without
  ``auth``.

The verifier recomputes the HMAC, compares it in constant time (:func:`hmac.compare_digest`)
and refuses a timestamp more than :data:`MAX_SKEW_S` seconds from its own clock, which bounds
replay of a captured request to that window. Verifiers return the reason a check failed (or
``None``), so each service renders the refusal its own way (HTTP 401, Lambda error event).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from typing import Any

SIGNATURE_HEADER = "X-EdgeLessPart-Signature"
TIMESTAMP_HEADER = "X-EdgeLessPart-Timestamp"
AUTH_FIELD = "auth"
SCHEME = "v1"
#: Largest accepted difference between the signer's and the verifier's clocks (seconds).
MAX_SKEW_S = 300
#: A timestamp is a Unix time in whole seconds: 1 to 12 decimal digits (up to the year 33658).
MAX_TIMESTAMP = 10**12
_DIGITS = re.compile(r"[0-9]{1,12}")


def _digest(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_body(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two headers that sign ``body`` with ``secret`` at ``timestamp`` (default: now)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signature = _digest(secret, f"{ts}.".encode() + bytes(body))
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: f"{SCHEME}={signature}"}


def _show(raw: Any, limit: int = 40) -> str:
    """A short, never-failing rendering of an untrusted value for an error message."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 128:
        return f"(an integer of about {int(raw.bit_length() * 0.30103) + 1} digits)"
    try:
        text = repr(raw)
    except (ValueError, RecursionError):  # an int over Python's digit limit, deep nesting
        return f"(a {type(raw).__name__})"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _timestamp(raw: Any) -> int | None:
    """``raw`` as Unix seconds if it is an int or a string of 1 to 12 digits, else ``None``."""
    if isinstance(raw, bool):  # bool is an int subclass; True is not a time
        return None
    if isinstance(raw, int):
        return raw if 0 <= raw < MAX_TIMESTAMP else None
    if isinstance(raw, str) and _DIGITS.fullmatch(raw):
        return int(raw)
    return None


def _fresh(raw: Any, now: float | None, max_skew_s: float) -> tuple[int | None, str | None]:
    """``(timestamp, None)`` for a well-formed timestamp inside the skew window, else
    ``(None, reason)``. Never raises, whatever ``raw`` is (huge ints, floats, nan, lists...)."""
    ts = _timestamp(raw)
    if ts is None:
        return None, (
            f"timestamp {_show(raw)} is not an integer number of seconds "
            "(a Unix time of 1 to 12 decimal digits)"
        )
    skew = abs((time.time() if now is None else now) - ts)
    if not skew <= max_skew_s:  # also refuses a nan clock or skew
        return None, (
            f"timestamp is {skew:.0f} s away from this server's clock (limit {max_skew_s:g} s); "
            "sign each request when it is sent and keep clocks in sync"
        )
    return ts, None


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of an untrusted string (any code points) with a hex digest."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def check_body(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
) -> str | None:
    """Why ``body`` with ``headers`` is not signed by ``secret`` — or ``None`` if it is."""
    signature = headers.get(SIGNATURE_HEADER)
    raw_ts = headers.get(TIMESTAMP_HEADER)
    if not signature or raw_ts is None:
        return f"missing {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} headers"
    ts, problem = _fresh(raw_ts, now, max_skew_s)
    if problem:
        return problem
    expected = f"{SCHEME}=" + _digest(secret, f"{ts}.".encode() + bytes(body))
    if not _same(signature, expected):
        return "signature does not match the body (wrong secret, or the body was changed)"
    return None


def _canonical(event: Mapping[str, Any]) -> bytes:
    unsigned = {k: v for k, v in event.items() if k != AUTH_FIELD}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign_event(
    secret: str, event: Mapping[str, Any], timestamp: int | None = None
) -> dict[str, Any]:
    """A copy of a JSON event with an ``auth`` field signing everything else in it."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    sig = _digest(secret, f"{SCHEME}.{ts}.".encode() + _canonical(event))
    return {**dict(event), AUTH_FIELD: {"v": 1, "ts": ts, "sig": sig}}


def check_event(
    secret: str,
    event: Any,
    *,
    now: float | None = None,
    max_skew_s: float = MAX_SKEW_S,
) -> str | None:
    """Why ``event`` is not signed by ``secret`` — or ``None`` if it is."""
    auth = event.get(AUTH_FIELD) if isinstance(event, Mapping) else None
    if not isinstance(auth, Mapping) or not isinstance(auth.get("sig"), str):
        return f"the event has no '{AUTH_FIELD}' signature field"
    ts, problem = _fresh(auth.get("ts"), now, max_skew_s)
    if problem:
        return problem
    try:
        expected = _digest(secret, f"{SCHEME}.{ts}.".encode() + _canonical(event))
    except (TypeError, ValueError):
        return "the event cannot be put in canonical JSON form"
    if not _same(auth["sig"], expected):
        return "signature does not match the event (wrong secret, or the event was changed)"
    return None
