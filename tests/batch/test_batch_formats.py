"""``dsocr batch --formats``: each document also written as NAME/NAME.<suffix>, from its page files."""

from __future__ import annotations

from pathlib import Path

import pypdfium2 as pdfium
from batch_support import run_dsocr_batch, text_page, write_pdf

DEFAULT_FILES = {"NAME.md"}


def _document_files(folder: Path) -> set[str]:
    return {path.name.replace(folder.name, "NAME", 1) for path in folder.iterdir() if path.is_file()}


def test_formats_are_written_per_document_and_missing_ones_on_a_later_run(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_pdf(inputs / "report.pdf", 2, "report")
    text_page("a page").save(inputs / "page.png")
    out = tmp_path / "out"

    done = run_dsocr_batch(str(inputs), "--out", str(out), "--engine", "fake", "-q")
    assert done.returncode == 0, done.stderr
    # Without --formats the document folders hold what they always held.
    assert _document_files(out / "report") == DEFAULT_FILES
    assert _document_files(out / "page") == DEFAULT_FILES

    done = run_dsocr_batch(
        str(inputs),
        "--out",
        str(out),
        "--engine",
        "fake",
        "-q",
        "--formats",
        "pdf,hocr,alto,html,txt,json,md",
    )
    assert done.returncode == 0, done.stderr
    expected = DEFAULT_FILES | {"NAME.pdf", "NAME.hocr", "NAME.xml", "NAME.html", "NAME.txt", "NAME.json"}
    assert _document_files(out / "report") == expected
    assert _document_files(out / "page") == expected
    pdf = pdfium.PdfDocument(out / "report" / "report.pdf")
    try:
        assert len(pdf) == 2
        assert "Fake Document" in pdf[1].get_textpage().get_text_range()
    finally:
        pdf.close()
    html = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert html.count('data-page="') == 2 and "data:image/png;base64," in html
    hocr = (out / "page" / "page.hocr").read_text(encoding="utf-8")
    assert hocr.count('class="ocr_page"') == 1 and "ocrx_word" in hocr


def test_an_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    text_page("a page").save(inputs / "page.png")
    done = run_dsocr_batch(
        str(inputs), "--out", str(tmp_path / "out"), "--engine", "fake", "--formats", "docx"
    )
    assert done.returncode == 2
    assert "docx" in done.stderr and "formats" in done.stderr


def test_a_file_that_failed_gets_no_format_files_and_the_others_do(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    text_page("a page").save(inputs / "good.png")
    text_page("cut short").save(inputs / "whole.png")
    whole = (inputs / "whole.png").read_bytes()
    (inputs / "whole.png").unlink()
    # Its header reads (the page is planned), its pixels do not (the page fails).
    (inputs / "broken.png").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    done = run_dsocr_batch(str(inputs), "--out", str(out), "--engine", "fake", "-q", "--formats", "pdf,hocr")
    # Partial success: the broken file is reported by name, the good one is written in each format.
    assert done.returncode == 4, done.stderr
    assert "broken.png" in done.stderr
    assert {"good.pdf", "good.hocr"} <= {p.name for p in (out / "good").iterdir()}
    assert not list(out.glob("broken/broken.pdf"))
