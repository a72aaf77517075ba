"""`dsocr parse RAW.txt --width W --height H` prints blocks, markdown or text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsocr.cli import app

RAW_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "raw"
DOCUMENT = RAW_DIR / "document_page.txt"
DSOCR = Path(sys.executable).parent / "dsocr"


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["parse", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_json_has_blocks_markdown_and_warnings() -> None:
    code, out, _ = run(str(DOCUMENT), "--width", "1654", "--height", "2339")
    assert code == 0
    doc = json.loads(out)
    assert doc["blocks"][0]["label"] == "title"
    assert doc["blocks"][0]["boxes"] == [[143, 62, 856, 101]]
    assert doc["blocks"][0]["boxes_px"] == [[236, 145, 1417, 236]]
    assert doc["markdown"].startswith("# Attention Is Not All You Need")
    assert doc["warnings"] == []


def test_markdown_and_text_formats() -> None:
    code, md, _ = run(str(DOCUMENT), "--width", "100", "--height", "100", "--format", "md")
    assert code == 0 and md.startswith("# Attention") and "![](images/0.png)" in md
    code, txt, _ = run(str(DOCUMENT), "--width", "100", "--height", "100", "--format", "txt")
    assert code == 0 and txt.startswith("Attention Is Not All") and "Ratio\tTokens" in txt


def test_dash_reads_stdin_and_prompt_selects_the_ocr_shape() -> None:
    raw = "<|ref|>越过高峰<|/ref|><|det|>[[547, 703, 604, 730]]<|/det|>"
    code, out, _ = run(
        "-", "--width", "999", "--height", "999", "--prompt", "<|grounding|>OCR this image.", stdin=raw
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["blocks"] == [
        {
            "index": 0,
            "label": "越过高峰",
            "text": "越过高峰",
            "boxes": [[547, 703, 604, 730]],
            "boxes_px": [[547, 703, 604, 730]],
        }
    ]
    assert doc["ref_is_text"] is True


def test_warnings_go_to_stderr_for_md() -> None:
    code, out, err = run(
        "-", "--width", "10", "--height", "10", "--format", "md", stdin="<|ref|>text<|/ref|><|det|>[[1, 2"
    )
    assert code == 0
    assert "truncated" in err and "warning:" in err
    assert "warning" not in out


def test_missing_file_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    code, _, err = run(str(tmp_path / "nope.txt"), "--width", "10", "--height", "10")
    assert code == 2
    assert "raw output file not found" in err and "nope.txt" in err


@pytest.mark.parametrize(
    "args", [["--width", "0", "--height", "10"], ["--width", "10", "--height", "10", "--format", "pdf"]]
)
def test_bad_options_exit_2(args: list[str]) -> None:
    code, _, _ = run(str(DOCUMENT), *args)
    assert code == 2


def test_installed_console_script_parses_a_file() -> None:
    proc = subprocess.run(
        [str(DSOCR), "parse", str(DOCUMENT), "--width", "1654", "--height", "2339", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["blocks"]) == 13 and doc["blocks"][9]["crop_index"] == 1


def test_installed_console_script_reports_a_missing_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(DSOCR), "parse", str(tmp_path / "missing.txt"), "--width", "5", "--height", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "raw output file not found" in proc.stderr
