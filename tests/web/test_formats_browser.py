"""The new file formats in a real browser: tests/web/formats.test.mjs, run by node.

An in-process uvicorn with a fake engine whose ``free`` preset answers with script-bearing markup.
The node script downloads the searchable PDF, hOCR, ALTO and HTML from the playground's buttons,
and opens the HTML answer of the hostile page in chromium to check that nothing in it runs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import BROWSER_MARKS, CHROMIUM, ROOT
from PIL import Image, ImageDraw

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import running_server

SCRIPT = ROOT / "tests" / "web" / "formats.test.mjs"

# Model output that must never run in the HTML file: every classic way to get script into a page.
HOSTILE_OUTPUT = (
    '# Title <img src=x onerror="window.__pwned=1">\n\n'
    "<script>window.__pwned=2</script>\n\n"
    "[click](javascript:window.__pwned=3)\n\n"
    '<iframe src="javascript:window.__pwned=4"></iframe>\n\n'
    '<svg onload="window.__pwned=6"></svg><a href="data:text/html,<script>x</script>">data</a>\n\n'
    '<table><tr><td onclick="window.__pwned=5" style="color:red">cell</td></tr></table>\n'
)

pytestmark = BROWSER_MARKS


class HostileFakeEngine(FakeEngine):
    """The fake engine, except that the ``free`` preset answers with script-bearing markup."""

    def _pieces(self, prompt: str, size: tuple[int, int], looping: bool, max_tokens: int) -> list[str]:
        if prompt.endswith("Free OCR."):
            return [HOSTILE_OUTPUT]
        return super()._pieces(prompt, size, looping, max_tokens)


@pytest.fixture
def server() -> Iterator[str]:
    with running_server(Settings(), HostileFakeEngine()) as running:
        yield running.url


def _two_page_pdf(path: Path) -> Path:
    pages = []
    for number in (1, 2):
        page = Image.new("RGB", (620, 877), "white")
        ImageDraw.Draw(page).text((60, 60), f"Page {number}", fill="black")
        pages.append(page)
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


def test_formats_download_from_the_playground_and_html_runs_nothing(server: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DSOCR_URL": server,
        "DSOCR_PDF": str(_two_page_pdf(tmp_path / "two-pages.pdf")),
        "DSOCR_TMP": str(tmp_path),
        "CHROMIUM": CHROMIUM,
    }
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", str(SCRIPT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"browser tests failed:\n{result.stdout}\n{result.stderr}"
