"""What the browser tests need on the machine: node, Debian's chromium and playwright-core from npm.

Without them the browser tests skip with the reason; CI installs all three (scripts/test.sh).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _missing_tools() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs)"
    if not Path(CHROMIUM).exists():
        return f"chromium is not at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (run `npm ci` in the repository root)"
    return None


_MISSING = _missing_tools()
# pytestmark for a browser test module.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]
