"""The one error hierarchy of dsocr.

Every failure a user can cause or meet is one of these. Each class carries a stable ``code``,
the user-visible identifier of what went wrong::

    DsocrError                    internal_error
    ├── InvalidInput              invalid_input
    │   ├── UnsupportedMediaType  unsupported_media_type
    │   ├── InputTooLarge         input_too_large         bytes, pixels or pages over a limit
    │   ├── UndecodableInput      undecodable_input       image or PDF cannot be decoded
    │   ├── RenderBudgetExceeded  render_budget_exceeded  a PDF page over its render budget
    │   ├── FetchFailed           fetch_failed            URL unreachable or refused (SSRF)
    │   └── ModelNotFound         model_not_found         ``model`` names no served model
    ├── Unauthorized              unauthorized
    ├── ServerBusy                server_busy             too many at once; ``retry_after``
    ├── EngineError               engine_error
    │   ├── EngineUnavailable     engine_unavailable      ``retry_after``
    │   ├── EngineOverloaded      engine_overloaded       ``retry_after``
    │   └── EngineTimeout         engine_timeout
    └── ConfigError               config_error            start-up only

Messages are public: they say what was wrong and how to fix it, and never contain secrets.
Nothing here knows about front ends: each maps the classes to its own answers at its edge, the
HTTP server to statuses (``dsocr.server.errors.HTTP_STATUS``), the CLI to exit codes
(``dsocr.cli_exit.EXIT_CODES``), both along the exception's MRO, most specific class first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

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
    "JobNotFinished",
    "JobNotFound",
    "ModelNotFound",
    "RenderBudgetExceeded",
    "ServerBusy",
    "StorageFull",
    "TooManyJobs",
    "Unauthorized",
    "UndecodableInput",
    "UnsupportedMediaType",
    "error_class",
    "lookup_by_class",
]

_T = TypeVar("_T")


class DsocrError(Exception):
    """Base of every dsocr error.

    ``field`` names the request field at fault (``"image_url"``, ``"pages"``) when there is one;
    ``retry_after`` is a hint in seconds for overload/unavailable errors.
    """

    code: str = "internal_error"

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


def lookup_by_class(table: Mapping[type[DsocrError], _T], error: DsocrError | type[DsocrError]) -> _T:
    """The entry of ``error``'s class in a front end's table, or of its nearest listed base.

    Every table lists ``DsocrError`` itself, so each error, however new, gets an answer.
    """
    cls = error if isinstance(error, type) else type(error)
    for base in cls.__mro__:
        if base in table:
            return table[base]
    raise LookupError(f"{cls.__name__} has no entry and no listed base class in the table")


def error_class(code: str) -> type[DsocrError]:
    """The error class with this ``code`` (an error that crossed as JSON); ``DsocrError`` if none."""
    pending: list[type[DsocrError]] = [DsocrError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls
        pending.extend(cls.__subclasses__())
    return DsocrError


class InvalidInput(DsocrError):
    """The request is malformed: a missing or contradictory field, a bad value."""

    code = "invalid_input"


class UnsupportedMediaType(InvalidInput):
    """The bytes are not an image or PDF format we accept."""

    code = "unsupported_media_type"


class InputTooLarge(InvalidInput):
    """Bytes, pixels, pages or tokens over a configured limit."""

    code = "input_too_large"


class UndecodableInput(InvalidInput):
    """The format is allowed but the data cannot be decoded (truncated, corrupt, encrypted)."""

    code = "undecodable_input"


class RenderBudgetExceeded(InvalidInput):
    """A PDF page (or the PDF's page tree) needed more render time or memory than its budget."""

    code = "render_budget_exceeded"


class FetchFailed(InvalidInput):
    """A URL could not be fetched: refused by the SSRF guard, unreachable, bad status, timeout."""

    code = "fetch_failed"


class ModelNotFound(InvalidInput):
    """The request's ``model`` names no model this server serves (OpenAI's ``model_not_found``)."""

    code = "model_not_found"


class JobNotFound(InvalidInput):
    """No job with this id is visible to the caller (none, expired, or another key's)."""

    code = "job_not_found"


class JobNotFinished(InvalidInput):
    """A job's result was asked for before it succeeded (it is queued, running, failed or cancelled)."""

    code = "job_not_finished"


class Unauthorized(DsocrError):
    """Missing or wrong API key."""

    code = "unauthorized"


class ServerBusy(DsocrError):
    """The server is answering as many requests as it may at once; retry after ``retry_after``."""

    code = "server_busy"


class TooManyJobs(DsocrError):
    """The job queue (in total or of this API key) is full; retry after ``retry_after`` seconds."""

    code = "too_many_jobs"


class StorageFull(DsocrError):
    """Storing the job would pass the jobs' disk quota or the disk's reserve."""

    code = "storage_full"


class EngineError(DsocrError):
    """The engine failed while generating."""

    code = "engine_error"


class EngineUnavailable(EngineError):
    """The engine is not loaded or not healthy; the server is not ready."""

    code = "engine_unavailable"


class EngineOverloaded(EngineError):
    """The admission queue is full; retry after ``retry_after`` seconds."""

    code = "engine_overloaded"


class EngineTimeout(EngineError):
    """The request ran past its deadline and was aborted in the engine."""

    code = "engine_timeout"


class ConfigError(DsocrError):
    """Settings that cannot work (raised at start-up, naming the variable)."""

    code = "config_error"
