"""The edge service's OpenAPI document: the shared contract's (:mod:`service_http.openapi`)."""

from __future__ import annotations

from service_http.openapi import TENSOR_MEDIA, openapi_document

__all__ = ["TENSOR_MEDIA", "openapi_document"]
