"""``dsocr ocr`` with typer's CliRunner on the fake engine: formats, PDFs, crops, overlays, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from dsocr import cli_ocr
from dsocr.cli import app
from dsocr.engine.base import EngineOutput, EngineRequest
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineError
from dsocr.settings import EngineSettings

runner = CliRunner()


def _page(width: int, height: int, title: str) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((30, 30), title, fill="black")
    draw.rectangle((30, 80, width - 30, height // 2), outline="black", width=3)
    return image


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "page.png"
    _page(600, 800, "Page one").save(path)
    return path


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    """A real three-page PDF (Pillow writes it, pdfium renders it in the pipeline)."""
    path = tmp_path / "doc.pdf"
    pages = [_page(420, 595, f"Page {n}") for n in (1, 2, 3)]
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


def ocr(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["ocr", "--engine", "fake", *args])
    return result.exit_code, result.stdout, result.stderr


def test_image_prints_clean_markdown(png: Path) -> None:
    code, out, _ = ocr(str(png))
    assert code == 0
    assert out.startswith("# ")  # the fake page starts with its title
    assert "<|ref|>" not in out and "<|det|>" not in out
    assert "![](images/0.png)" in out


def test_text_and_json_formats(png: Path) -> None:
    code, text, _ = ocr(str(png), "--format", "txt")
    assert code == 0 and text.strip() and "#" not in text.splitlines()[0]
    code, raw, _ = ocr(str(png), "--format", "json")
    assert code == 0
    document = json.loads(raw)
    (page,) = document["pages"]
    assert page["page"] == 1 and page["image_size"] == [600, 800]
    assert page["blocks"] and page["markdown"].startswith("# ")
    assert document["failed_pages"] == [] and page["error"] is None
    assert document["usage"]["completion_tokens"] == page["usage"]["completion_tokens"] > 0


def test_out_file_receives_the_output(png: Path, tmp_path: Path) -> None:
    target = tmp_path / "result.md"
    code, out, _ = ocr(str(png), "--out", str(target), "--quiet")
    assert code == 0 and out == ""
    assert target.read_text(encoding="utf-8").startswith("# ")


def test_pdf_pages_in_order_with_a_page_range(pdf: Path) -> None:
    code, raw, _ = ocr(str(pdf), "--format", "json", "--pages", "2-3")
    assert code == 0
    document = json.loads(raw)
    assert [page["page"] for page in document["pages"]] == [2, 3]
    code, markdown, _ = ocr(str(pdf))
    assert code == 0 and markdown.count("\n---\n") == 2


def test_crops_are_named_like_the_markdown_links_across_pages(pdf: Path, tmp_path: Path) -> None:
    crops = tmp_path / "images"
    code, markdown, _ = ocr(str(pdf), "--crops", str(crops))
    assert code == 0
    # No --out: the links name the crop folder as given.
    links = [int(n) for n in re.findall(rf"!\[\]\({re.escape(crops.as_posix())}/(\d+)\.png\)", markdown)]
    assert links == sorted(set(links)) and len(links) >= 3, "links are numbered over the whole document"
    assert sorted(int(p.stem) for p in crops.glob("*.png")) == links
    for path in crops.glob("*.png"):
        with Image.open(path) as crop:
            assert crop.width > 0 and crop.height > 0


def test_viz_png_per_pdf_page_and_layout_pdf(pdf: Path, png: Path, tmp_path: Path) -> None:
    single = tmp_path / "single.png"
    assert ocr(str(png), "--viz", str(single), "--quiet")[0] == 0
    with Image.open(single) as overlay:
        assert overlay.size == (600, 800)
    assert ocr(str(pdf), "--viz", str(tmp_path / "viz.png"), "--quiet")[0] == 0
    assert sorted(p.name for p in tmp_path.glob("viz-p*.png")) == ["viz-p1.png", "viz-p2.png", "viz-p3.png"]
    layout = tmp_path / "layout.pdf"
    assert ocr(str(pdf), "--viz", str(layout), "--quiet")[0] == 0
    document = pdfium.PdfDocument(layout)
    try:
        assert len(document) == 3
    finally:
        document.close()


def test_bad_input_exits_2_with_a_message(tmp_path: Path, png: Path) -> None:
    code, out, err = ocr(str(tmp_path / "missing.png"))
    assert code == 2 and out == "" and "no such file" in err
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:100])
    code, _, err = ocr(str(broken))
    assert code == 2 and "error:" in err
    code, _, err = ocr(str(png), "--preset", "poem")
    assert code == 2 and "unknown prompt preset" in err
    code, _, err = ocr(str(png), "--preset", "free", "--prompt", "Free OCR.")
    assert code == 2
    code, out, err = ocr(str(png), "--mode", "huge")
    assert code == 2 and out == "" and "mode 'huge'" in err


def test_engine_failure_exits_3(png: Path) -> None:
    code, out, err = ocr(str(png), "--prompt", "Free OCR. [fake:fail]")
    assert code == 3
    assert out == "", "nothing is written when no page succeeded"
    assert "error: fake failure" in err


class _FailsOnWidePages(FakeEngine):
    """Fails every page wider than it is tall (a per-page engine failure)."""

    async def generate(self, request: EngineRequest) -> EngineOutput:
        assert request.image is not None
        if request.image.width > request.image.height:
            raise EngineError("the engine failed on this page")
        return await super().generate(request)


def test_some_pages_failing_exits_4_and_reports_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mixed.pdf"
    pages = [_page(420, 595, "tall"), _page(595, 420, "wide"), _page(420, 595, "tall")]
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)

    def failing_engine(settings: EngineSettings) -> FakeEngine:
        return _FailsOnWidePages()

    monkeypatch.setattr(cli_ocr, "create_engine", failing_engine)
    code, raw, err = ocr(str(path), "--format", "json")
    assert code == 4
    document = json.loads(raw)
    assert document["failed_pages"] == [2]
    assert [(p["error"] or {}).get("code") for p in document["pages"]] == [None, "engine_error", None]
    assert "page 2" in err and "1 of 3 page(s) failed" in err


def test_progress_bar_is_hidden_when_not_a_terminal(pdf: Path) -> None:
    # CliRunner's stderr is not a TTY: no bar characters, only plain messages.
    code, _, err = ocr(str(pdf))
    assert code == 0
    assert "pages/s" not in err and "━" not in err


def test_url_source_goes_through_the_fetch_guard() -> None:
    # Plain http and loopback addresses are refused by default (SSRF guard): a clean exit 2.
    code, out, err = ocr("http://127.0.0.1:9/page.png")
    assert code == 2 and out == ""
    assert "error:" in err and "source" in err
