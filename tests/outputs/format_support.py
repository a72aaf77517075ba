"""What the format tests share: running ``dsocr ocr`` on the fake engine, and reading a PDF's text
back as a consumer does (pypdfium2's text page, boxes mapped to the pixels the page was read at)."""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from dsocr.cli import app
from dsocr.outputs.lines import block_text

runner = CliRunner()
Box = tuple[float, float, float, float]


def ocr(*args: str) -> tuple[int, bytes, str]:
    """``dsocr ocr --engine fake ARGS``: exit code, stdout bytes, stderr."""
    result = runner.invoke(app, ["ocr", "--engine", "fake", *args])
    return result.exit_code, result.stdout_bytes, result.stderr


def ocr_json(source: Path, *args: str) -> dict[str, Any]:
    """The document's JSON (blocks in page pixels), as the formats were made from."""
    code, out, err = ocr(str(source), "--format", "json", *args)
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def page_image(width: int, height: int, title: str) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((30, 30), title, fill="black")
    draw.rectangle((30, 80, width - 30, height // 2), outline="black", width=3)
    return image


def write_pdf(path: Path, sizes: list[tuple[int, int]]) -> Path:
    """A real PDF (Pillow writes it: one image per page, at 72 dpi so a pixel is a point)."""
    pages = [page_image(w, h, f"Page {n}") for n, (w, h) in enumerate(sizes, start=1)]
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


@dataclass(frozen=True)
class PdfWord:
    text: str
    box: Box  # in the pixels of the page as it was read (x1, y1, x2, y2, y down)


def pdf_words(pdf_path: Path, image_sizes: list[tuple[int, int]]) -> list[list[PdfWord]]:
    """Each page's words as pypdfium2 extracts them, their boxes mapped to device pixels of the
    page's read size (pdfium's own page-to-device transform: /Rotate and crop box included)."""
    pdf = pdfium.PdfDocument(pdf_path)
    pages: list[list[PdfWord]] = []
    try:
        assert len(pdf) == len(image_sizes)
        for index, (width, height) in enumerate(image_sizes):
            page = pdf[index]
            textpage = page.get_textpage()
            words: list[PdfWord] = []
            current: list[tuple[str, Box]] = []
            for i in range(textpage.count_chars() + 1):
                char = textpage.get_text_range(i, 1) if i < textpage.count_chars() else " "
                if not char.strip():
                    if current:
                        words.append(_word(current))
                    current = []
                    continue
                left, bottom, right, top = textpage.get_charbox(i)
                corners = [_to_device(page, width, height, x, y) for x, y in ((left, bottom), (right, top))]
                xs, ys = [c[0] for c in corners], [c[1] for c in corners]
                current.append((char, (min(xs), min(ys), max(xs), max(ys))))
            pages.append(words)
            textpage.close()
            page.close()
    finally:
        pdf.close()
    return pages


def _word(chars: list[tuple[str, Box]]) -> PdfWord:
    boxes = [box for _, box in chars]
    return PdfWord(
        "".join(char for char, _ in chars),
        (
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        ),
    )


def _to_device(page: pdfium.PdfPage, width: int, height: int, x: float, y: float) -> tuple[float, float]:
    dx, dy = ctypes.c_int(), ctypes.c_int()
    ok = pdfium_c.FPDF_PageToDevice(
        page.raw, 0, 0, width, height, 0, x, y, ctypes.byref(dx), ctypes.byref(dy)
    )
    assert ok
    return float(dx.value), float(dy.value)


def inside(point: tuple[float, float], box: Box, slack: float = 2.0) -> bool:
    x, y = point
    return box[0] - slack <= x <= box[2] + slack and box[1] - slack <= y <= box[3] + slack


def centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def expected_words(block: dict[str, Any], *, ref_is_text: bool = False) -> list[str]:
    """A block's words as the formats write them (its plain text, split at whitespace)."""
    from dsocr.types import Block

    text = block_text(
        Block(index=0, label=block["label"], text=block["text"], boxes=(), boxes_px=()),
        ref_is_text=ref_is_text,
    )
    return text.split()


def assert_words_sit_in_their_blocks(words: list[PdfWord], blocks: list[dict[str, Any]]) -> None:
    """Every word lies over the block it came from, and each block's words read in order."""
    for block in blocks:
        wanted = expected_words(block)
        if not wanted or not block["boxes_px"]:
            continue
        (box,) = block["boxes_px"]
        found = [word.text for word in words if inside(centre(word.box), tuple(box))]
        if found != wanted:
            # Over a real page blocks may overlap (a caption inside a text block): then the box
            # also holds the other block's words, and this block's words are a run among them.
            others = [tuple(b) for other in blocks if other is not block for b in other["boxes_px"]]
            assert any(overlaps(tuple(box), other) for other in others), (block["label"], box, found)
            runs = [found[i : i + len(wanted)] for i in range(len(found) - len(wanted) + 1)]
            assert wanted in runs, (block["label"], box, found)
    all_boxes = [tuple(box) for block in blocks for box in block["boxes_px"]]
    for word in words:
        assert any(overlaps(word.box, box) for box in all_boxes), word
