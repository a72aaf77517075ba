"""The visualiser on a real scanned page (c03-29.pdf, rendered by pypdfium2)."""

from __future__ import annotations

import pypdfium2 as pdfium
import pytest
from PIL import Image

from dsocr.grounding import parse
from dsocr.render.overlay import label_colour, layout_pdf, scale_box
from dsocr.visualize import draw_blocks

pytestmark = pytest.mark.network

RAW = (
    "<|ref|>title<|/ref|><|det|>[[171, 12, 943, 120]]<|/det|>\n# Chapter III.\n\n"
    "<|ref|>image<|/ref|><|det|>[[54, 223, 335, 668]]<|/det|>\n\n\n"
    "<|ref|>text<|/ref|><|det|>[[337, 233, 978, 695], [78, 697, 642, 723]]<|/det|>\nWELL, I got [...]\n\n"
)


def scanned_page(dpi: int) -> Image.Image:
    import docs  # tests/docs.py: fetches the ocrmypdf sdist's test files once, skips when offline

    pdf = pdfium.PdfDocument(docs.require("c03-29.pdf"))
    try:
        return pdf[0].render(scale=dpi / 72).to_pil().convert("RGB")
    finally:
        pdf.close()


def test_boxes_on_a_scanned_page_have_their_label_colours() -> None:
    page = scanned_page(110)
    parsed = parse(RAW, width=page.width, height=page.height)
    drawn = draw_blocks(page, parsed.blocks)
    assert drawn.size == page.size
    for block in parsed.blocks:
        for box in block.boxes:
            x1, y1, _, y2 = scale_box(box, drawn.size)
            assert drawn.getpixel((x1, (y1 + y2) // 2)) == label_colour(block.label)


def test_layout_pdf_of_a_scanned_document_has_a_page_per_input() -> None:
    pages = []
    for dpi in (72, 110, 150):
        page = scanned_page(dpi)
        pages.append((page, parse(RAW, width=page.width, height=page.height)))
    pdf = pdfium.PdfDocument(layout_pdf(pages))
    try:
        assert len(pdf) == 3
    finally:
        pdf.close()
