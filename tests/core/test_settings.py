"""Settings fail at start-up, naming the variable, when values cannot work together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dsocr.settings import LimitSettings, Settings


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


def test_a_page_limit_over_the_image_limit_is_refused_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_LIMITS__MAX_IMAGE_PIXELS", "30000000")
    monkeypatch.setenv("DSOCR_LIMITS__MAX_PAGE_PIXELS", "35000000")
    with pytest.raises(ValidationError) as info:
        Settings()
    message = str(info.value)
    assert "DSOCR_LIMITS__MAX_PAGE_PIXELS (35,000,000)" in message
    assert "DSOCR_LIMITS__MAX_IMAGE_PIXELS (30,000,000)" in message


def test_an_unset_page_limit_follows_a_lower_image_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_LIMITS__MAX_IMAGE_PIXELS", "20000000")
    limits = Settings().limits
    assert (limits.max_image_pixels, limits.max_page_pixels) == (20_000_000, 20_000_000)


def test_page_limit_defaults_and_explicit_values_within_the_image_limit_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (Settings().limits.max_image_pixels, Settings().limits.max_page_pixels) == (60_000_000, 40_000_000)
    monkeypatch.setenv("DSOCR_LIMITS__MAX_PAGE_PIXELS", "60000000")
    assert Settings().limits.max_page_pixels == 60_000_000
    assert LimitSettings(max_image_pixels=10, max_page_pixels=10).max_page_pixels == 10
