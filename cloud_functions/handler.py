"""AWS Lambda entry point: ``cloud_functions.handler.handler``.

A thin handler: parse the event, call :meth:`CloudPart.handle_event`, format the answer. The
cloud part is loaded once per container (a lazy module-level singleton, the one deliberate
exception to "nothing at import": loading happens on the first invocation, not at import), so
the first invocation is a cold start; it is flagged (``cold_start``) and its load time reported
(``init_ms``). Every log line carries the request id.

Bundle location: ``$EDGELESSPART_BUNDLE``, else the directory ``bundle`` next to this file
(the layout ``edgelesspart package-cloud`` builds).

Event: ``{"tensor_b64": "<encoded tensor, base64>", "threshold": 0.8}``, plus an ``auth``
signature field when ``$EDGELESSPART_CLOUD_SECRET`` is set on the function. On AWS that is
optional: Lambda's Invoke API is already authenticated by IAM (SigV4), so a deployed function
can leave the secret unset; set it when the function is reachable some other way (a function
URL with ``AuthType: NONE``, an API gateway without IAM auth) or as defence in depth.
Answer: ``{"answers": [...], "bundle_id", "cold_start", "init_ms", "timings", "request_id"}``;
errors: ``{"error": {"type", "message"}, "status": 4xx}`` (a handled error, not an exception).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from edgelesspart.errors import EdgeLessPartError

BUNDLE_ENV = "EDGELESSPART_BUNDLE"
SECRET_ENV = "EDGELESSPART_CLOUD_SECRET"
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "bundle"

LOG = logging.getLogger("edgelesspart.cloud")
try:
    LOG.setLevel(os.environ.get("EDGELESSPART_LOG_LEVEL", "INFO").upper())
except ValueError:  # an unknown level name must not break the cold start
    LOG.setLevel(logging.INFO)


def bundle_path() -> Path:
    """Where the handler loads its bundle from (environment first, then next to this file)."""
    return Path(os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE)


class Container:
    """One execution environment: loads the cloud part once, flags the first call as cold."""

    def __init__(
        self, path: str | Path | None = None, *, cloud: Any = None, batch: Any = None
    ) -> None:
        self._path = None if path is None else Path(path)
        self._cloud = cloud
        self._batch = batch  # BatchSettings for the cloud part (None: no batching)
        self._cold = True
        self._load_ms = 0.0
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the cloud part is in memory (the cold load has happened)."""
        with self._lock:
            return self._cloud is not None

    def load(self) -> Any:
        """Load the cloud part now if needed (the cold-start flag is kept) and return it."""
        with self._lock:
            return self._load_locked()

    def _load_locked(self) -> Any:
        if self._cloud is None:
            from edgelesspart.runtime.cloud import CloudPart

            start = time.perf_counter()
            self._cloud = CloudPart(self._path or bundle_path(), batch=self._batch)
            self._load_ms = (time.perf_counter() - start) * 1000.0
        return self._cloud

    def acquire(self) -> tuple[Any, bool, float]:
        """Return ``(cloud_part, cold_start, init_ms)``, loading the cloud part on first use."""
        with self._lock:
            cloud = self._load_locked()
            cold, self._cold = self._cold, False
            init_ms = float(getattr(cloud, "init_ms", None) or self._load_ms)
            return cloud, cold, init_ms


_CONTAINER = Container()


def _request_id(context: Any) -> str:
    return str(getattr(context, "aws_request_id", None) or "-")


def _unsigned(event: Any, secret: str | None) -> dict[str, Any] | None:
    """The 401 error event for an event not signed with ``secret`` (``None`` if fine)."""
    if not secret:
        return None
    from edgelesspart.runtime.signing import check_event

    problem = check_event(secret, event)
    if problem is None:
        return None
    return _error("Unauthorized", f"Event signature refused: {problem}.", status=401)


def invoke(
    container: Container, event: Any, context: Any, secret: str | None = None
) -> dict[str, Any]:
    """Run one invocation against ``container`` (shared by Lambda and the local servers).

    With a ``secret``, an event without a valid ``auth`` signature gets a 401 error event; it is
    checked before anything else, so a refused event never loads the cloud part (it reports
    ``cold_start: false``, ``init_ms: 0`` and the next accepted event is the cold one).
    """
    request_id = _request_id(context)
    log = logging.LoggerAdapter(LOG, {"request_id": request_id})
    start = time.perf_counter()
    refused = _unsigned(event, secret)
    if refused is not None:
        log.warning("[%s] refused: %s", request_id, refused["error"]["message"])
        return {**refused, "cold_start": False, "init_ms": 0.0, "request_id": request_id}
    cloud, cold, init_ms = container.acquire()
    if cold:
        log.info("[%s] cold start: cloud part loaded in %.1f ms", request_id, init_ms)
    if not isinstance(event, dict):
        response: dict[str, Any] = _error(
            "InputError",
            f'The event must be a JSON object like {{"tensor_b64": "..."}}, '
            f"got {type(event).__name__}.",
        )
    else:
        try:
            response = dict(cloud.handle_event(event))
        except EdgeLessPartError as exc:
            response = _error(type(exc).__name__, str(exc))
    response["cold_start"] = cold
    response["init_ms"] = init_ms
    response["request_id"] = request_id
    elapsed = (time.perf_counter() - start) * 1000.0
    if "error" in response:
        log.warning("[%s] refused: %s", request_id, response["error"].get("message"))
    else:
        log.info(
            "[%s] answered %d rows in %.1f ms (cold=%s)",
            request_id,
            len(response.get("answers", [])),
            elapsed,
            cold,
        )
    return response


def _error(kind: str, message: str, status: int = 400) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}, "status": status}


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda handler: continue the inference of the rows in ``event``."""
    return invoke(_CONTAINER, event, context, os.environ.get(SECRET_ENV) or None)
