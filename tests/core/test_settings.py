"""Settings fail at start-up, naming the variable, when values cannot work together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dsocr.settings import Settings


def test_ngram_window_shorter_than_the_ngram_is_refused() -> None:
    with pytest.raises(ValidationError, match="DSOCR_ENGINE__NGRAM_WINDOW"):
        Settings(engine={"ngram_size": 40, "ngram_window": 20})


def test_ngram_of_one_token_is_refused() -> None:
    # An (n-1)-token prefix of length 0 would ban nothing: the rule needs n >= 2.
    with pytest.raises(ValidationError, match="ngram_size"):
        Settings(engine={"ngram_size": 1})


def test_engine_settings_come_from_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_ENGINE__KIND", "fake")
    monkeypatch.setenv("DSOCR_ENGINE__NGRAM_SIZE", "20")
    monkeypatch.setenv("DSOCR_ENGINE__NGRAM_WINDOW", "50")
    settings = Settings()
    assert (settings.engine.kind, settings.engine.ngram_size, settings.engine.ngram_window) == (
        "fake",
        20,
        50,
    )
