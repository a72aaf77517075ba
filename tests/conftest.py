"""Suite-wide fixtures. Area fixtures live in each test folder's own conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _clean_dsocr_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings read ``DSOCR_*`` variables: a developer's shell must not change test results."""
    for name in list(os.environ):
        if name.startswith("DSOCR_"):
            monkeypatch.delenv(name)
    yield
