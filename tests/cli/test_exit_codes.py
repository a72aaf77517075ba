"""The CLI's one table from error classes to exit codes covers every ``DsocrError``."""

from __future__ import annotations

import pytest

from dsocr import errors
from dsocr.cli_exit import EXIT_CODES, EXIT_INTERNAL, exit_code_of, exit_code_of_code
from dsocr.server.errors import LoginRequired
from error_classes import all_error_classes

# README: 1 internal error, 2 bad input or usage, 3 engine failure.
EXPECTED = {
    errors.DsocrError: 1,
    errors.InvalidInput: 2,
    errors.UnsupportedMediaType: 2,
    errors.InputTooLarge: 2,
    errors.UndecodableInput: 2,
    errors.RenderBudgetExceeded: 2,
    errors.FetchFailed: 2,
    errors.ModelNotFound: 2,
    errors.Unauthorized: 2,
    LoginRequired: 2,
    errors.JobNotFound: 2,
    errors.JobNotFinished: 2,
    errors.ServerBusy: 3,
    errors.TooManyJobs: 3,
    errors.StorageFull: 3,
    errors.EngineError: 3,
    errors.EngineUnavailable: 3,
    errors.EngineOverloaded: 3,
    errors.EngineTimeout: 3,
    errors.ConfigError: 2,
}


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_has_an_exit_code(cls: type[errors.DsocrError]) -> None:
    code = exit_code_of(cls)
    assert code in (1, 2, 3)
    assert exit_code_of(cls("message")) == code
    # A page error that crossed as JSON (batch) exits the same, known by its code alone.
    assert exit_code_of_code(cls.code) == code


def test_exit_codes_are_the_documented_ones() -> None:
    public = {getattr(errors, name) for name in errors.__all__} - {errors.lookup_by_class, errors.error_class}
    assert set(EXPECTED) >= public
    assert {cls: exit_code_of(cls) for cls in EXPECTED} == EXPECTED
    assert errors.DsocrError in EXIT_CODES  # so that every error, however new, has a code


def test_an_unknown_error_code_is_an_internal_error() -> None:
    assert exit_code_of_code("no_such_code") == EXIT_INTERNAL
