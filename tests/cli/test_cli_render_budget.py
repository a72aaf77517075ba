"""`dsocr ocr` and `dsocr batch` give a PDF page over its render budget up as a failed page, with
its reason, and go on with the rest (run as a user runs them: a process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from pdf_bomb import pdf_with_pages

ENDLESS = 40  # 2**40 nested draws: hours of pdfium time
BUDGET = {"DSOCR_LIMITS__RENDER_TIMEOUT_S": "2"}


def run_dsocr(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DSOCR_", "RAY_ADDRESS"))}
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "dsocr", *args],
        env={**clean, **BUDGET},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return completed, time.monotonic() - started


def test_ocr_reports_the_page_over_budget_writes_the_others_and_exits_4(tmp_path: Path) -> None:
    source = tmp_path / "mixed.pdf"
    source.write_bytes(pdf_with_pages(None, ENDLESS, None))
    out = tmp_path / "mixed.json"
    completed, elapsed = run_dsocr(
        "ocr", str(source), "--engine", "fake", "--format", "json", "--out", str(out)
    )
    assert completed.returncode == 4, completed.stderr
    assert (
        "page 2: page 2 took longer than 2 s to render (DSOCR_LIMITS__RENDER_TIMEOUT_S)" in completed.stderr
    )
    document = json.loads(out.read_text())
    assert [(page["error"] or {}).get("code") for page in document["pages"]] == [
        None,
        "render_budget_exceeded",
        None,
    ]
    assert all(document["pages"][i]["markdown"] for i in (0, 2))
    assert elapsed < 60  # the budget stopped it; the bomb alone would render for hours


def test_batch_fails_the_page_over_budget_and_finishes_the_run(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "mixed.pdf").write_bytes(pdf_with_pages(None, ENDLESS, None))
    Image.new("RGB", (300, 200), "white").save(inputs / "photo.png")
    out = tmp_path / "out"
    completed, elapsed = run_dsocr("batch", str(inputs), "--out", str(out), "--engine", "fake")
    assert completed.returncode == 4, completed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pages_total"] == 4
    assert summary["pages_done"] == 3
    assert summary["failures"] == {"render_budget_exceeded": 1}
    failed = json.loads((out / "mixed" / "pages" / "2.json").read_text())
    assert failed["error"]["type"] == "render_budget_exceeded"
    assert failed["error"]["message"].startswith("page 2 took longer than 2 s to render")
    for page in ("mixed/pages/1.json", "mixed/pages/3.json", "photo/pages/1.json"):
        record = json.loads((out / page).read_text())
        assert record["error"] is None and record["blocks"], page
    assert elapsed < 60
