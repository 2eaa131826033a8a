"""Typed configuration of the edge service; defaults live here and only here.

Precedence is argument > environment > default: :meth:`EdgeConfig.from_env` reads the
``EDGELESSPART_*`` variables listed in :data:`ENV_NAMES` and then applies explicit overrides.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from edgelesspart.errors import ConfigError
from edgelesspart.runtime.batching import BatchSettings
from service_http.auth import DEFAULT_PUBLIC_ROUTES, parse_routes

MIB = 1024 * 1024
BUNDLE_ENV = "EDGELESSPART_BUNDLE"
#: Codec used when neither the config nor the bundle's manifest names one.
DEFAULT_CODEC = "raw"

#: Every environment variable the edge service reads, by config field.
ENV_NAMES: dict[str, str] = {
    "cloud": "EDGELESSPART_CLOUD",
    "threshold": "EDGELESSPART_THRESHOLD",
    "token": "EDGELESSPART_TOKEN",
    "cloud_token": "EDGELESSPART_CLOUD_TOKEN",
    "cloud_id_token_file": "EDGELESSPART_CLOUD_ID_TOKEN_FILE",
    "lambda_endpoint": "EDGELESSPART_LAMBDA_ENDPOINT",
    "region": "EDGELESSPART_REGION",
    "max_content_length": "EDGELESSPART_MAX_CONTENT_LENGTH",
    "max_batch": "EDGELESSPART_MAX_BATCH",
    "offload_timeout_s": "EDGELESSPART_OFFLOAD_TIMEOUT",
    "offload_retries": "EDGELESSPART_OFFLOAD_RETRIES",
    "offload_workers": "EDGELESSPART_OFFLOAD_WORKERS",
    "codec": "EDGELESSPART_CODEC",
    "backend": "EDGELESSPART_BACKEND",
    "max_inflight": "EDGELESSPART_MAX_INFLIGHT",
    "max_queue": "EDGELESSPART_MAX_QUEUE",
    "queue_timeout_s": "EDGELESSPART_QUEUE_TIMEOUT",
    "retry_after_s": "EDGELESSPART_RETRY_AFTER",
    "breaker_failures": "EDGELESSPART_BREAKER_FAILURES",
    "breaker_reset_s": "EDGELESSPART_BREAKER_RESET",
    "public_routes": "EDGELESSPART_PUBLIC_ROUTES",
    "batch_max_rows": "EDGELESSPART_BATCH_MAX_ROWS",
    "batch_delay_us": "EDGELESSPART_BATCH_DELAY_US",
    "batch_workers": "EDGELESSPART_BATCH_WORKERS",
    "offload_max_bytes": "EDGELESSPART_OFFLOAD_MAX_BYTES",
    "dispatch": "EDGELESSPART_DISPATCH",
}

#: How the event-loop server runs the edge stage of a hot ``/v1/infer`` request (``dispatch``).
DISPATCH_MODES = ("auto", "inline", "pool")


@dataclass(frozen=True)
class EdgeConfig:
    """Settings of one edge service.

    Attributes:
        cloud: where pending rows go: ``http(s)://HOST:PORT`` (an HTTP cloud entry),
            ``lambda://FUNCTION`` (AWS Lambda through boto3) or ``None`` (edge only: pending rows
            are answered from the best local exit, marked degraded).
        threshold: default confidence threshold ``c_thr``; above 1 means "never exit early".
            ``None`` (default): the bundle's ``manifest.serving.threshold``, chosen by the build
            on validation (0.8 for a bundle that records none).
        threshold_min: lowest threshold a request may ask for.
        threshold_max: highest threshold a request may ask for.
        token: bearer token the edge requires on every route except ``public_routes``
            (``None``: no auth).
        cloud_token: shared secret of a cloud started with ``--token``: every offload is signed
            with it (HMAC-SHA256 of the body and a timestamp for ``http(s)://``, an ``auth``
            field in the event for ``lambda://``); the secret itself is never sent.
        cloud_id_token_file: a file holding a Google ID token sent as ``Authorization: Bearer``
            to an ``https://`` Cloud Function behind IAM (re-read when it changes); ``None``: a
            public function URL, guarded by the signature alone.
        lambda_endpoint: boto3 ``endpoint_url`` for ``lambda://`` (a local server in tests).
        region: AWS region for ``lambda://``.
        max_content_length: largest request body in bytes (Flask ``MAX_CONTENT_LENGTH``).
        max_batch: most rows in one request.
        offload_timeout_s: read timeout of one cloud call.
        connect_timeout_s: connect timeout of one cloud call.
        offload_retries: extra attempts after a failed cloud call.
        offload_workers: cloud calls in flight at once; beyond that rows are answered degraded
            right away, so a slow cloud can never occupy every request thread.
        codec: how the boundary tensor crosses the link (see ``edgelesspart.runtime.codecs``);
            ``None`` (default) uses the bundle's codec from ``manifest.codec`` (chosen at build
            time), or ``raw`` when the manifest names none.
        pool_size: LiteRT interpreters per segment (concurrent requests served in parallel).
        backend: segment engine, ``litert`` (default) or ``keras`` (TensorFlow, GPU when
            visible); see :mod:`edgelesspart.runtime.backends`.
        verify: check the bundle's file hashes at load time.
        max_inflight: ``/v1/infer`` requests at work at once (admission control; default 32).
        max_queue: further requests that may wait (default 96); beyond ``max_inflight +
            max_queue`` a request gets 429 at once. Under the event-loop server a waiting
            request waits in the batcher's queue, not in a thread.
        queue_timeout_s: the queueing deadline (default 1 s): the longest a request may wait
            for a slot, and for its batch to start; a request whose wait, estimated from the
            rows queued ahead and the measured cost per row, exceeds it is refused with 429 at
            once, as in Triton's queue policy. So the defaults queue instead of refusing: 429
            only when the queue cannot be served in time.
        retry_after_s: the ``Retry-After`` seconds sent with a 429.
        breaker_failures: consecutive cloud failures that open the circuit breaker.
        breaker_reset_s: seconds the breaker stays open before one trial call (half-open).
        public_routes: routes open without ``token`` (default ``/healthz`` only; ``/metrics``,
            ``/openapi.json`` and ``/v1/*`` then need the token). A comma-separated list in
            ``EDGELESSPART_PUBLIC_ROUTES``.
        batch_max_rows: dynamic batching: most rows in one edge-stage run (0 = off, the
            default). Off by default because P3 measured it slower here: one batch worker runs
            LiteRT on one core, while unbatched requests run on ``pool_size`` interpreters in
            parallel (``experiments/bench_p3_throughput.py``, issue 24).
        batch_delay_us: dynamic batching: longest wait for more requests, in microseconds
            (0 = never wait on purpose; requests that queued meanwhile are still coalesced).
        batch_workers: dynamic batching: batches run at once.
        offload_max_bytes: largest body of one HTTP offload (default 8 MiB, the cloud HTTP
            entry's limit); larger offloads are split into chunks sent concurrently. Lambda
            offloads always stay under Lambda's 6 MB event limit.
        dispatch: where the event-loop server runs the edge stage of a hot request:
            ``inline`` on the loop's own thread (no hand-off: what one uvicorn worker does),
            ``pool`` on a worker thread (LiteRT releases the GIL, so one process uses several
            cores), or ``auto`` (default): inline when the edge stage takes under
            ``INLINE_MAX_MS`` per row on this host, or under ``INLINE_MAX_MS_WORKERS`` with
            ``workers > 1`` (one process per core then), else pool. Batching always uses its
            batcher; a row that must wait for the cloud is always finished on a thread.
        workers: pre-forked processes serving the port (``serve-edge --workers``), for
            ``dispatch`` ``auto``.
    """

    cloud: str | None = None
    threshold: float | None = None
    threshold_min: float = 0.0
    threshold_max: float = 1.0
    token: str | None = None
    cloud_token: str | None = None
    cloud_id_token_file: str | None = None
    lambda_endpoint: str | None = None
    region: str = "us-east-1"
    max_content_length: int = 8 * MIB
    max_batch: int = 64
    offload_timeout_s: float = 2.0
    connect_timeout_s: float = 0.5
    offload_retries: int = 1
    offload_workers: int = 4
    codec: str | None = None
    pool_size: int = 4
    backend: str = "litert"
    verify: bool = True
    max_inflight: int = 32
    max_queue: int = 96
    queue_timeout_s: float = 1.0
    retry_after_s: int = 1
    breaker_failures: int = 5
    breaker_reset_s: float = 10.0
    public_routes: tuple[str, ...] = DEFAULT_PUBLIC_ROUTES
    batch_max_rows: int = 0
    batch_delay_us: int = 0
    batch_workers: int = 1
    offload_max_bytes: int = 8 * MIB
    dispatch: str = "auto"
    workers: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_routes", parse_routes(self.public_routes))
        self.batch_settings()  # validates the three batching fields
        if self.threshold is not None and (math.isnan(self.threshold) or self.threshold < 0):
            raise ConfigError(
                f"threshold must be a number >= 0 (above 1 disables early exits), got "
                f"{self.threshold!r}."
            )
        if not 0.0 <= self.threshold_min <= self.threshold_max:
            raise ConfigError(
                f"threshold bounds must satisfy 0 <= min <= max, got "
                f"[{self.threshold_min}, {self.threshold_max}]."
            )
        for name in (
            "max_content_length",
            "max_batch",
            "offload_workers",
            "pool_size",
            "max_inflight",
            "retry_after_s",
            "breaker_failures",
            "offload_max_bytes",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}.")
        if self.dispatch not in DISPATCH_MODES:
            raise ConfigError(
                f"dispatch must be one of {', '.join(DISPATCH_MODES)}, got {self.dispatch!r}."
            )
        if self.offload_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError("offload_timeout_s and connect_timeout_s must be > 0 seconds.")
        if self.max_queue < 0 or self.queue_timeout_s < 0 or self.breaker_reset_s < 0:
            raise ConfigError(
                "max_queue, queue_timeout_s and breaker_reset_s must be >= 0, got "
                f"{self.max_queue!r}, {self.queue_timeout_s!r}, {self.breaker_reset_s!r}."
            )
        from edgelesspart.runtime.backends import check_backend

        check_backend(self.backend)
        if self.offload_retries < 0:
            raise ConfigError(f"offload_retries must be >= 0, got {self.offload_retries!r}.")
        if self.cloud is not None and not self.cloud.startswith(
            ("http://", "https://", "lambda://")
        ):
            raise ConfigError(
                f"cloud must be an http(s):// URL or lambda://FUNCTION_NAME, got {self.cloud!r}."
            )
        if self.cloud == "lambda://":
            raise ConfigError("lambda:// needs a function name, e.g. lambda://edgelesspart-cloud.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EdgeConfig:
        """Build a config: explicit ``overrides`` win over ``env`` (default ``os.environ``).

        Raises:
            ConfigError: an environment value cannot be converted, or a value is out of range.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, variable in ENV_NAMES.items():
            if variable in env and env[variable] != "":
                values[name] = _convert(variable, env[variable], types[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(types)
        if unknown:
            raise ConfigError(
                f"Unknown edge config keys {sorted(unknown)}; known: {sorted(types)}."
            )
        return cls(**values)

    def with_bundle_codec(self, codec_entry: Mapping[str, Any] | None) -> EdgeConfig:
        """This config with ``codec`` taken from a manifest ``codec`` entry unless already set."""
        if self.codec is not None:
            return self
        name = (codec_entry or {}).get("name") or DEFAULT_CODEC
        return replace(self, codec=str(name))

    def with_bundle_threshold(self, serving: Mapping[str, Any] | None) -> EdgeConfig:
        """This config with ``threshold`` from a manifest ``serving`` entry unless already set."""
        if self.threshold is not None:
            return self
        from edgelesspart.runtime.confidence import serving_threshold

        return replace(self, threshold=serving_threshold(serving))

    def with_overrides(self, **overrides: Any) -> EdgeConfig:
        """A copy with the non-``None`` overrides applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def batch_settings(self) -> BatchSettings:
        """The dynamic batching settings (disabled when ``batch_max_rows`` is 0)."""
        return BatchSettings(self.batch_max_rows, self.batch_delay_us, self.batch_workers)

    def check_threshold(self, value: Any) -> float:
        """Validate a per-request threshold against ``[threshold_min, threshold_max]``.

        Accepts a JSON number (not ``true``/``false``) or, from a query string or header, the
        text of one; a JSON string is refused by the caller before it gets here.

        Raises:
            ConfigError: not a number, NaN, or outside the configured bounds.
        """
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(
                f"threshold must be a number, got {_short(value)} ({type(value).__name__})."
            )
        try:
            threshold = float(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"threshold must be a number, got {_short(value)}.") from exc
        if math.isnan(threshold) or not self.threshold_min <= threshold <= self.threshold_max:
            raise ConfigError(
                f"threshold {_short(value)} is outside the allowed range "
                f"[{self.threshold_min}, {self.threshold_max}] of this service."
            )
        return threshold


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a client may send megabytes)."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else "a huge int"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _convert(variable: str, raw: str, kind: Any) -> Any:
    kind = str(kind)
    try:
        if "float" in kind:
            return float(raw)
        if "int" in kind:
            return int(raw)
        if "bool" in kind:
            return raw.strip().lower() in {"1", "true", "yes", "on"}
    except ValueError as exc:
        raise ConfigError(
            f"Environment variable {variable}={raw!r} is not a valid {kind}."
        ) from exc
    return raw
