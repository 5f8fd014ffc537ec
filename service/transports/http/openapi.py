"""The OpenAPI document as the service really answers: every error status each route can give, with the
service's error body ({"error": {kind, message, field}}) instead of FastAPI's default 422 shape, the
`X-Request-Timeout` header of the scoring routes, /readyz's 503 and /metrics' text format. Schema fuzzing
(tests/integration/test_fuzz.py) checks every answer against this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from rmserve.service.transports.http.body import TIMEOUT_HEADER


class ErrorDetail(BaseModel):
    kind: str = Field(description="validation, overloaded, timeout, unavailable, unauthenticated or internal.")
    message: str = Field(description="What was wrong, naming the limit when one was passed.")
    field: str | None = Field(description="The offending input, e.g. responses.1, body, X-Request-Timeout.")


class ErrorBody(BaseModel):
    error: ErrorDetail


_WHY = {
    "401": "Missing or invalid API key.",
    "413": "Request body larger than max_request_bytes.",
    "415": "A body that is not JSON (Content-Type), or is compressed (Content-Encoding); the header is named.",
    "422": "Invalid input; the field and the limit are named.",
    "429": "Queue full; retry after Retry-After.",
    "503": "Model not loaded yet, or shutting down; retry after Retry-After.",
    "504": "The request's deadline passed before it was scored.",
}
_SCORING = ("401", "413", "415", "422", "429", "503", "504")
_ERRORS_BY_PATH = {
    "/score": _SCORING, "/compare": _SCORING, "/get_reward": _SCORING,
    "/v1/model": ("401", "503"),
    "/admin/reload": ("401", "413", "415", "422", "503"),
    "/healthz": ("401",), "/metrics": ("401",), "/readyz": ("401",),
}


def _error_response(status: str) -> dict[str, Any]:
    return {"description": _WHY[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


def _patch(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    defs = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(defs.pop("$defs", {}))
    components["ErrorBody"] = defs
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in _ERRORS_BY_PATH.get(path, ()):
                responses[status] = _error_response(status)
            if method == "post" and path in ("/score", "/compare", "/get_reward"):
                operation.setdefault("parameters", []).append({
                    "name": TIMEOUT_HEADER, "in": "header", "required": False,
                    "description": "Seconds this request may take; queued work still waiting then is dropped (504).",
                    "schema": {"type": "number", "exclusiveMinimum": 0}})
    ready = schema["paths"].get("/readyz", {}).get("get")
    if ready:
        body = {"type": "object", "properties": {"ready": {"type": "boolean"}}, "required": ["ready"]}
        ready["responses"]["200"]["content"] = {"application/json": {"schema": body}}
        ready["responses"]["503"] = {"description": "Not ready (loading, or shutting down).",
                                     "content": {"application/json": {"schema": body}}}
    metrics = schema["paths"].get("/metrics", {}).get("get")
    if metrics:
        metrics["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}


def install(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _patch(generate())  # FastAPI caches the document it returns; patched once, in place
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
