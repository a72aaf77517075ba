"""Fixtures for the grounding tests: recorded raw outputs in tests/fixtures/raw/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

RAW_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "raw"


@pytest.fixture
def raw_fixture() -> Callable[[str], str]:
    """Read a recorded raw model output by file name."""

    def read(name: str) -> str:
        return (RAW_DIR / name).read_text(encoding="utf-8")

    return read
