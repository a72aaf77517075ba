"""The web playground in a real browser: tests/web/playground.test.mjs, run by node against real servers.

Two servers on loopback: ``dsocr serve --engine cpu`` (a subprocess, as users start it) reads the
shipped sample page for real; an in-process uvicorn with a fake engine that streams slowly, emits
hostile markup for the ``free`` preset and requires an API key covers streaming, errors and escaping.
The node script drives Debian's chromium through playwright-core and takes two screenshots
(playground.png, playground-phone.png) into the test's temporary folder; with
``DSOCR_UPDATE_SCREENSHOTS=1`` it writes them to docs/img instead, so a plain run leaves the tree clean.
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
from dsocr.engine.layout import det_tag
from dsocr.prompts import preset_of
from dsocr.settings import Settings
from server_support import dsocr_serve, running_server

SCRIPT = ROOT / "tests" / "web" / "playground.test.mjs"
SAMPLE = ROOT / "examples" / "sample-page.png"
DOCS_SHOTS = ROOT / "docs" / "img"
# Read at import: the suite's autouse fixture removes DSOCR_* variables before each test runs.
UPDATE_SHOTS = os.environ.get("DSOCR_UPDATE_SCREENSHOTS") == "1"
FAKE_KEY = "playground-test-key"

# Model output a browser must show as text, never run: every classic way to get script into a page.
HOSTILE_OUTPUT = (
    '# Title <img src=x onerror="window.__pwned=1">\n\n'
    "<script>window.__pwned=2</script>\n\n"
    "[click](javascript:window.__pwned=3)\n\n"
    '<iframe src="javascript:window.__pwned=4"></iframe>\n\n'
    '<table><tr><td onclick="window.__pwned=5" style="color:red">cell</td></tr></table>\n'
)


# Labels and lines a page may really hold that name members of every JavaScript object: the
# playground must treat them as data, never find Object.prototype's members under them.
PROTOTYPE_NAMES = ("constructor", "__proto__", "toString", "hasOwnProperty")


def _row(index: int) -> list[tuple[int, int, int, int]]:
    return [(100, 100 + 200 * index, 900, 250 + 200 * index)]


class HostileFakeEngine(FakeEngine):
    """The fake engine, except that the ``free`` preset answers with script-bearing markup, and the
    ``ocr`` and ``describe`` presets with lines and layout labels named like prototype members."""

    def _pieces(self, prompt: str, size: tuple[int, int], looping: bool, max_tokens: int) -> list[str]:
        if prompt.endswith("Free OCR."):
            return [HOSTILE_OUTPUT]
        if preset_of(prompt) == "ocr":
            return [det_tag(name, _row(i)) + "\n" for i, name in enumerate(PROTOTYPE_NAMES)]
        if preset_of(prompt) == "describe":
            return [
                det_tag(name, _row(i)) + f"\nA block labelled {name}.\n\n"
                for i, name in enumerate(PROTOTYPE_NAMES)
            ]
        return super()._pieces(prompt, size, looping, max_tokens)


pytestmark = BROWSER_MARKS


def _three_page_pdf(path: Path) -> Path:
    pages = []
    for number in range(1, 4):
        page = Image.new("RGB", (620, 877), "white")
        ImageDraw.Draw(page).text((60, 60), f"Page {number} of the playground test", fill="black")
        pages.append(page)
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


def _shrink_png(path: Path) -> None:
    """Re-save a screenshot with a 256-colour palette: the docs keep it under 400 KB."""
    with Image.open(path) as shot:
        small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, format="PNG", optimize=True)


@pytest.fixture
def cpu_server(tmp_path: Path) -> Iterator[str]:
    log = tmp_path / "serve.log"
    with (
        log.open("w") as log_file,
        dsocr_serve(
            "--engine", "cpu", "--log-level", "warning",
            stdout=log_file, stderr=subprocess.STDOUT,
            output=lambda: log.read_text(errors="replace"), timeout_s=180,
        ) as (base, _),
    ):  # fmt: skip
        yield base


@pytest.fixture
def fake_server() -> Iterator[str]:
    settings = Settings(server={"api_keys": [FAKE_KEY]})
    with running_server(settings, HostileFakeEngine(delay_s=3.0)) as server:
        yield server.url


def test_playground_in_chromium_matches_the_api_streams_and_escapes(
    cpu_server: str, fake_server: str, tmp_path: Path
) -> None:
    shots = DOCS_SHOTS if UPDATE_SHOTS else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DSOCR_CPU_URL": cpu_server,
        "DSOCR_FAKE_URL": fake_server,
        "DSOCR_FAKE_KEY": FAKE_KEY,
        "DSOCR_SAMPLE": str(SAMPLE),
        "DSOCR_PDF": str(_three_page_pdf(tmp_path / "three-pages.pdf")),
        "DSOCR_SHOTS": str(shots),
        "CHROMIUM": CHROMIUM,
    }
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"browser tests failed:\n{result.stdout}\n{result.stderr}"
    for name in ("playground.png", "playground-phone.png"):
        shot = shots / name
        _shrink_png(shot)
        assert 10_000 < shot.stat().st_size < 400_000, f"{name} is {shot.stat().st_size} bytes"
