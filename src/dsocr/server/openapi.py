"""What ``/openapi.json`` says beyond what FastAPI derives from the routes: the error responses.

Every error a route answers is listed under its status with the one error envelope
(:class:`~dsocr.server.schemas.ErrorEnvelope`) and the headers it carries, from one table::

    @router.post("/v1/things", responses=error_responses(400, 401, 413, 503))

:func:`install_openapi` removes what FastAPI adds on its own but dsocr never sends: the
``HTTPValidationError`` 422 body (validation errors are answered with the envelope, as 422 on
the native routes and 400 on the OpenAI-compatible ones, each route listing its own).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from dsocr.server.runs import CACHE_HEADER
from dsocr.server.schemas import EXAMPLE_IMAGE, ErrorEnvelope
from dsocr.settings import EngineSettings

__all__ = [
    "CACHE_HEADER_DOC",
    "CHAT_REQUEST_EXAMPLE",
    "ERROR_DESCRIPTIONS",
    "RETRY_AFTER_HEADER",
    "error_responses",
    "install_openapi",
]

# A chat completion that succeeds on a server with the default model.
CHAT_REQUEST_EXAMPLE = {
    "model": EngineSettings.model_fields["model"].default,
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": EXAMPLE_IMAGE}},
                {"type": "text", "text": "document"},
            ],
        }
    ],
}

RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
# On a non-streamed answer of a route that uses the result cache (dsocr.cache).
CACHE_HEADER_DOC = {
    CACHE_HEADER: {
        "description": "Whether the pages came from the result cache: hit (all), partial (some), miss "
        "(none). Absent when the cache is off (DSOCR_CACHE__ENABLED) and on event streams.",
        "required": False,
        "schema": {"type": "string", "enum": ["hit", "partial", "miss"]},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "Bearer: send the key as 'Authorization: Bearer <key>' (or 'X-Api-Key: <key>').",
        "required": True,
        "schema": {"type": "string"},
    }
}

# One line per status: what makes a route answer it. ``code`` in the body says exactly what happened.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: a missing, contradictory or malformed field (`field` names it).",
    401: "API keys are configured and the request sent none or a wrong one.",
    404: "`model` names no model this server serves.",
    409: "The job's result is not ready: it is queued or running, or it failed or was cancelled.",
    413: "Too large: the body, the file, its pixels or its pages are over a configured limit.",
    415: "Unsupported media type: of the request body, or of the image or document sent.",
    422: "Unusable input: the image or PDF cannot be decoded, a PDF page is over its render budget, "
    "the URL cannot be fetched, or a field fails validation (`validation_error`).",
    429: "The server is at capacity: pages or pixels in flight (DSOCR_LIMITS__MAX_QUEUE, "
    "DSOCR_LIMITS__MAX_INFLIGHT_PIXELS); retry after Retry-After seconds.",
    500: "The engine failed while generating (`engine_error`), or an unexpected error (`internal_error`).",
    503: "The engine is not ready (`engine_unavailable`), or the server is answering its most requests "
    "at once (`server_busy`, DSOCR_SERVER__MAX_CONCURRENCY); retry after Retry-After seconds.",
    507: "Storing the job would pass the jobs' disk quota (DSOCR_JOBS__MAX_DISK_BYTES) or the "
    "disk's reserve (DSOCR_JOBS__MIN_FREE_BYTES).",
    504: "The request ran past its deadline (DSOCR_LIMITS__REQUEST_TIMEOUT_S) and was aborted.",
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: _WWW_AUTHENTICATE,
    429: RETRY_AFTER_HEADER,
    503: RETRY_AFTER_HEADER,
}


def error_responses(*statuses: int, descriptions: dict[int, str] | None = None) -> dict[int | str, Any]:
    """The ``responses=`` entries for the error statuses a route answers, each with the envelope.

    ``descriptions`` replaces the table's line where a route answers a status for its own reasons.
    """
    own = descriptions or {}
    responses: dict[int | str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "model": ErrorEnvelope,
            "description": own.get(status, ERROR_DESCRIPTIONS[status]),
        }
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        responses[status] = response
    return responses


_FASTAPI_VALIDATION_ERROR = "#/components/schemas/HTTPValidationError"


def _without_fastapi_validation_errors(schema: dict[str, Any]) -> dict[str, Any]:
    # FastAPI documents a 422 {"detail": [...]} for every route with a body parameter, unless
    # the route lists 422 itself. dsocr never sends that body: drop the entries still showing it.
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            for status, response in list(responses.items()):
                if _FASTAPI_VALIDATION_ERROR in json.dumps(response):
                    del responses[status]
    components = schema.get("components", {}).get("schemas", {})
    if _FASTAPI_VALIDATION_ERROR not in json.dumps(schema):
        components.pop("HTTPValidationError", None)
        if '"#/components/schemas/ValidationError"' not in json.dumps(schema):
            components.pop("ValidationError", None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve ``app``'s OpenAPI document without the error bodies dsocr never sends (built once)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _without_fastapi_validation_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
