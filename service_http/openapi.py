"""The OpenAPI 3 document of the serving contract (``GET /openapi.json`` of every server).

One document for ``serve-edge``, ``serve-pipeline``, ``serve-widths`` and ``serve-views``
(see :mod:`service_http.contract`); a server without exits leaves out the threshold parameters.
"""

from __future__ import annotations

from typing import Any

TENSOR_MEDIA = "application/x-edgelesspart-tensor"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "status"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "status": {"type": "integer"},
            },
        }
    },
}

_ANSWER = {
    "type": "object",
    "required": ["label", "confidence", "exit", "stage", "degraded"],
    "properties": {
        "label": {"type": "integer", "nullable": True},
        "class_name": {"type": "string", "nullable": True},
        "confidence": {"type": "number"},
        "exit": {"type": "string", "nullable": True},
        "stage": {"type": "string"},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        "degraded": {"type": "boolean"},
        "reason": {"type": "string", "nullable": True},
        "node": {"description": "who computed the answer (pipeline node, views fused)"},
        "widths": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}

_INFER_RESPONSE = {
    "type": "object",
    "required": ["answers", "bundle_id"],
    "properties": {
        "answers": {"type": "array", "items": {"$ref": "#/components/schemas/Answer"}},
        "bundle_id": {"type": "string"},
        "threshold": {"type": "number"},
        "rows": {"type": "integer"},
        "offloaded": {"type": "integer"},
        "degraded": {"type": "integer"},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        "request_id": {"type": "string"},
    },
}

_JSON_INPUT = {
    "type": "object",
    "description": "Either tensor_b64 (an encoded tensor, base64) or inputs (nested lists).",
    "properties": {
        "tensor_b64": {"type": "string", "format": "byte"},
        "inputs": {"type": "array", "items": {}},
        "threshold": {"type": "number"},
        "bundle_id": {"type": "string"},
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(c): {"description": "Error", "content": ref} for c in codes}


def _json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _infer_operation(thresholds: bool = True) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    parameters = [{"name": "X-EdgeLessPart-Bundle", "in": "header", "schema": {"type": "string"}}]
    if thresholds:
        parameters += [
            {"name": "threshold", "in": "query", "schema": {"type": "number"}},
            {"name": "X-EdgeLessPart-Threshold", "in": "header", "schema": {"type": "number"}},
        ]
    return {
        "operationId": "infer",
        "summary": "Classify a batch; confident rows answer at an edge exit, others go on.",
        "security": [{}, {"bearer": []}],
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {
                TENSOR_MEDIA: binary,
                "application/octet-stream": binary,
                "application/json": {"schema": _JSON_INPUT},
                "image/png": binary,
                "image/jpeg": binary,
            },
        },
        "responses": {
            "200": _json_ok("One answer per row", {"$ref": "#/components/schemas/InferResponse"}),
            **_errors(400, 401, 409, 413, 415, 422, 429, 503),
        },
    }


def openapi_document(
    title: str, version: str, bundle_id: str, *, thresholds: bool = True
) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document describing every route of the contract.

    ``thresholds``: whether ``/v1/infer`` takes a threshold override (servers with exits).
    """
    obj = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": version,
            "description": f"EdgeLessPart service for bundle {bundle_id}.",
        },
        "paths": {
            "/v1/infer": {"post": _infer_operation(thresholds)},
            "/v1/bundle": {
                "get": {
                    "operationId": "bundle",
                    "summary": "The served bundle: id, classes, input, stages, exits.",
                    "responses": {"200": _json_ok("Bundle summary", obj), **_errors(401)},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and readiness.",
                    "responses": {
                        "200": _json_ok("Ready", obj),
                        "503": _json_ok("Alive but not ready", obj),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: 200 when every part can answer, else 503.",
                    "responses": {
                        "200": _json_ok("Ready", obj),
                        "503": _json_ok("Not ready", obj),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus text exposition.",
                    "responses": {
                        "200": {
                            "description": "Metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {"200": _json_ok("OpenAPI 3 document", obj)},
                }
            },
        },
        "components": {
            "schemas": {"Answer": _ANSWER, "InferResponse": _INFER_RESPONSE, "Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
