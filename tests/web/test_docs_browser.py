"""``/docs`` in a real browser: tests/web/docs.test.mjs, run by node against a real server with keys.

Chromium (through playwright-core) may reach only this server: Swagger UI must render from the
assets the package ships, break no rule of the page's content security policy, and "Try it out"
must work with the key the browser logged in with.
"""

from __future__ import annotations

import os
import subprocess

from browser_support import BROWSER_MARKS, CHROMIUM, ROOT

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import running_server

SCRIPT = ROOT / "tests" / "web" / "docs.test.mjs"
KEY = "docs-browser-key"


pytestmark = BROWSER_MARKS


def test_docs_render_offline_in_chromium_behind_the_key() -> None:
    settings = Settings(engine={"kind": "fake"}, server={"api_keys": [KEY]})
    with running_server(settings, FakeEngine()) as server:
        result = subprocess.run(
            ["node", "--test", "--test-reporter=spec", str(SCRIPT)],
            cwd=ROOT,
            env={**os.environ, "DSOCR_URL": server.url, "DSOCR_KEY": KEY, "CHROMIUM": CHROMIUM},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, f"browser tests failed:\n{result.stdout}\n{result.stderr}"
