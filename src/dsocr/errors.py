"""The one error hierarchy of dsocr.

Every failure a user can cause or meet is one of these. Each class carries a stable ``code``
and the HTTP ``status`` it maps to, so front ends (HTTP API, CLI, Truss) never guess::

    DsocrError                    internal_error          500  exit 1
    ├── InvalidInput              invalid_input           400  exit 2
    │   ├── UnsupportedMediaType  unsupported_media_type  415  exit 2
    │   ├── InputTooLarge         input_too_large         413  exit 2   bytes, pixels or pages over a limit
    │   ├── UndecodableInput      undecodable_input       422  exit 2   image or PDF cannot be decoded
    │   ├── RenderBudgetExceeded  render_budget_exceeded  422  exit 2   a PDF page over its render budget
    │   ├── FetchFailed           fetch_failed            422  exit 2   URL unreachable or refused (SSRF)
    │   └── ModelNotFound         model_not_found         404  exit 2   ``model`` names no served model
    ├── Unauthorized              unauthorized            401  exit 2
    ├── ServerBusy                server_busy             503  exit 3   + Retry-After; too many at once
    ├── EngineError               engine_error            500  exit 3
    │   ├── EngineUnavailable     engine_unavailable      503  exit 3   + Retry-After
    │   ├── EngineOverloaded      engine_overloaded       429  exit 3   + Retry-After
    │   └── EngineTimeout         engine_timeout          504  exit 3
    └── ConfigError               config_error            500  exit 2   start-up only

Messages are public: they say what was wrong and how to fix it, and never contain secrets.
Nothing here knows about HTTP frameworks; ``status`` is just a number.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DsocrError",
    "EngineError",
    "EngineOverloaded",
    "EngineTimeout",
    "EngineUnavailable",
    "FetchFailed",
    "InputTooLarge",
    "InvalidInput",
    "ModelNotFound",
    "RenderBudgetExceeded",
    "ServerBusy",
    "Unauthorized",
    "UndecodableInput",
    "UnsupportedMediaType",
]


class DsocrError(Exception):
    """Base of every dsocr error.

    ``field`` names the request field at fault (``"image_url"``, ``"pages"``) when there is one;
    ``retry_after`` is a hint in seconds for overload/unavailable errors.
    """

    code: str = "internal_error"
    status: int = 500
    exit_code: int = 1

    def __init__(self, message: str, *, field: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"

    def to_dict(self) -> dict[str, str | None]:
        """The public description used in JSON error bodies and per-page errors."""
        return {"type": self.code, "message": self.message, "field": self.field}


class InvalidInput(DsocrError):
    """The request is malformed: a missing or contradictory field, a bad value."""

    code = "invalid_input"
    status = 400
    exit_code = 2


class UnsupportedMediaType(InvalidInput):
    """The bytes are not an image or PDF format we accept."""

    code = "unsupported_media_type"
    status = 415


class InputTooLarge(InvalidInput):
    """Bytes, pixels, pages or tokens over a configured limit."""

    code = "input_too_large"
    status = 413


class UndecodableInput(InvalidInput):
    """The format is allowed but the data cannot be decoded (truncated, corrupt, encrypted)."""

    code = "undecodable_input"
    status = 422


class RenderBudgetExceeded(InvalidInput):
    """A PDF page (or the PDF's page tree) needed more render time or memory than its budget."""

    code = "render_budget_exceeded"
    status = 422


class FetchFailed(InvalidInput):
    """A URL could not be fetched: refused by the SSRF guard, unreachable, bad status, timeout."""

    code = "fetch_failed"
    status = 422


class ModelNotFound(InvalidInput):
    """The request's ``model`` names no model this server serves (OpenAI's ``model_not_found``)."""

    code = "model_not_found"
    status = 404


class Unauthorized(DsocrError):
    """Missing or wrong API key."""

    code = "unauthorized"
    status = 401
    exit_code = 2


class ServerBusy(DsocrError):
    """The server is answering as many requests as it may at once; retry after ``retry_after``."""

    code = "server_busy"
    status = 503
    exit_code = 3


class EngineError(DsocrError):
    """The engine failed while generating."""

    code = "engine_error"
    status = 500
    exit_code = 3


class EngineUnavailable(EngineError):
    """The engine is not loaded or not healthy; the server is not ready."""

    code = "engine_unavailable"
    status = 503


class EngineOverloaded(EngineError):
    """The admission queue is full; retry after ``retry_after`` seconds."""

    code = "engine_overloaded"
    status = 429


class EngineTimeout(EngineError):
    """The request ran past its deadline and was aborted in the engine."""

    code = "engine_timeout"
    status = 504


class ConfigError(DsocrError):
    """Settings that cannot work (raised at start-up, naming the variable)."""

    code = "config_error"
    status = 500
    exit_code = 2
