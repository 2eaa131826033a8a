"""Typed HTTP errors, rendered once as JSON.

Every service in EdgeLessPart (the edge app, the cloud HTTP entry, the local Lambda server)
registers the same handlers: one for :class:`ServiceError`, one for library errors, one for
werkzeug's ``HTTPException`` (so 404, 405 and 413 are JSON too) and one for anything else (a
500 with a correlation id that is also in the log line with the traceback). Library errors are
mapped to a ``ServiceError`` by :func:`from_library_error`: only what the caller caused is 4xx
(bad input, a bad tensor, a threshold out of range, a tensor made for another bundle); a broken
bundle or a segment that fails on validated input is the server's fault, 500::

    ServiceError(status, code, message)
    ├── BadRequest          400  malformed body, bad base64, bad threshold, unknown codec
    ├── Unauthorized        401  missing or wrong bearer token
    ├── BundleMismatch      409  the tensor was made for another bundle
    ├── PayloadTooLarge     413  body over the configured limit
    ├── UnsupportedMedia    415  a content type the route does not read
    ├── InvalidInput        422  wrong shape or dtype, NaN or Inf
    ├── TooManyRequests     429  every admission slot is taken (carries ``Retry-After``)
    └── InternalError       500  a server fault; the body and the log carry one correlation id
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from edgelesspart.errors import (
    BundleMismatchError,
    CodecError,
    ConfigError,
    EdgeLessPartError,
    InputError,
    QueueDeadline,
    ServiceClosed,
)

if TYPE_CHECKING:
    from flask import Flask

LOG = logging.getLogger("edgelesspart.service")


class ServiceError(Exception):
    """An error with an HTTP status, a stable machine-readable code and a human message."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


class BadRequest(ServiceError):
    """The request could not be parsed."""

    status = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    """The bearer token is missing or wrong."""

    status = 401
    code = "unauthorized"


class BundleMismatch(ServiceError):
    """The request was made for a different bundle than the one served."""

    status = 409
    code = "bundle_mismatch"


class PayloadTooLarge(ServiceError):
    """The body is larger than the configured limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMedia(ServiceError):
    """The content type is not one the route reads."""

    status = 415
    code = "unsupported_media_type"


class InvalidInput(ServiceError):
    """The tensor does not match what the bundle expects (shape, dtype, NaN/Inf)."""

    status = 422
    code = "invalid_input"


class TooManyRequests(ServiceError):
    """Every admission slot is taken; the client should retry after ``retry_after_s``."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after_s)))})


class InternalError(ServiceError):
    """A fault of the server; the message carries the correlation id of the log line."""

    status = 500
    code = "internal_error"


def internal_error(exc: BaseException, where: str = "request") -> InternalError:
    """Log ``exc`` with its traceback under a new correlation id; the 500 that names that id."""
    correlation = uuid.uuid4().hex[:16]
    LOG.error(
        "internal error [%s] in %s: %s: %s",
        correlation,
        where,
        type(exc).__name__,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return InternalError(
        f"Internal server error (correlation id {correlation}); the server log has the details."
    )


def from_library_error(exc: EdgeLessPartError) -> ServiceError:
    """Map a library error raised while serving a request to a ServiceError.

    4xx only for what the caller caused; anything else (a broken bundle, a segment that failed
    on validated input, a missing codec library) is a logged 500 with a correlation id.
    """
    message = str(exc)
    if isinstance(exc, InputError):
        return InvalidInput(message)
    if isinstance(exc, CodecError):
        return BadRequest(message, code="bad_tensor")
    if isinstance(exc, BundleMismatchError):
        return BundleMismatch(message)
    if isinstance(exc, ConfigError):
        return BadRequest(message, code="bad_parameter")
    if isinstance(exc, QueueDeadline):  # the queue ahead cannot be served in time: shed load
        return TooManyRequests(message)
    if isinstance(exc, ServiceClosed):  # shutting down: retry elsewhere, not a client error
        return ServiceError(message, status=503, code="stopping", headers={"Retry-After": "1"})
    return internal_error(exc)


def register_error_handlers(app: Flask) -> None:
    """Render ServiceError, library errors and werkzeug HTTPExceptions as JSON on ``app``."""
    from flask import jsonify
    from werkzeug.exceptions import HTTPException

    def _render(err: ServiceError):
        response = jsonify(err.to_dict())
        response.status_code = err.status
        for key, value in err.headers.items():
            response.headers[key] = value
        return response

    @app.errorhandler(ServiceError)
    def _service_error(err: ServiceError):
        if err.status < 500:
            LOG.info("request refused: %s %s", err.status, err.message)
        return _render(err)

    @app.errorhandler(EdgeLessPartError)
    def _library_error(err: EdgeLessPartError):
        return _service_error(from_library_error(err))

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        code = (err.name or "http_error").lower().replace(" ", "_")
        status = err.code or 500
        message = err.description or err.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"Request body is larger than the limit of {limit} bytes; send less data."
        response = _render(ServiceError(message, status=status, code=code))
        for key, value in err.get_headers():
            if key.lower() == "allow":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        if isinstance(err, HTTPException):  # Flask routes these to _http_error; belt and braces
            return _http_error(err)
        return _render(internal_error(err))
