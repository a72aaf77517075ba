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

    What servers store by default (jobs under ``XDG_DATA_HOME``, the page cache under
    ``XDG_CACHE_HOME``) goes to this run's temporary folder, never the developer's home.
    """
    for name in list(os.environ):
        if name.startswith("DSOCR_"):
            monkeypatch.delenv(name)
    home = tmp_path_factory.getbasetemp() / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    yield
