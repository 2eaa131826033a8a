"""Send pending rows' boundary tensor to the cloud part, with timeouts, retries and a breaker.

Three transports share one :class:`Offloader` protocol (one method, :meth:`offload`):

* :class:`HttpOffloader` POSTs the encoded tensor to ``<url>/v1/continue`` over a keep-alive
  ``requests`` session (one per thread), always with ``timeout=(connect, read)``;
* :class:`LambdaOffloader` calls ``boto3.client("lambda").invoke`` (``endpoint_url``
  configurable) with the tensor base64-encoded inside the JSON event;
* :class:`InProcessOffloader` calls a :class:`~edgelesspart.runtime.cloud.CloudPart` directly
  (tests and evaluation).

Every call goes through a :class:`CircuitBreaker` and is retried at most ``policy.retries``
times with exponential backoff plus random jitter. Failures surface as
:class:`~edgelesspart.errors.OffloadTimeout`, :class:`~edgelesspart.errors.OffloadUnavailable`
or :class:`~edgelesspart.errors.OffloadRejected`; the edge service turns them into degraded
answers from its best local exit, so no request is lost. Tensors travel in the codec wire
format (:mod:`edgelesspart.runtime.codecs`), never pickle.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import numpy as np

from edgelesspart.errors import (
    ConfigError,
    EdgeLessPartError,
    OffloadError,
    OffloadRejected,
    OffloadTimeout,
    OffloadUnavailable,
)
from edgelesspart.runtime import codecs, signing
from edgelesspart.runtime.resilience import DEFAULT_POLICY, CircuitBreaker, OffloadPolicy
from edgelesspart.runtime.wire import MAX_REQUEST_ROWS

if TYPE_CHECKING:  # pragma: no cover
    from edgelesspart.runtime.cloud import CloudPart

__all__ = [
    "DEFAULT_POLICY",
    "BaseOffloader",
    "CircuitBreaker",
    "HttpOffloader",
    "InProcessOffloader",
    "LambdaOffloader",
    "OffloadPolicy",
    "Offloader",
    "check_answers",
    "lambda_client",
]

TENSOR_CONTENT_TYPE = "application/x-edgelesspart-tensor"
CONTINUE_PATH = "/v1/continue"
#: AWS Lambda's synchronous invocation payload limit (bytes).
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024
#: Largest body an HTTP offload sends by default: the cloud HTTP entry accepts 8 MiB.
HTTP_REQUEST_LIMIT = 8 * 1024 * 1024
_NON_RETRYABLE_STATUS = frozenset(range(400, 500)) - {408, 429}


class Offloader(Protocol):
    """Sends a boundary tensor to the next stage and returns one answer dict per row."""

    def offload(self, boundary: np.ndarray, *, threshold: float, meta: dict) -> list[dict]:
        """Continue ``boundary`` (pending rows) in the cloud part; raise ``OffloadError``."""
        ...


def _retryable(exc: OffloadError) -> bool:
    if isinstance(exc, OffloadRejected):
        return exc.status is None or exc.status not in _NON_RETRYABLE_STATUS
    return True


#: Cloud refusals that mean the edge is set up wrong (token, URL/function name, bundle), not
#: that this one request was bad: they count as breaker failures and are reported loudly.
CONFIG_ERROR_STATUS = frozenset({401, 403, 404, 405, 409})


def _malformed(message: str) -> OffloadRejected:
    return OffloadRejected(f"The cloud part sent a malformed response: {message}", status=502)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_answer(answer: Any, index: int = 0) -> dict[str, Any]:
    """Validate one cloud answer dict and return a clean copy (``timings`` as floats).

    Raises:
        OffloadRejected: status 502, naming the first field that is missing or of the wrong type.
    """
    where = f"answer {index}"
    if not isinstance(answer, dict):
        raise _malformed(f"{where} is a {type(answer).__name__}, expected an object.")
    label = answer.get("label")
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise _malformed(f"{where} has label {label!r:.60}, expected an int >= 0.")
    confidence = answer.get("confidence")
    if not _real(confidence) or not -1e-6 <= confidence <= 1.0 + 1e-6:
        raise _malformed(f"{where} has confidence {confidence!r:.60}, expected a number in [0, 1].")
    for key in ("class_name", "exit", "stage"):
        if not isinstance(answer.get(key), str) or not answer[key]:
            raise _malformed(f"{where} has {key} {answer.get(key)!r:.60}, expected a string.")
    timings = answer.get("timings", {})
    if not isinstance(timings, dict) or not all(
        isinstance(k, str) and _real(v) for k, v in timings.items()
    ):
        raise _malformed(f"{where} has timings {timings!r:.80}, expected {{name: ms}}.")
    reason = answer.get("reason")
    if not isinstance(answer.get("degraded", False), bool) or not (
        reason is None or isinstance(reason, str)
    ):
        raise _malformed(f"{where} has a non-boolean 'degraded' or a non-string 'reason'.")
    return {
        **answer,
        "timings": {k: float(v) for k, v in timings.items()},
        "degraded": answer.get("degraded", False),
        "reason": reason,
    }


def check_answers(data: Any, rows: int) -> list[dict]:
    """Validate a cloud response body and return its ``answers`` list, every field checked.

    Raises:
        OffloadRejected: the body is not ``{"answers": [...]}`` with one well-formed answer per
            row (label int, confidence in [0, 1], class_name/exit/stage strings, timings a
            mapping of numbers, degraded a bool, reason a string or null).
    """
    answers = data.get("answers") if isinstance(data, dict) else None
    if not isinstance(answers, list) or len(answers) != rows:
        got = type(answers).__name__ if not isinstance(answers, list) else f"{len(answers)} answers"
        raise _malformed(f"expected 'answers' with {rows} entries, got {got}.")
    return [check_answer(answer, i) for i, answer in enumerate(answers)]


class BaseOffloader(ABC):
    """Retry, backoff, jitter and circuit-breaker logic shared by every transport.

    Subclasses implement :meth:`_send` (one attempt) and may override :meth:`_prepare` (the
    request body) and ``max_request_bytes`` (the largest body; bigger offloads are split);
    ``rng`` and ``sleep`` are injectable so tests can check the backoff without waiting.
    """

    #: Largest request body this transport may send (``None``: no limit).
    max_request_bytes: int | None = None
    #: Most rows in one request (the cloud part refuses more); bigger offloads are split.
    max_request_rows: int | None = MAX_REQUEST_ROWS
    #: Chunks of one split offload in flight at once.
    max_parallel: int = 4

    def __init__(
        self,
        policy: OffloadPolicy = DEFAULT_POLICY,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(policy, OffloadPolicy):
            raise ConfigError(f"policy must be an OffloadPolicy, got {type(policy).__name__}.")
        self.policy = policy
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_reset_s)
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._stats = {"calls": 0, "attempts": 0, "failures": 0, "bytes_sent": 0}
        self._chunk_pool: ThreadPoolExecutor | None = None

    def stats(self) -> dict[str, int]:
        """Counters: calls, attempts (incl. retries), failed calls, bytes sent."""
        with self._lock:
            return dict(self._stats)

    def _count(self, key: str, amount: int = 1) -> None:
        with self._lock:
            self._stats[key] += amount

    def offload(self, boundary: np.ndarray, *, threshold: float, meta: dict) -> list[dict]:
        """Encode ``boundary`` and send it, retrying per the policy; one answer dict per row.

        Rows whose request would exceed the transport's size limit (Lambda: the 6 MB event) or
        the cloud part's row limit (``max_request_rows``) are split into chunks that fit, sent
        concurrently (at most ``max_parallel`` at once); the call fails if any chunk fails. A
        local refusal (nothing to send, a single row over the limit, an encoding error) never
        reaches the cloud and never touches the breaker.

        Raises:
            OffloadTimeout, OffloadUnavailable, OffloadRejected: the cloud could not answer.
        """
        array = np.asarray(boundary)
        if array.ndim < 1 or array.shape[0] == 0:
            raise OffloadRejected(f"Nothing to offload: boundary has shape {array.shape}.", 400)
        chunks = self._chunks(array, float(threshold), dict(meta))
        self._count("calls")
        try:
            if len(chunks) == 1:
                return self._call(chunks[0])
            return self._parallel(chunks)
        except OffloadError:
            self._count("failures")
            raise

    def _encode(self, array: np.ndarray, threshold: float, meta: dict) -> bytes:
        try:
            return codecs.encode_tensor(
                array,
                self.policy.codec,
                meta={**meta, "rows": int(len(array)), "threshold": threshold},
            )
        except EdgeLessPartError as exc:  # nothing was sent: a local problem, not the cloud's
            raise OffloadRejected(f"Could not encode the boundary tensor: {exc}", 400) from exc

    def _chunks(self, array: np.ndarray, threshold: float, meta: dict) -> list[_Chunk]:
        """Prepared requests for ``array``, split so that each fits ``max_request_rows`` and
        ``max_request_bytes``."""
        most = self.max_request_rows
        if most is not None and len(array) > most:
            parts: list[_Chunk] = []
            for start in range(0, len(array), most):
                parts += self._chunks(array[start : start + most], threshold, meta)
            return parts
        request = self._prepare(self._encode(array, threshold, meta), threshold)
        limit = self.max_request_bytes
        if limit is None or len(request) <= limit:
            return [_Chunk(len(array), request)]
        if len(array) == 1:
            raise OffloadRejected(
                f"One row's request is {len(request)} bytes, over this transport's limit of "
                f"{limit} bytes (Lambda's synchronous payload limit is {LAMBDA_PAYLOAD_LIMIT}); "
                "use a compressing codec (e.g. fp16+lz4 or int8+zstd) or an HTTP cloud.",
                status=413,
            )
        per_chunk = max(1, min(len(array) // 2, int(len(array) * limit * 0.9 / len(request))))
        chunks: list[_Chunk] = []
        for start in range(0, len(array), per_chunk):
            chunks += self._chunks(array[start : start + per_chunk], threshold, meta)
        return chunks

    def _call(self, chunk: _Chunk) -> list[dict]:
        return self._with_retries(lambda: self._send(chunk.request, chunk.rows))

    def _parallel(self, chunks: list[_Chunk]) -> list[dict]:
        with self._lock:
            if self._chunk_pool is None:
                self._chunk_pool = ThreadPoolExecutor(self.max_parallel, "offload-chunk")
            pool = self._chunk_pool
        futures = [pool.submit(self._call, chunk) for chunk in chunks]
        answers: list[dict] = []
        for future in futures:
            answers += future.result()  # the first failure fails the call (all rows degrade)
        return answers

    def _prepare(self, payload: bytes, threshold: float) -> bytes:
        """The request body for an encoded tensor (the tensor itself, unless overridden)."""
        return payload

    def _with_retries(self, send: Callable[[], list[dict]]) -> list[dict]:
        attempt = 0
        while True:
            if not self.breaker.allow():
                raise OffloadUnavailable(
                    f"Circuit breaker is {self.breaker.state} after "
                    f"{self.breaker.consecutive_failures} consecutive failures; not calling the "
                    f"cloud for up to {self.policy.breaker_reset_s:g} s."
                )
            self._count("attempts")
            try:
                answers = send()
            except OffloadError as exc:
                if not _retryable(exc):
                    self._record_refusal(exc)
                    raise
                self.breaker.record_failure()
                if attempt >= self.policy.retries or not self.breaker.allow_retry():
                    raise
                self._sleep(self.policy.backoff(attempt, self._rng))
                attempt += 1
                continue
            except Exception as exc:  # a transport bug must not wedge the breaker half-open
                self.breaker.record_failure()
                raise OffloadUnavailable(
                    f"Offload failed unexpectedly ({type(exc).__name__}: {exc})."
                ) from exc
            self.breaker.record_success()
            return answers

    def _record_refusal(self, exc: OffloadError) -> None:
        """A cloud 4xx is not an answer: it never closes the breaker.

        A configuration error (401/403 wrong token, 404/405 wrong URL or function, 409 wrong
        bundle) will fail every call, so it counts as a failure; any other 4xx was about this
        request only and leaves the count alone (a half-open trial ends, the circuit re-opens).
        """
        if getattr(exc, "status", None) in CONFIG_ERROR_STATUS:
            self.breaker.record_failure()
        else:
            self.breaker.record_neutral()

    @abstractmethod
    def _send(self, request: bytes, rows: int) -> list[dict]:
        """Make one attempt with a prepared request; raise an :class:`OffloadError` subclass."""

    def close(self) -> None:
        """Release the chunk threads (subclasses also close their network resources)."""
        with self._lock:
            pool, self._chunk_pool = self._chunk_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Chunk:
    """One prepared request: ``rows`` boundary rows in ``request`` (the body to send)."""

    rows: int
    request: bytes


class HttpOffloader(BaseOffloader):
    """POST the encoded tensor to ``<url>/v1/continue`` over keep-alive HTTP.

    Args:
        url: base URL of the cloud part (``http://host:port``; a trailing ``/v1/continue`` is
            accepted too).
        policy: timeouts, retries, breaker and codec.
        token: optional shared secret: every request is signed with HMAC-SHA256 of its body
            and a timestamp (see :mod:`edgelesspart.runtime.signing`); the secret itself is
            never sent.
        max_request_bytes: largest body per request; bigger offloads are split into chunks
            (the cloud HTTP entry's default limit is 8 MiB).
        id_token_file: a file holding a Google ID token for the function URL, sent as
            ``Authorization: Bearer <token>`` to a Cloud Function behind IAM (``package-cloud
            --auth iam``); re-read when the file changes, so a cron job or sidecar can refresh
            the hourly token. The HMAC signature still rides in its own headers.
    """

    def __init__(
        self,
        url: str,
        policy: OffloadPolicy = DEFAULT_POLICY,
        token: str | None = None,
        max_request_bytes: int | None = HTTP_REQUEST_LIMIT,
        id_token_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, **kwargs)
        self.max_request_bytes = max_request_bytes
        self.id_token_file = id_token_file
        self._id_token: tuple[float, str] | None = None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"Cloud URL must start with http:// or https://, got {url!r}.")
        base = url.rstrip("/")
        self.url = base if base.endswith(CONTINUE_PATH) else base + CONTINUE_PATH
        self.token = token
        self._local = threading.local()
        self._sessions: list[Any] = []

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            session.mount("http://", HTTPAdapter(max_retries=0, pool_maxsize=4))
            session.mount("https://", HTTPAdapter(max_retries=0, pool_maxsize=4))
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _send(self, payload: bytes, rows: int) -> list[dict]:
        import requests

        headers = {"Content-Type": TENSOR_CONTENT_TYPE, "Accept": "application/json"}
        if self.token:
            headers.update(signing.sign_body(self.token, payload))
        if self.id_token_file:
            headers["Authorization"] = f"Bearer {self._read_id_token()}"
        timeout = (self.policy.connect_timeout_s, self.policy.timeout_s)
        try:
            response = self._session().post(
                self.url, data=payload, headers=headers, timeout=timeout
            )
        except requests.Timeout as exc:
            raise OffloadTimeout(f"No answer from {self.url} within {timeout} s: {exc}") from exc
        except requests.RequestException as exc:
            raise OffloadUnavailable(f"Cannot reach the cloud part at {self.url}: {exc}") from exc
        self._count("bytes_sent", len(payload))
        if response.status_code >= 400:
            raise OffloadRejected(
                f"The cloud part at {self.url} answered {response.status_code}: "
                f"{_error_text(response.text)}",
                status=response.status_code,
            )
        try:
            data = response.json()
        except ValueError as exc:
            raise OffloadRejected(
                f"The cloud part at {self.url} sent non-JSON ({response.text[:200]!r}).", 502
            ) from exc
        return check_answers(data, rows)

    def _read_id_token(self) -> str:
        """The ID token in :attr:`id_token_file`, re-read whenever the file changes."""
        import os

        path = str(self.id_token_file)
        try:
            mtime = os.stat(path).st_mtime
            cached = self._id_token
            if cached is None or cached[0] != mtime:
                with open(path, encoding="utf-8") as handle:
                    cached = (mtime, handle.read().strip())
                self._id_token = cached
        except OSError as exc:
            raise OffloadUnavailable(
                f"Cannot read the cloud ID token file {path}: {exc}. Write a Google ID token for "
                "the function URL there (e.g. gcloud auth print-identity-token)."
            ) from exc
        if not cached[1]:
            raise OffloadUnavailable(f"The cloud ID token file {path} is empty.")
        return cached[1]

    def close(self) -> None:
        """Close every keep-alive session this offloader opened."""
        super().close()
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()


def _error_text(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300]
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        return f"{err.get('type') or err.get('code')}: {err.get('message')}"
    return body[:300]


class InProcessOffloader(BaseOffloader):
    """Hand the tensor to a :class:`CloudPart` in this process (tests, evaluation).

    It encodes and decodes exactly like the network transports, and goes through the same
    retries and breaker; errors the cloud part raises become :class:`OffloadRejected`.
    """

    def __init__(
        self, cloud: CloudPart, policy: OffloadPolicy = DEFAULT_POLICY, **kwargs: Any
    ) -> None:
        super().__init__(policy, **kwargs)
        self.cloud = cloud

    def _send(self, payload: bytes, rows: int) -> list[dict]:
        from edgelesspart.runtime.cloud import status_for

        self._count("bytes_sent", len(payload))
        try:
            response = self.cloud.continue_request(payload)
        except EdgeLessPartError as exc:
            raise OffloadRejected(
                f"The cloud part refused the request: {exc}", status=status_for(exc)
            ) from exc
        return check_answers(response, rows)


_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    return host in ("127.0.0.1", "localhost", "::1")


def lambda_client(
    *, endpoint_url: str | None, region: str, connect_timeout_s: float, timeout_s: float
) -> Any:
    """The process-wide boto3 Lambda client for these settings (clients are thread-safe).

    botocore's own retries are off (``max_attempts: 0``): the offloader retries. A loopback
    ``endpoint_url`` (a local Lambda-API server) gets dummy credentials unless the environment
    provides real ones, so no credential lookup leaves the machine.
    """
    key = (endpoint_url, region, connect_timeout_s, timeout_s)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import os

            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=connect_timeout_s,
                read_timeout=timeout_s,
                retries={"max_attempts": 0},
                max_pool_connections=16,
            )
            creds: dict[str, str] = {}
            if _is_loopback(endpoint_url) and not os.environ.get("AWS_ACCESS_KEY_ID"):
                creds = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
            client = boto3.session.Session().client(
                "lambda", region_name=region, endpoint_url=endpoint_url, config=config, **creds
            )
            _CLIENTS[key] = client
    return client


class LambdaOffloader(BaseOffloader):
    """Invoke an AWS Lambda function (or a local Lambda-API server) with the tensor.

    The event is ``{"tensor_b64": <base64 of the encoded tensor>, "threshold": t}``; the
    function answers ``{"answers": [...], ...}`` or ``{"error": {...}, "status": 4xx}``.

    Args:
        function_name: the function name or ARN.
        endpoint_url: a custom endpoint (e.g. ``http://127.0.0.1:9000`` for ``serve-cloud``).
        region: AWS region.
        policy: timeouts, retries, breaker and codec.
        client: a boto3 Lambda client to use instead of the shared one.
        secret: optional shared secret: the event then carries an ``auth`` HMAC of its
            content and a timestamp (for a ``serve-cloud`` started with ``--token``; a real
            Lambda function is already authenticated by IAM/SigV4 and may ignore it).
    """

    def __init__(
        self,
        function_name: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        policy: OffloadPolicy = DEFAULT_POLICY,
        client: Any = None,
        secret: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(policy, **kwargs)
        self.secret = secret
        if not isinstance(function_name, str) or not function_name:
            raise ConfigError(
                f"Lambda function name must be a non-empty string, got {function_name!r}."
            )
        self.function_name = function_name
        self.endpoint_url = endpoint_url
        self.max_request_bytes = LAMBDA_PAYLOAD_LIMIT
        self.client = client or lambda_client(
            endpoint_url=endpoint_url,
            region=region,
            connect_timeout_s=policy.connect_timeout_s,
            timeout_s=policy.timeout_s,
        )

    def _prepare(self, payload: bytes, threshold: float) -> bytes:
        """The JSON event (signed when a secret is set) that carries the encoded tensor."""
        event: dict[str, Any] = {"tensor_b64": codecs.to_base64(payload), "threshold": threshold}
        if self.secret:
            event = signing.sign_event(self.secret, event)
        return json.dumps(event).encode("utf-8")

    def _send(self, data: bytes, rows: int) -> list[dict]:
        response, raw = self._invoke(data)
        self._count("bytes_sent", len(data))
        try:
            result = json.loads(raw)
        except ValueError as exc:
            raise OffloadRejected(f"Lambda returned non-JSON: {raw[:200]!r}.", 502) from exc
        return check_answers(_lambda_result(result, response.get("FunctionError")), rows)

    def _invoke(self, data: bytes) -> tuple[dict, bytes]:
        """Call ``invoke`` and read the streamed result; map botocore errors to ours."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            ReadTimeoutError,
        )

        where = f"Lambda function {self.function_name!r}" + (
            f" at {self.endpoint_url}" if self.endpoint_url else ""
        )
        try:
            response = self.client.invoke(
                FunctionName=self.function_name, InvocationType="RequestResponse", Payload=data
            )
            return response, response["Payload"].read()
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise OffloadTimeout(f"No answer from {where}: {exc}") from exc
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise OffloadRejected(f"{where} refused the call: {exc}", status=status) from exc
        except BotoCoreError as exc:
            raise OffloadUnavailable(f"Cannot reach {where}: {exc}") from exc


def _lambda_result(result: Any, function_error: str | None) -> Any:
    """Turn a Lambda error result into :class:`OffloadRejected`; pass answers through."""
    if isinstance(result, dict) and isinstance(result.get("error"), dict):
        err = result["error"]
        status = result.get("status")
        raise OffloadRejected(
            f"The cloud function refused the request: {err.get('type')}: {err.get('message')}",
            status=int(status) if isinstance(status, int) else 400,
        )
    if function_error or (isinstance(result, dict) and "errorType" in result):
        detail = (
            result
            if not isinstance(result, dict)
            else (f"{result.get('errorType')}: {result.get('errorMessage')}")
        )
        raise OffloadRejected(
            f"The cloud function failed ({function_error or 'Unhandled'}): {detail}", status=502
        )
    return result
