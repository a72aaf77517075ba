"""Suite-wide fixtures. Area fixtures live in each test folder's own conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _clean_dsocr_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Settings read ``DSOCR_*`` variables: a developer's shell must not change test results.

    What servers store by default goes to this run's temporary folders, never the developer's
    home: jobs under ``XDG_DATA_HOME``, and the result cache (on by default in servers and
    ``dsocr ocr``) in a fresh folder per test, servers started as processes included, so no test
    sees pages another one stored.
    """
    for name in list(os.environ):
        if name.startswith("DSOCR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.getbasetemp() / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
