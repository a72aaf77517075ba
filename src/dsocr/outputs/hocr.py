"""``hocr``: hOCR 1.2, the XHTML OCR format hocr-tools, ocrmypdf and search indexers read.

Each page is an ``ocr_page``; each text block an ``ocr_carea`` holding one ``ocr_par`` of
``ocr_line`` s of ``ocrx_word`` s; a figure an ``ocr_photo``. Every ``bbox`` is in page pixels.
Block boxes are the model's; line and word boxes are estimated (:mod:`dsocr.outputs.lines`), as
the ``ocr-geometry`` meta says. A failed page is an empty ``ocr_page``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dsocr.outputs.base import FileContext, Output, RenderContext
from dsocr.outputs.lines import ESTIMATED_NOTE, page_regions, xml_safe

if TYPE_CHECKING:
    from dsocr.results import PageResult
    from dsocr.types import Box

__all__ = ["OUTPUT", "hocr_document"]

_CAPABILITIES = "ocr_page ocr_carea ocr_par ocr_line ocrx_word ocr_photo"
_PROLOGUE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
    '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
)


def _bbox(box: Box) -> str:
    return "bbox {} {} {} {}".format(*box)


def _element(parent: ET.Element, tag: str, cls: str, ident: str, title: str) -> ET.Element:
    return ET.SubElement(parent, tag, {"class": cls, "id": ident, "title": title})


def _page(body: ET.Element, result: PageResult, ppageno: int, image: str | None) -> None:
    number = result.page
    parsed = result.parsed
    size = parsed.image_size if parsed is not None else result.image_size or (0, 0)
    title = _bbox((0, 0, *size)) + f"; ppageno {ppageno}"
    if image is not None:
        title = 'image "{}"; '.format(xml_safe(image).replace('"', "'")) + title
    page = _element(body, "div", "ocr_page", f"page_{number}", title)
    if parsed is None:
        return
    line_count = word_count = 0
    for index, region in enumerate(page_regions(parsed), start=1):
        if region.kind == "figure":
            _element(page, "div", "ocr_photo", f"photo_{number}_{index}", _bbox(region.box))
            if not region.lines:
                continue
        area = _element(page, "div", "ocr_carea", f"block_{number}_{index}", _bbox(region.box))
        par = _element(area, "p", "ocr_par", f"par_{number}_{index}", _bbox(region.box))
        for line in region.lines:
            line_count += 1
            span = _element(par, "span", "ocr_line", f"line_{number}_{line_count}", _bbox(line.box))
            for position, word in enumerate(line.words):
                word_count += 1
                item = _element(span, "span", "ocrx_word", f"word_{number}_{word_count}", _bbox(word.box))
                item.text = word.text
                # A space between words, as hOCR writers do, so the text reads right as HTML too.
                if position < len(line.words) - 1:
                    item.tail = " "


def hocr_document(results: Sequence[PageResult], *, model: str = "", image: str | None = None) -> str:
    """The pages as one hOCR document (``image``: the source image's name, for one image)."""
    from dsocr import __version__

    root = ET.Element("html", {"xmlns": "http://www.w3.org/1999/xhtml", "xml:lang": "en", "lang": "en"})
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = "OCR"
    ET.SubElement(head, "meta", {"http-equiv": "Content-Type", "content": "text/html;charset=utf-8"})
    system = f"dsocr {__version__}" + (f" ({model})" if model else "")
    ET.SubElement(head, "meta", {"name": "ocr-system", "content": system})
    ET.SubElement(head, "meta", {"name": "ocr-capabilities", "content": _CAPABILITIES})
    ET.SubElement(head, "meta", {"name": "ocr-number-of-pages", "content": str(len(results))})
    # Not a standard meta: hOCR has no place for how boxes were found, so it is said here.
    ET.SubElement(head, "meta", {"name": "ocr-geometry", "content": ESTIMATED_NOTE})
    body = ET.SubElement(root, "body")
    for ppageno, result in enumerate(results):
        _page(body, result, ppageno, image)
    ET.indent(root, space=" ")
    return _PROLOGUE + ET.tostring(root, encoding="unicode") + "\n"


def _page_field(result: PageResult, context: RenderContext) -> str | None:
    if result.parsed is None:
        return None
    return hocr_document([result], model=context.model)


def _document_field(results: Sequence[PageResult]) -> str:
    return hocr_document(results)


def _file(results: Sequence[PageResult], context: FileContext) -> bytes:
    image = context.source if context.render.kind == "image" else None
    return hocr_document(results, model=context.render.model, image=image).encode("utf-8")


OUTPUT = Output(
    name="hocr",
    description="hOCR (XHTML): pages, blocks, estimated lines and words with pixel boxes.",
    page=_page_field,
    document=_document_field,
    file=_file,
    suffix=".hocr",
    media_type="application/xhtml+xml; charset=utf-8",
)
