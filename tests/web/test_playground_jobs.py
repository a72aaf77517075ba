"""Long PDFs in the playground run as jobs: tests/web/playground_jobs.test.mjs, run by node.

An in-process uvicorn with an API key, jobs in the test's temporary folder one page at a time, and a
fake engine that takes a while per page (so a test can watch, reload or cancel mid-job), fails
every landscape page (so a page can fail while its job succeeds) and answers the ``free`` preset
with script-bearing markup. Two more servers run no jobs: one with jobs turned off, one whose jobs
folder cannot be used.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncGenerator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from browser_support import BROWSER_MARKS, CHROMIUM, ROOT
from PIL import Image, ImageDraw

from dsocr.engine.base import EngineDelta, EngineRequest
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineError
from dsocr.settings import Settings
from server_support import running_server

SCRIPT = ROOT / "tests" / "web" / "playground_jobs.test.mjs"
KEY = "playground-jobs-key"
PORTRAIT = (620, 877)
LANDSCAPE = (877, 620)

pytestmark = BROWSER_MARKS


# Model output a browser must show as text, never run.
HOSTILE_OUTPUT = (
    '# Title <img src=x onerror="window.__pwned=1">\n\n'
    "<script>window.__pwned=2</script>\n\n"
    "[click](javascript:window.__pwned=3)\n\n"
    '<table><tr><td onclick="window.__pwned=5" style="color:red">cell</td></tr></table>\n'
)


class JobTestEngine(FakeEngine):
    """The fake engine, except that a landscape page fails and the ``free`` preset answers with
    script-bearing markup."""

    def _pieces(self, prompt: str, size: tuple[int, int], looping: bool, max_tokens: int) -> list[str]:
        if prompt.endswith("Free OCR."):
            return [HOSTILE_OUTPUT]
        return super()._pieces(prompt, size, looping, max_tokens)

    async def stream(self, request: EngineRequest) -> AsyncGenerator[EngineDelta, None]:
        if request.image is not None and request.image.size[0] > request.image.size[1]:
            raise EngineError("the fake engine fails landscape pages")
        async for delta in super().stream(request):
            yield delta


def _pdf(path: Path, sizes: list[tuple[int, int]]) -> Path:
    pages = []
    for number, size in enumerate(sizes, start=1):
        page = Image.new("RGB", size, "white")
        ImageDraw.Draw(page).text((60, 60), f"Page {number} of {path.stem}", fill="black")
        pages.append(page)
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """The jobs server, one with jobs off, one whose jobs folder is a file."""
    # One page of a job in the engine at a time, a second or so each: pages finish one by one.
    settings = Settings(server={"api_keys": [KEY]}, jobs={"dir": tmp_path / "jobs", "window": 1})
    not_a_folder = tmp_path / "not-a-folder"
    not_a_folder.write_text("")
    with ExitStack() as stack:
        urls = [
            stack.enter_context(running_server(settings, JobTestEngine(delay_s=1.5))).url,
            stack.enter_context(running_server(Settings(jobs={"enabled": False}), FakeEngine())).url,
            stack.enter_context(running_server(Settings(jobs={"dir": not_a_folder}), FakeEngine())).url,
        ]
        yield urls[0], urls[1], urls[2]


def test_long_pdfs_run_as_jobs_that_survive_a_reload(servers: tuple[str, str, str], tmp_path: Path) -> None:
    jobs, jobs_off, jobs_broken = servers
    env = {
        **os.environ,
        "DSOCR_URL": jobs,
        "DSOCR_URL_JOBS_OFF": jobs_off,
        "DSOCR_URL_JOBS_BROKEN": jobs_broken,
        "DSOCR_KEY": KEY,
        # Three pages still stream through /v1/ocr; four go through a job (page 3 fails).
        "DSOCR_PDF_3": str(_pdf(tmp_path / "three.pdf", [PORTRAIT] * 3)),
        "DSOCR_PDF_4": str(_pdf(tmp_path / "four.pdf", [PORTRAIT, PORTRAIT, LANDSCAPE, PORTRAIT])),
        "DSOCR_PDF_6": str(_pdf(tmp_path / "six.pdf", [PORTRAIT] * 6)),
        "CHROMIUM": CHROMIUM,
    }
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", str(SCRIPT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, f"browser tests failed:\n{result.stdout}\n{result.stderr}"
