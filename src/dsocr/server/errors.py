"""The one mapping from errors to HTTP responses, used by every route.

Every error body has the same envelope, readable by OpenAI clients too::

    {"error": {"type": "invalid_request_error", "code": "input_too_large", "message": "...",
               "field": "image_base64", "param": "image_base64", "request_id": "..."}}

``code`` is the stable :class:`~dsocr.errors.DsocrError` code; ``type`` the OpenAI-style
category; ``param`` repeats ``field`` under the name OpenAI clients read. ``HTTP_STATUS`` is the
one table from error classes to statuses (``http_status`` looks an error up along its MRO, most
specific class first); the domain errors carry none. Four handlers are
registered: ``DsocrError`` (status from ``HTTP_STATUS``, plus ``Retry-After`` /
``WWW-Authenticate`` where they apply), request validation (422 naming the field from pydantic's
``loc``), Starlette's own HTTP errors (404, 405, a body FastAPI could not parse) and a generic 500
for anything unexpected (logged with the request id; the detail is shown only with
``settings.debug``). Routes never catch errors to convert them. Nothing here counts errors:
``dsocr.server.metrics.MetricsMiddleware`` counts every error answer once, at the server's edge.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dsocr.errors import (
    ConfigError,
    DsocrError,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    FetchFailed,
    InputTooLarge,
    InvalidInput,
    JobNotFinished,
    JobNotFound,
    ModelNotFound,
    RenderBudgetExceeded,
    ServerBusy,
    StorageFull,
    TooManyJobs,
    Unauthorized,
    UndecodableInput,
    UnsupportedMediaType,
    lookup_by_class,
)

__all__ = [
    "HTTP_STATUS",
    "LoginRequired",
    "error_body",
    "error_type",
    "field_from_loc",
    "http_status",
    "install_error_handlers",
    "request_id_of",
    "unparsable_body",
    "validation_error_body",
]

logger = logging.getLogger(__name__)

# The HTTP status of each error class; a class not listed answers its nearest listed base's.
HTTP_STATUS: dict[type[DsocrError], int] = {
    DsocrError: 500,
    InvalidInput: 400,
    UnsupportedMediaType: 415,
    InputTooLarge: 413,
    UndecodableInput: 422,
    RenderBudgetExceeded: 422,
    FetchFailed: 422,
    ModelNotFound: 404,
    JobNotFound: 404,
    JobNotFinished: 409,
    TooManyJobs: 429,
    StorageFull: 507,
    Unauthorized: 401,
    ServerBusy: 503,
    EngineError: 500,
    EngineUnavailable: 503,
    EngineOverloaded: 429,
    EngineTimeout: 504,
    ConfigError: 500,
}


def http_status(error: DsocrError | type[DsocrError]) -> int:
    """The status an error answers: its class's in ``HTTP_STATUS``, or its nearest base's."""
    return lookup_by_class(HTTP_STATUS, error)


class LoginRequired(Unauthorized):
    """``Unauthorized`` on pages a browser opens (``/docs``): the challenge makes it ask for the key."""


def unparsable_body(exc: BaseException) -> InvalidInput:
    """The error for a request body that could not be parsed as JSON, saying why."""
    if isinstance(exc, RecursionError):
        return InvalidInput(
            "the request body's JSON is nested too deeply to parse; no dsocr request nests more "
            "than a few levels",
            field="body",
        )
    return InvalidInput(f"the request body is not valid JSON: {exc}", field="body")


def error_type(error: DsocrError) -> str:
    """The OpenAI-style category of an error."""
    if isinstance(error, Unauthorized):
        return "authentication_error"
    status = http_status(error)
    if status == 429:
        return "rate_limit_error"
    if isinstance(error, EngineError) or status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(
    *, type_: str, code: str, message: str, field: str | None, request_id: str | None
) -> dict[str, dict[str, str | None]]:
    """The JSON error envelope."""
    return {
        "error": {
            "type": type_,
            "code": code,
            "message": message,
            "field": field,
            "param": field,
            "request_id": request_id,
        }
    }


def dsocr_error_body(error: DsocrError, request_id: str | None) -> dict[str, dict[str, str | None]]:
    """The envelope for a ``DsocrError`` (also used for SSE ``error`` events)."""
    return error_body(
        type_=error_type(error),
        code=error.code,
        message=error.message,
        field=error.field,
        request_id=request_id,
    )


def request_id_of(request: Request) -> str | None:
    """The id the request-id middleware gave this request."""
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def error_headers(error: DsocrError, request_id: str | None) -> dict[str, str]:
    """Headers an error response carries besides the body."""
    headers: dict[str, str] = {}
    if request_id:
        headers["X-Request-Id"] = request_id
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    elif http_status(error) in (429, 503):
        headers["Retry-After"] = "1"
    if isinstance(error, LoginRequired):
        # Browsers answer a Basic challenge with a login prompt; the key is the password.
        headers["WWW-Authenticate"] = 'Basic realm="dsocr", charset="UTF-8"'
    elif isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def field_from_loc(loc: Sequence[Any]) -> str | None:
    """``("body", "pages", "start")`` → ``"pages.start"``; the request part (body/query) is dropped."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None


def validation_error_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """One readable message for pydantic errors, and the field of the first one."""
    if not errors:
        return "The request is invalid.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        # FastAPI's own JSON parsing (chat route): its loc is a character position, not a field.
        detail = (first.get("ctx") or {}).get("error", "invalid JSON")
        return f"the request body is not valid JSON: {detail}", "body"
    field = field_from_loc(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    text = f"{field}: {message}" if field else message
    if len(errors) > 1:
        others = [field_from_loc(e.get("loc", ())) or "body" for e in errors[1:4]]
        text += f" (also invalid: {', '.join(others)})"
    return text, field


def validation_error_body(
    errors: Sequence[Mapping[str, Any]], request_id: str | None
) -> dict[str, dict[str, str | None]]:
    """The envelope for a request that failed validation (``code`` ``validation_error``)."""
    message, field = validation_error_message(errors)
    return error_body(
        type_="invalid_request_error",
        code="validation_error",
        message=message,
        field=field,
        request_id=request_id,
    )


def install_error_handlers(app: FastAPI, *, debug: bool) -> None:
    """Register the four handlers on ``app``."""

    async def on_dsocr_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DsocrError)
        request_id = request_id_of(request)
        status = http_status(exc)
        if status >= 500:
            logger.warning("request %s failed: %s: %s", request_id, exc.code, exc.message)
        return JSONResponse(
            dsocr_error_body(exc, request_id),
            status_code=status,
            headers=error_headers(exc, request_id),
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        request_id = request_id_of(request)
        body = validation_error_body(list(exc.errors()), request_id)
        return JSONResponse(body, status_code=422, headers={"X-Request-Id": request_id or ""})

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own errors (404 unknown route, 405 wrong method) in the same envelope.
        assert isinstance(exc, StarletteHTTPException)
        wrapped = getattr(exc, "error", None)
        if isinstance(wrapped, DsocrError):
            # Raised from inside body reading (BodyTooLarge), where FastAPI only lets
            # HTTPExceptions through: render the DsocrError it carries.
            return await on_dsocr_error(request, wrapped)
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, RecursionError | ValueError):
            # FastAPI could not parse the JSON body (chat route): a 400 that says why.
            return await on_dsocr_error(request, unparsable_body(cause))
        request_id = request_id_of(request)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body(
            type_="invalid_request_error" if exc.status_code < 500 else "server_error",
            code=code,
            message=str(exc.detail),
            field=None,
            request_id=request_id,
        )
        headers = dict(exc.headers or {})
        if request_id:
            headers["X-Request-Id"] = request_id
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request_id_of(request)
        logger.error("unhandled error in request %s", request_id, exc_info=exc)
        message = "Internal server error."
        if debug:
            message = f"Internal server error: {type(exc).__name__}: {exc}"
        body = error_body(
            type_="server_error", code="internal_error", message=message, field=None, request_id=request_id
        )
        return JSONResponse(body, status_code=500, headers={"X-Request-Id": request_id or ""})

    app.add_exception_handler(DsocrError, on_dsocr_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(Exception, on_unexpected)
