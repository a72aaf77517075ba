"""The CLI's exit codes: the one table from error classes to the codes scripts can trust.

0 success, 1 internal error, 2 bad input or usage, 3 engine failure, 4 partial success (some
pages failed, the rest were written). An error class not listed exits with its nearest listed
base's code, found along the MRO, most specific class first.
"""

from __future__ import annotations

from dsocr.errors import (
    ConfigError,
    DsocrError,
    EngineError,
    InvalidInput,
    ServerBusy,
    StorageFull,
    TooManyJobs,
    Unauthorized,
    error_class,
    lookup_by_class,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_ENGINE",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "exit_code_of",
    "exit_code_of_code",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2  # bad input, usage or settings
EXIT_ENGINE = 3
EXIT_PARTIAL = 4  # some pages failed, the rest were written

EXIT_CODES: dict[type[DsocrError], int] = {
    DsocrError: EXIT_INTERNAL,
    InvalidInput: EXIT_USAGE,
    Unauthorized: EXIT_USAGE,
    ConfigError: EXIT_USAGE,
    ServerBusy: EXIT_ENGINE,
    # A server's job queue or disk is full (dsocr ocr/batch --server): retry later, as for busy.
    TooManyJobs: EXIT_ENGINE,
    StorageFull: EXIT_ENGINE,
    EngineError: EXIT_ENGINE,
}


def exit_code_of(error: DsocrError | type[DsocrError]) -> int:
    """The code the CLI exits with when ``error`` ends its run."""
    return lookup_by_class(EXIT_CODES, error)


def exit_code_of_code(code: str) -> int:
    """The exit code of an error known only by its ``code`` (a page error that crossed as JSON);
    ``EXIT_INTERNAL`` for a code no error class has."""
    return exit_code_of(error_class(code))
