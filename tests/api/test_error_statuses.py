"""The server's one table from error classes to HTTP statuses covers every ``DsocrError``."""

from __future__ import annotations

import pytest

from dsocr import errors
from dsocr.server.errors import HTTP_STATUS, LoginRequired, http_status
from dsocr.server.openapi import ERROR_DESCRIPTIONS
from error_classes import all_error_classes

# The statuses clients have always got: the table may move, the answers may not.
EXPECTED = {
    errors.DsocrError: 500,
    errors.InvalidInput: 400,
    errors.UnsupportedMediaType: 415,
    errors.InputTooLarge: 413,
    errors.UndecodableInput: 422,
    errors.RenderBudgetExceeded: 422,
    errors.FetchFailed: 422,
    errors.ModelNotFound: 404,
    errors.JobNotFound: 404,
    errors.JobNotFinished: 409,
    errors.TooManyJobs: 429,
    errors.StorageFull: 507,
    errors.Unauthorized: 401,
    LoginRequired: 401,
    errors.ServerBusy: 503,
    errors.EngineError: 500,
    errors.EngineUnavailable: 503,
    errors.EngineOverloaded: 429,
    errors.EngineTimeout: 504,
    errors.ConfigError: 500,
}


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_has_an_error_status_documented_in_openapi(cls: type[errors.DsocrError]) -> None:
    status = http_status(cls)
    assert 400 <= status < 600
    assert status in ERROR_DESCRIPTIONS
    assert http_status(cls("message")) == status


def test_statuses_are_the_ones_clients_have_always_got() -> None:
    public = {getattr(errors, name) for name in errors.__all__} - {errors.lookup_by_class, errors.error_class}
    assert set(EXPECTED) >= public
    assert {cls: http_status(cls) for cls in EXPECTED} == EXPECTED


def test_a_class_not_in_the_table_answers_its_nearest_listed_base() -> None:
    class OddPage(errors.UndecodableInput):
        pass

    assert OddPage not in HTTP_STATUS
    assert http_status(OddPage("odd")) == 422


def test_domain_errors_carry_no_status() -> None:
    for cls in all_error_classes():
        assert not hasattr(cls, "status")
        assert not hasattr(cls, "exit_code")
