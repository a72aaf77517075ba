"""A real scan (ocrmypdf's c03-29.pdf, Huckleberry Finn) through the CPU engine into a searchable
PDF: the scan's page is kept as it was, and pypdfium2 finds the words the engine read over the
blocks they came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from format_support import assert_words_sit_in_their_blocks, pdf_words

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _dsocr(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    return subprocess.run(
        [sys.executable, "-m", "dsocr", "ocr", *args, "--engine", "cpu", "-q"],
        capture_output=True, timeout=600, env=env, check=False,
    )  # fmt: skip


def test_a_scanned_page_becomes_searchable_where_its_words_are(tmp_path: Path) -> None:
    import docs  # tests/docs.py: the ocrmypdf sdist's test files, fetched once

    scan = docs.require("c03-29.pdf")
    out = tmp_path / "c03-29.searchable.pdf"
    made = _dsocr(str(scan), "--out", str(out))
    assert made.returncode == 0, made.stderr.decode()
    read = _dsocr(str(scan), "--format", "json")
    assert read.returncode == 0, read.stderr.decode()
    document = json.loads(read.stdout)
    (page,) = document["pages"]

    original, searchable = pdfium.PdfDocument(scan), pdfium.PdfDocument(out)
    try:
        assert len(searchable) == len(original) == 1
        assert searchable.get_page_size(0) == pytest.approx(original.get_page_size(0))
        text = searchable[0].get_textpage().get_text_range()
    finally:
        original.close()
        searchable.close()
    assert "Miss Watson" in text
    (words,) = pdf_words(out, [tuple(page["image_size"])])
    assert len(words) > 100
    assert_words_sit_in_their_blocks(words, page["blocks"])
