"""Each new format read back by a real consumer: pypdfium2 and pdftotext (searchable PDF),
hocr-tools (hOCR), alto-tools and lxml (ALTO), lxml's HTML parser (HTML), from ``dsocr ocr``
on the fake engine, whose page has a title, text, an equation, a table and a figure."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pytest
from format_support import (
    assert_words_sit_in_their_blocks,
    centre,
    expected_words,
    inside,
    ocr,
    ocr_json,
    page_image,
    pdf_words,
    write_pdf,
)
from lxml import etree
from lxml import html as lxml_html

ALTO = "{http://www.loc.gov/standards/alto/ns-v4#}"
SIZES = [(420, 595), (595, 420), (500, 700)]


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    return write_pdf(tmp_path / "doc.pdf", SIZES)


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "page.png"
    page_image(600, 800, "Page one").save(path)
    return path


def _sizes(document: dict[str, Any]) -> list[tuple[int, int]]:
    return [tuple(page["image_size"]) for page in document["pages"]]  # type: ignore[misc]


# ---- searchable PDF ---------------------------------------------------------------------------


def test_searchable_pdf_keeps_pages_and_sizes_and_its_words_sit_over_their_blocks(
    pdf: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.pdf"
    code, _, err = ocr(str(pdf), "--format", "pdf", "--out", str(out), "-q")
    assert code == 0, err
    document = ocr_json(pdf)
    original, searchable = pdfium.PdfDocument(pdf), pdfium.PdfDocument(out)
    try:
        assert len(searchable) == len(original) == 3
        for index in range(3):
            assert searchable.get_page_size(index) == pytest.approx(original.get_page_size(index))
    finally:
        original.close()
        searchable.close()
    for words, page in zip(pdf_words(out, _sizes(document)), document["pages"], strict=True):
        assert len(words) > 20
        assert_words_sit_in_their_blocks(words, page["blocks"])


def test_searchable_pdf_keeps_the_original_page_objects_and_pixels(pdf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pdf"
    code, _, err = ocr(str(pdf), "--out", str(out), "-q")  # the suffix picks the format
    assert code == 0, err
    original, searchable = pdfium.PdfDocument(pdf), pdfium.PdfDocument(out)
    try:
        for index in range(3):
            before = [
                obj for obj in original[index].get_objects() if obj.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE
            ]
            after = [
                obj for obj in searchable[index].get_objects() if obj.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE
            ]
            # The scan is the same image object data, not a new rendering of it.
            assert [bytes(o.get_data(decode_simple=False)) for o in after] == [
                bytes(o.get_data(decode_simple=False)) for o in before
            ]
            # The text is invisible: the page looks exactly as it did.
            assert (
                searchable[index].render(scale=1).to_pil().tobytes()
                == original[index].render(scale=1).to_pil().tobytes()
            )
    finally:
        original.close()
        searchable.close()


def test_searchable_pdf_of_selected_pages_has_those_pages(pdf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.pdf"
    code, _, err = ocr(str(pdf), "--pages", "2-3", "--format", "pdf", "--out", str(out), "-q")
    assert code == 0, err
    searchable = pdfium.PdfDocument(out)
    try:
        assert [searchable.get_page_size(i) for i in range(len(searchable))] == [
            pytest.approx(SIZES[1]),
            pytest.approx(SIZES[2]),
        ]
    finally:
        searchable.close()


def test_searchable_pdf_of_a_png_holds_the_image_and_the_words(png: Path, tmp_path: Path) -> None:
    code, out, err = ocr(str(png), "--format", "pdf")  # to stdout, as bytes
    assert code == 0, err
    assert out.startswith(b"%PDF-")
    target = tmp_path / "page.pdf"
    target.write_bytes(out)
    document = ocr_json(png)
    pdf = pdfium.PdfDocument(target)
    try:
        # 96 dpi when the PNG says nothing.
        assert pdf.get_page_size(0) == pytest.approx((600 * 72 / 96, 800 * 72 / 96))
        (picture,) = [o for o in pdf[0].get_objects() if o.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE]
        assert picture.get_px_size() == (600, 800)
    finally:
        pdf.close()
    (words,) = pdf_words(target, _sizes(document))
    assert_words_sit_in_their_blocks(words, document["pages"][0]["blocks"])


def test_searchable_pdf_of_a_jpeg_embeds_the_jpeg_as_sent(tmp_path: Path) -> None:
    jpeg = tmp_path / "scan.jpg"
    page_image(640, 480, "A JPEG scan").save(jpeg, format="JPEG", quality=80, dpi=(200, 200))
    out = tmp_path / "scan.pdf"
    code, _, err = ocr(str(jpeg), "--out", str(out), "-q")
    assert code == 0, err
    pdf = pdfium.PdfDocument(out)
    try:
        assert pdf.get_page_size(0) == pytest.approx((640 * 72 / 200, 480 * 72 / 200))
        (picture,) = [o for o in pdf[0].get_objects() if o.type == pdfium.raw.FPDF_PAGEOBJ_IMAGE]
        assert picture.get_filters() == ["DCTDecode"]
        assert bytes(picture.get_data(decode_simple=False)) == jpeg.read_bytes()
    finally:
        pdf.close()


def test_searchable_pdf_text_is_read_by_pdftotext_over_its_blocks(pdf: Path, tmp_path: Path) -> None:
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext is not installed (apt-get install poppler-utils)")
    out = tmp_path / "out.pdf"
    assert ocr(str(pdf), "--format", "pdf", "--out", str(out), "-q")[0] == 0
    document = ocr_json(pdf)
    bbox = subprocess.run(
        ["pdftotext", "-bbox", str(out), "-"], capture_output=True, text=True, check=True
    ).stdout
    root = lxml_html.fromstring(bbox.encode("utf-8"))
    for page_element, page in zip(root.iter("page"), document["pages"], strict=True):
        width, height = page["image_size"]
        scale_x = width / float(page_element.get("width"))
        scale_y = height / float(page_element.get("height"))
        words = [
            (
                word.text,
                (
                    float(word.get("xmin")) * scale_x,
                    float(word.get("ymin")) * scale_y,
                    float(word.get("xmax")) * scale_x,
                    float(word.get("ymax")) * scale_y,
                ),
            )
            for word in page_element.iter("word")
        ]
        for block in page["blocks"]:
            wanted = expected_words(block)
            if wanted and block["boxes_px"]:
                (box,) = block["boxes_px"]
                assert [text for text, b in words if inside(centre(b), tuple(box))] == wanted


# ---- hOCR -----------------------------------------------------------------------------------------


def _hocr_tool(name: str, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name(name)
    return subprocess.run(
        [str(script), *args, str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def _assert_checked(checked: subprocess.CompletedProcess[str]) -> None:
    assert checked.returncode == 0, checked.stderr
    assert "ok 1 " in checked.stderr and "not ok" not in checked.stderr, checked.stderr


def test_hocr_of_a_page_passes_every_hocr_check(png: Path, tmp_path: Path) -> None:
    out = tmp_path / "page.hocr"
    code, _, err = ocr(str(png), "--out", str(out), "-q")
    assert code == 0, err
    checked = _hocr_tool("hocr-check", out)
    _assert_checked(checked)
    assert "mostly_nonoverlapping/line" in checked.stderr


def test_hocr_passes_hocr_check_and_its_lines_and_boxes_round_trip(pdf: Path, tmp_path: Path) -> None:
    from hocr_tools_lib.utils.node_utils import get_bbox

    out = tmp_path / "doc.hocr"
    code, _, err = ocr(str(pdf), "--out", str(out), "-q")
    assert code == 0, err
    # hocr-check's overlap checks compare lines across all pages of a file (its XPath starts at the
    # root), so pages with the same layout fail them; they run on one page above.
    _assert_checked(_hocr_tool("hocr-check", out, "--nooverlap"))
    document = ocr_json(pdf)
    # hocr-lines: one text line per ocr_line; together they are the blocks' words in reading order.
    lines = _hocr_tool("hocr-lines", out)
    assert lines.returncode == 0, lines.stderr
    all_words = [
        word for page in document["pages"] for block in page["blocks"] for word in expected_words(block)
    ]
    assert lines.stdout.split() == all_words

    tree = lxml_html.parse(str(out))
    pages = tree.xpath("//*[@class='ocr_page']")
    assert len(pages) == 3
    for element, page in zip(pages, document["pages"], strict=True):
        assert get_bbox(element) == (0, 0, *page["image_size"])
        text_blocks = [b for b in page["blocks"] if expected_words(b)]
        areas = element.xpath(".//*[@class='ocr_carea']")
        assert [list(get_bbox(a)) for a in areas] == [b["boxes_px"][0] for b in text_blocks]
        for area, block in zip(areas, text_blocks, strict=True):
            x1, y1, x2, y2 = get_bbox(area)
            words = area.xpath(".//*[@class='ocrx_word']")
            assert [w.text for w in words] == expected_words(block)
            for word in words:
                wx1, wy1, wx2, wy2 = get_bbox(word)
                assert x1 <= wx1 < wx2 <= x2 and y1 <= wy1 < wy2 <= y2
        photos = element.xpath(".//*[@class='ocr_photo']")
        assert [list(get_bbox(p)) for p in photos] == [
            b["boxes_px"][0] for b in page["blocks"] if b["label"] == "image"
        ]
    # Estimated boxes are said to be estimated.
    (geometry,) = tree.xpath("//meta[@name='ocr-geometry']/@content")
    assert "estimated" in geometry


# ---- ALTO -----------------------------------------------------------------------------------------


def test_alto_is_read_back_by_alto_tools_text_and_illustrations(
    png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alto_tools import alto_tools

    out = tmp_path / "page.xml"
    code, _, err = ocr(str(png), "--format", "alto", "--out", str(out), "-q")
    assert code == 0, err
    document = ocr_json(png)
    (page,) = document["pages"]
    with out.open("rb") as handle:
        parsed = alto_tools.alto_parse(handle)
        assert parsed is not None, "alto-tools knows the ALTO 4 namespace"
        alto, xml, xmlns = parsed
        capsys.readouterr()
        alto_tools.alto_text(xml, xmlns)
        text = capsys.readouterr().out
        assert text.split() == [word for block in page["blocks"] for word in expected_words(block)]
        alto_tools.alto_illustrations(alto, xml, xmlns)
        illustrations = re.findall(r"Illustration: (\w+)=(\d+),(\d+),(\d+),(\d+)", capsys.readouterr().out)
    images = [b["boxes_px"][0] for b in page["blocks"] if b["label"] == "image"]
    assert images, "the fake page has a figure"
    # alto-tools prints HEIGHT,WIDTH,VPOS,HPOS.
    assert [(int(x), int(y), int(x) + int(w), int(y) + int(h)) for _, h, w, y, x in illustrations] == [
        tuple(box) for box in images
    ]


def test_alto_blocks_are_the_model_boxes_and_lines_are_declared_estimated(pdf: Path, tmp_path: Path) -> None:
    out = tmp_path / "doc.xml"
    code, _, err = ocr(str(pdf), "--format", "alto", "--out", str(out), "-q")
    assert code == 0, err
    document = ocr_json(pdf)
    root = etree.parse(str(out)).getroot()
    assert root.tag == f"{ALTO}alto" and root.get("SCHEMAVERSION", "").startswith("4.")
    assert root.findtext(f"{ALTO}Description/{ALTO}MeasurementUnit") == "pixel"
    steps = [e.text for e in root.iter(f"{ALTO}processingStepDescription")]
    assert any("estimated" in (step or "") for step in steps)
    ids = [e.get("ID") for e in root.iter() if e.get("ID") is not None]
    assert len(ids) == len(set(ids)), "element ids are unique"

    def box(element: Any) -> list[int]:
        x, y, w, h = (int(element.get(k)) for k in ("HPOS", "VPOS", "WIDTH", "HEIGHT"))
        return [x, y, x + w, y + h]

    pages = root.findall(f"{ALTO}Layout/{ALTO}Page")
    assert len(pages) == 3
    for element, page in zip(pages, document["pages"], strict=True):
        assert [int(element.get("WIDTH")), int(element.get("HEIGHT"))] == page["image_size"]
        (space,) = element.findall(f"{ALTO}PrintSpace")
        children = list(space)
        assert [box(child) for child in children] == [
            b["boxes_px"][0] for b in page["blocks"] if b["boxes_px"]
        ]
        kinds = {b["label"]: child.tag for b, child in zip(page["blocks"], children, strict=False)}
        assert kinds["image"] == f"{ALTO}Illustration"
        assert kinds["table"] == f"{ALTO}ComposedBlock"
        assert kinds["title"] == f"{ALTO}TextBlock"
        for text_block in space.iter(f"{ALTO}TextBlock"):
            x1, y1, x2, y2 = box(text_block)
            for string in text_block.iter(f"{ALTO}String"):
                sx1, sy1, sx2, sy2 = box(string)
                assert x1 <= sx1 < sx2 <= x2 and y1 <= sy1 < sy2 <= y2
        tags = {tag.get("ID"): tag.get("LABEL") for tag in root.iter(f"{ALTO}LayoutTag")}
        assert [tags[child.get("TAGREFS")] for child in children] == [
            b["label"] for b in page["blocks"] if b["boxes_px"]
        ]


# ---- HTML -------------------------------------------------------------------------------------


def test_html_is_a_standalone_document_with_tables_and_inline_figures(pdf: Path, tmp_path: Path) -> None:
    out = tmp_path / "doc.html"
    code, _, err = ocr(str(pdf), "--format", "html", "--out", str(out), "-q")
    assert code == 0, err
    root = lxml_html.parse(str(out)).getroot()
    assert root.xpath("//meta[@http-equiv='Content-Security-Policy']/@content")[0].startswith(
        "default-src 'none'"
    )
    sections = root.xpath("//section[@class='page']")
    assert [s.get("data-page") for s in sections] == ["1", "2", "3"]
    for section in sections:
        assert section.xpath(".//h1") and section.xpath(".//table//td")
        (figure,) = section.xpath(".//img")
        source = figure.get("src")
        assert source.startswith("data:image/png;base64,")
        from base64 import b64decode

        from PIL import Image

        with Image.open(io.BytesIO(b64decode(source.split(",", 1)[1]))) as crop:
            assert crop.width > 10 and crop.height > 10
    assert not root.xpath("//script")
