"""The edge service's HTTP errors: re-exported from :mod:`service_http.errors` (shared)."""

from service_http.errors import (  # noqa: F401
    BadRequest,
    BundleMismatch,
    InternalError,
    InvalidInput,
    PayloadTooLarge,
    ServiceError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMedia,
    from_library_error,
    internal_error,
    register_error_handlers,
)
