"""A local cloud server that speaks the AWS Lambda Invoke API and plain HTTP.

``edgelesspart serve-cloud BUNDLE`` serves this app under waitress. Two ways in:

* ``POST /2015-03-31/functions/{name}/invocations`` — the Lambda Invoke REST API, so an
  unchanged ``boto3.client("lambda", endpoint_url=...)`` can call it. It behaves like Lambda:
  ``RequestResponse`` → 200, ``Event`` → 202 (run in the background), ``DryRun`` → 204; a payload
  over 6 MB (1 MB for ``Event``) → 413 with ``x-amzn-ErrorType: RequestTooLargeException``; a
  handler exception → 200 with ``X-Amz-Function-Error: Unhandled``; a non-JSON payload → the
  Python runtime's ``Runtime.UnmarshalError``; ``X-Amz-Log-Type: Tail`` → ``X-Amz-Log-Result``.
* ``POST /v1/continue`` — the HTTP entry of :mod:`cloud_functions.http_entry`.

With a ``token`` both ways in are authenticated: ``/v1/continue`` as in
:mod:`cloud_functions.http_entry`, and every Invoke call must carry a signed event (an ``auth``
field, see :mod:`edgelesspart.runtime.signing`; ``LambdaOffloader(secret=...)`` adds it) or it
is refused with 403 ``AccessDeniedException``. boto3's own SigV4 signature is not checked here:
the local server has no IAM. The signature is checked before any admission slot is taken, so
unsigned calls are refused with 403 even when the server is saturated.

Limits, answered like Lambda out of concurrency (429 ``TooManyRequestsException`` with
``Retry-After``): a ``RequestResponse`` invocation takes an admission slot (the same gate as
``/v1/continue``); ``Event`` invocations are accepted (202) only while fewer than
``CloudLimits.event_backlog`` of them (default ``2 x max_queue``) are queued or running in the
background.

Both call the same handler logic (:func:`cloud_functions.handler.invoke`) on one container
loaded at start-up; ``GET /v1/stats`` and ``GET /metrics`` count the requests that arrived.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_functions.handler import invoke
from cloud_functions.http_entry import EXTENSION, CloudLimits, CloudService
from cloud_functions.http_entry import create_app as create_http_app
from edgelesspart.runtime import signing
from edgelesspart.runtime.batching import BatchSettings
from service_http.errors import TooManyRequests

if TYPE_CHECKING:
    from flask import Flask, Response

INVOKE_PATH = "/2015-03-31/functions/<path:name>/invocations"
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
ASYNC_PAYLOAD_LIMIT = 1024 * 1024
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
REGION = "us-east-1"
ACCOUNT = "000000000000"


class LocalContext:
    """The parts of Lambda's ``context`` object a handler uses."""

    def __init__(self, function_name: str, timeout_s: float = 30.0, memory_mb: int = 2048) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the invocation would time out."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class EventBacklog:
    """Runs ``Event`` invocations on a few background threads, at most ``limit`` accepted and
    not finished at once (queued or running); :meth:`submit` refuses the rest. Thread-safe.

    Args:
        limit: invocations accepted and not finished (>= 1).
        workers: background threads.
    """

    def __init__(self, limit: int, workers: int = 2) -> None:
        self.limit = max(1, int(limit))
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="lambda-event")
        self._lock = threading.Lock()
        self._pending = 0
        self.peak = 0

    @property
    def pending(self) -> int:
        """Invocations accepted and not finished."""
        with self._lock:
            return self._pending

    def submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in the background if the backlog has room; ``False`` if it is full."""
        with self._lock:
            if self._pending >= self.limit:
                return False
            self._pending += 1
            self.peak = max(self.peak, self._pending)
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return True

    def _done(self, _future: Future | None) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self, wait: bool = True) -> None:
        """Stop the background threads (after the queued invocations when ``wait``)."""
        self._pool.shutdown(wait=wait)


def create_app(
    bundle_path: str | Path | None = None,
    *,
    cloud: Any = None,
    token: str | None = None,
    function_name: str | None = None,
    limits: CloudLimits | None = None,
    public_routes: tuple[str, ...] | str | None = None,
    batch: BatchSettings | None = None,
) -> Flask:
    """Build the local cloud app: the HTTP entry plus the Lambda Invoke API.

    Args:
        bundle_path: the (cloud) bundle directory.
        cloud: an already built ``CloudPart`` instead of loading ``bundle_path``.
        token: shared secret: ``/v1/continue`` needs a body signature (or the bearer token)
            and the Invoke API a signed event (``None``: no auth; keep it on 127.0.0.1).
        function_name: the only function name the Invoke API answers (``None``: any name).
        limits: admission control (default :class:`~cloud_functions.http_entry.CloudLimits`).
        public_routes: routes open without the token (default ``/healthz``; see
            :mod:`service_http.auth`).
        batch: dynamic batching of concurrent requests (default: off).
    """
    app = create_http_app(
        bundle_path,
        cloud=cloud,
        token=token,
        max_content_length=SYNC_PAYLOAD_LIMIT + 2**20,
        limits=limits,
        public_routes=public_routes,
        batch=batch,
    )
    service: CloudService = app.extensions[EXTENSION]
    background = EventBacklog(service.limits.event_backlog)
    app.extensions["edgelesspart_events"] = background

    from flask import request

    @app.post(INVOKE_PATH)
    def lambda_invoke(name: str):
        return _invoke(request, service, background, name.rsplit(":", 1)[-1], function_name)

    @app.errorhandler(TooManyRequests)
    def _saturated(err: TooManyRequests):
        if request.path.startswith("/2015-03-31/"):
            response = _aws_error(429, "TooManyRequestsException", err.message)
            response.headers.update(err.headers)
            return response
        response = app.json.response(err.to_dict())
        response.status_code = err.status
        response.headers.update(err.headers)
        return response

    return app


def _auth_error(service: CloudService, body: bytes) -> Response | None:
    """403 for an unsigned or wrongly signed Invoke payload when a token is set."""
    if not service.token:
        return None
    try:
        event = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # not JSON, too deep, or too many digits
        event = None
    problem = signing.check_event(service.token, event)
    if problem is None:
        return None
    return _aws_error(
        403,
        "AccessDeniedException",
        f"Invocation refused: {problem}. This server was started with a token: sign the event "
        "(edgelesspart.runtime.signing.sign_event, or LambdaOffloader(secret=...)).",
    )


def _aws_error(status: int, kind: str, message: str) -> Response:
    from flask import jsonify

    response = jsonify(Type="User", message=message)
    response.status_code = status
    response.headers["x-amzn-ErrorType"] = kind
    return response


def _invoke(
    request: Any,
    service: CloudService,
    background: EventBacklog,
    name: str,
    expected: str | None,
) -> Response:
    if expected is not None and name != expected:
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        return _aws_error(404, "ResourceNotFoundException", f"Function not found: {arn}")
    kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
    if kind not in INVOCATION_TYPES:
        return _aws_error(
            400,
            "InvalidParameterValueException",
            f"Invalid InvocationType {kind!r}; expected one of {', '.join(INVOCATION_TYPES)}.",
        )
    limit = ASYNC_PAYLOAD_LIMIT if kind == "Event" else SYNC_PAYLOAD_LIMIT
    size = request.content_length
    if size is not None and size > limit:
        return _aws_error(
            413,
            "RequestTooLargeException",
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
        )
    body = request.get_data(cache=False)
    service.bytes_received.inc(len(body), route="invoke")
    if len(body) > limit:
        return _aws_error(
            413,
            "RequestTooLargeException",
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
        )
    refused = _auth_error(service, body)  # before any slot is taken
    if refused is not None:
        return refused
    if kind == "DryRun":
        return _respond(b"", 204)
    context = LocalContext(name)
    if kind == "Event":
        event, error = _unmarshal(body, context)
        if error is not None:
            return _aws_error(400, "InvalidRequestContentException", error["errorMessage"])
        if not background.submit(_run, service, event, context):
            return _backlog_full(service, background.limit)
        return _respond(b"", 202)
    with service.admitted():
        return _run_sync(request, service, body, context)


def _backlog_full(service: CloudService, limit: int) -> Response:
    """Lambda's 429 for an ``Event`` invocation when the background backlog is full."""
    service.rejected.inc(reason="event_backlog_full")
    retry_after = service.admission.retry_after_s
    response = _aws_error(
        429,
        "TooManyRequestsException",
        f"Rate exceeded: {limit} asynchronous invocations are already queued or running; "
        f"retry after {retry_after} s.",
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


def _unmarshal(body: bytes, context: LocalContext) -> tuple[Any, dict[str, Any] | None]:
    try:
        return json.loads(body or b"{}"), None
    except (ValueError, RecursionError) as exc:  # not JSON, too deep, or too many digits
        return None, {
            "errorMessage": f"Unable to unmarshal input: {exc}",
            "errorType": "Runtime.UnmarshalError",
            "requestId": context.aws_request_id,
            "stackTrace": [],
        }


def _run(service: CloudService, event: Any, context: LocalContext) -> tuple[Any, bool]:
    """Invoke the handler logic; return (result, unhandled_error)."""
    start = time.perf_counter()
    try:
        result = invoke(service.container, event, context)
    except Exception as exc:  # the handler crashed: Lambda reports it as Unhandled
        service.count("invoke", start)
        return {
            "errorMessage": str(exc),
            "errorType": type(exc).__name__,
            "requestId": context.aws_request_id,
            "stackTrace": traceback.format_tb(exc.__traceback__),
        }, True
    service.count(
        "invoke", start, len(result.get("answers", [])) if isinstance(result, dict) else 0
    )
    return result, False


def _run_sync(request: Any, service: CloudService, body: bytes, context: LocalContext) -> Response:
    start = time.perf_counter()
    event, error = _unmarshal(body, context)
    if error is not None:
        service.count("invoke", start)
        result, failed = error, True
    else:
        result, failed = _run(service, event, context)
    duration_ms = (time.perf_counter() - start) * 1000.0
    headers = {"X-Amz-Executed-Version": "$LATEST"}
    if failed:
        headers["X-Amz-Function-Error"] = "Unhandled"
    if request.headers.get("X-Amz-Log-Type") == "Tail":
        headers["X-Amz-Log-Result"] = _log_tail(context, duration_ms, result)
    return _respond(json.dumps(result).encode(), 200, headers)


def _log_tail(context: LocalContext, duration_ms: float, result: Any) -> str:
    rid = context.aws_request_id
    init = ""
    if isinstance(result, dict) and result.get("cold_start"):
        init = f"\tInit Duration: {float(result.get('init_ms', 0.0)):.2f} ms"
    text = (
        f"START RequestId: {rid} Version: $LATEST\nEND RequestId: {rid}\n"
        f"REPORT RequestId: {rid}\tDuration: {duration_ms:.2f} ms{init}\n"
    )
    return base64.b64encode(text.encode()[-4096:]).decode()


def _respond(body: bytes, status: int, headers: dict[str, str] | None = None) -> Response:
    from flask import Response

    return Response(body, status=status, headers=headers or {}, content_type="application/json")


def serve(
    bundle_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 9000,
    token: str | None = None,
    threads: int = 8,
) -> None:
    """Load the cloud part and serve both APIs with waitress until interrupted.

    Raises:
        ConfigError: ``host`` is not a loopback address and no ``token`` is set.
    """
    from service_http.wsgi import require_token_off_loopback
    from service_http.wsgi import serve as wsgi_serve

    require_token_off_loopback(host, token, "serve-cloud")
    wsgi_serve(create_app(bundle_path, token=token), host=host, port=port, threads=threads)
