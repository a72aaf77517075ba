"""The README's main job, for real: ``dsocr ocr examples/sample-page.png`` on the CPU engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample-page.png"

pytestmark = pytest.mark.slow


def test_sample_page_prints_markdown_on_the_cpu_engine() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    completed = subprocess.run(
        [sys.executable, "-m", "dsocr", "ocr", str(SAMPLE), "--engine", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    markdown = completed.stdout
    # Real text of the scan (Huckleberry Finn, chapter III), read by the CPU engine.
    assert "Miss Watson" in markdown
    assert markdown.lstrip().startswith("#"), "the page's heading comes out as a markdown heading"
    assert "<|ref|>" not in markdown and "<|det|>" not in markdown
