"""``pdf``: the input's pages with an invisible text layer, to search and select text in (a file).

A PDF input keeps its own pages, untouched and not re-rasterised: pdfium opens the original, adds
one invisible text object (render mode 3) per line, and saves; the page objects already there
are kept as they were. An image becomes a page holding the image (a JPEG as it was sent, any
other image losslessly) at its own resolution (96 dpi when the file names none), with the text
on it.

The text of each block is split into lines that fill the block's box in reading order
(:mod:`dsocr.outputs.lines`); each line is stretched to its estimated width, so selecting a word
selects it where it sits on the page. The text is drawn in a font made for the document: every
character it uses, each an empty box of the same width, mapped to its Unicode value so that
viewers and text extractors read the text back in any script.

For a PDF, pdfium runs on the input: a front end that must not run it in its own process
passes ``FileContext.isolate`` (the server's render workers).
"""

from __future__ import annotations

import ctypes
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dsocr.errors import InvalidInput
from dsocr.outputs.base import FileContext, Output
from dsocr.outputs.lines import page_regions

if TYPE_CHECKING:
    from PIL import Image

    from dsocr.results import PageResult

__all__ = ["OUTPUT", "PageText", "overlay_pdf"]

# The text font's design: 1000 units to the em, every glyph 500 wide, from 200 below the
# baseline to 800 above it, so a line of size S is S tall and 0.5 S wide per character.
_UNITS = 1000
_ADVANCE = 500
_DESCENT = 200
_ASCENT = 800
_DEFAULT_DPI = 96
_MIN_DPI = 20


@dataclass(frozen=True, slots=True)
class PageText:
    """What goes on one page: the page's pixel size and its lines (text, pixel box)."""

    size: tuple[int, int]
    lines: tuple[tuple[str, tuple[int, int, int, int]], ...]


def page_text(result: PageResult) -> PageText | None:
    """A page result's lines, in reading order; ``None`` for a failed page."""
    if result.parsed is None:
        return None
    lines = tuple((line.text, line.box) for region in page_regions(result.parsed) for line in region.lines)
    return PageText(result.parsed.image_size, lines)


def _font(characters: set[str]) -> bytes:
    """A TrueType font with one box-shaped glyph per character (the text is never painted)."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    codepoints = sorted(ord(c) for c in characters if ord(c) >= 0x20)
    names = [".notdef", *(f"u{cp:04X}" for cp in codepoints)]
    pen = TTGlyphPen(None)
    pen.moveTo((0, -_DESCENT))
    pen.lineTo((0, _ASCENT))
    pen.lineTo((_ADVANCE, _ASCENT))
    pen.lineTo((_ADVANCE, -_DESCENT))
    pen.closePath()
    box = pen.glyph()
    builder = FontBuilder(_UNITS, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap(dict(zip(codepoints, names[1:], strict=True)))
    builder.setupGlyf(dict.fromkeys(names, box))
    builder.setupHorizontalMetrics({name: (_ADVANCE, 0) for name in names})
    builder.setupHorizontalHeader(ascent=_ASCENT, descent=-_DESCENT)
    builder.setupNameTable({"familyName": "DsocrText", "styleName": "Regular"})
    builder.setupOS2(
        sTypoAscender=_ASCENT, sTypoDescender=-_DESCENT, usWinAscent=_ASCENT, usWinDescent=_DESCENT
    )
    builder.setupPost()
    out = io.BytesIO()
    builder.save(out)
    return out.getvalue()


# (a, b, c, d) of the matrix taking display coordinates (y up, origin bottom left) to the page's
# user space, by /Rotate; the offset is added from the page box.
_ROTATIONS = {0: (1, 0, 0, 1), 90: (0, 1, -1, 0), 180: (-1, 0, 0, -1), 270: (0, -1, 1, 0)}


def _display_to_user(rotation: int, box: tuple[float, float, float, float]) -> tuple[float, ...]:
    left, bottom, right, top = box
    a, b, c, d = _ROTATIONS[rotation]
    e, f = {0: (left, bottom), 90: (right, bottom), 180: (right, top), 270: (left, top)}[rotation]
    return (a, b, c, d, e, f)


def _add_text(pdf: Any, page: Any, font: Any, text: PageText) -> None:
    """Put ``text``'s lines on ``page`` (a pypdfium2 page), invisible, over where they appear."""
    import pypdfium2.raw as pdfium_c

    rotation = page.get_rotation() % 360
    box = page.get_bbox()
    left, bottom, right, top = box
    width, height = (right - left, top - bottom) if rotation in (0, 180) else (top - bottom, right - left)
    scale_x, scale_y = width / max(1, text.size[0]), height / max(1, text.size[1])
    to_user = _display_to_user(rotation, box)
    for line, (x1, y1, x2, y2) in text.lines:
        characters = len(line)
        size = (y2 - y1) * scale_y
        if not characters or size <= 0:
            continue
        obj = pdfium_c.FPDFPageObj_CreateTextObj(pdf.raw, font, size)
        # A space after the line (beyond its box): extractors would otherwise join the last word
        # to the first word of a block just to its right.
        wide = ctypes.create_string_buffer((line + " \0").encode("utf-16-le"))
        pdfium_c.FPDFText_SetText(obj, ctypes.cast(wide, pdfium_c.FPDF_WIDESTRING))
        pdfium_c.FPDFTextObj_SetTextRenderMode(obj, pdfium_c.FPDF_TEXTRENDERMODE_INVISIBLE)
        # Stretch the line to its width, its baseline a descent above the box's bottom.
        stretch = (x2 - x1) * scale_x / (characters * size * _ADVANCE / _UNITS)
        baseline = height - y2 * scale_y + size * _DESCENT / _UNITS
        pdfium_c.FPDFPageObj_Transform(obj, stretch, 0, 0, 1, x1 * scale_x, baseline)
        pdfium_c.FPDFPageObj_Transform(obj, *to_user)
        pdfium_c.FPDFPage_InsertObject(page.raw, obj)
    page.gen_content()


def _load_font(pdf: Any, texts: Sequence[PageText | None]) -> Any:
    import pypdfium2.raw as pdfium_c

    characters = {c for text in texts if text is not None for line, _ in text.lines for c in line}
    data = _font(characters)
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    # pdfium copies the font data; the font is Type 0 (CID) so any character can be written.
    return pdfium_c.FPDFText_LoadFont(pdf.raw, buffer, len(data), pdfium_c.FPDF_FONT_TRUETYPE, True)


def _save(pdf: Any) -> bytes:
    out = io.BytesIO()
    pdf.save(out)
    return out.getvalue()


def overlay_pdf(data: bytes, page_indices: Sequence[int], texts: Sequence[PageText | None]) -> bytes:
    """The PDF ``data`` with ``texts`` on the pages ``page_indices`` (0-based); only those pages are
    kept, in that order (all of them: the document as it was, outline and metadata included)."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    source = pdfium.PdfDocument(data)
    try:
        if list(page_indices) == list(range(len(source))):
            pdf = source
        else:
            pdf = pdfium.PdfDocument.new()
            pdf.import_pages(source, list(page_indices))
        font = _load_font(pdf, texts)
        try:
            for position, text in enumerate(texts):
                if text is not None:
                    page = pdf[position]
                    try:
                        _add_text(pdf, page, font, text)
                    finally:
                        page.close()
            return _save(pdf)
        finally:
            pdfium_c.FPDFFont_Close(font)
            if pdf is not source:
                pdf.close()
    finally:
        source.close()


@dataclass(frozen=True, slots=True)
class _Picture:
    """One image page: a JPEG as sent, or decoded pixels; and its resolution."""

    image: Image.Image | None
    jpeg: bytes | None
    dpi: float


def _image_pdf(pictures: Sequence[_Picture], texts: Sequence[PageText | None]) -> bytes:
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pdf = pdfium.PdfDocument.new()
    try:
        font = _load_font(pdf, texts)
        try:
            for picture, text in zip(pictures, texts, strict=True):
                size = text.size if text is not None else (0, 0)
                if picture.image is not None:
                    size = picture.image.size
                points = size[0] * 72 / picture.dpi, size[1] * 72 / picture.dpi
                page = pdf.new_page(*points)
                try:
                    image = pdfium.PdfImage.new(pdf)
                    if picture.jpeg is not None:
                        image.load_jpeg(io.BytesIO(picture.jpeg), inline=True)
                    else:
                        assert picture.image is not None
                        bitmap = pdfium.PdfBitmap.from_pil(picture.image)
                        image.set_bitmap(bitmap)
                        bitmap.close()
                    image.set_matrix(pdfium.PdfMatrix().scale(*points))
                    page.insert_obj(image)
                    page.gen_content()
                    if text is not None:
                        _add_text(pdf, page, font, text)
                finally:
                    page.close()
            return _save(pdf)
        finally:
            pdfium_c.FPDFFont_Close(font)
    finally:
        pdf.close()


def _picture(result: PageResult, context: FileContext, source: bytes | None) -> _Picture:
    from PIL import Image, ImageOps

    dpi = float(_DEFAULT_DPI)
    if source is not None:
        with Image.open(io.BytesIO(source)) as opened:
            stated = opened.info.get("dpi")
            if isinstance(stated, tuple) and stated and float(stated[0]) >= _MIN_DPI:
                dpi = float(stated[0])
            upright = opened.getexif().get(0x0112, 1) in (0, 1)
            if opened.format == "JPEG" and upright and opened.mode in ("RGB", "L"):
                return _Picture(None, source, dpi)
            if context.page_image is None:
                return _Picture(ImageOps.exif_transpose(opened).convert("RGB"), None, dpi)
    if context.page_image is None:
        raise InvalidInput("a searchable PDF of an image needs the image", field="format")
    return _Picture(context.page_image(result.page), None, dpi)


def _file(results: Sequence[PageResult], context: FileContext) -> bytes:
    texts = [page_text(result) for result in results]
    source = context.source_bytes() if context.source_bytes is not None else None
    if context.render.kind == "pdf" and source is not None:
        indices = [result.page - 1 for result in results]
        if context.isolate is not None:
            built: bytes = context.isolate(overlay_pdf, source, indices, texts)
            return built
        return overlay_pdf(source, indices, texts)
    if context.render.kind == "pdf":
        # Without the original, its pages are rebuilt from their images.
        source = None
    pictures = [_picture(result, context, source) for result in results]
    return _image_pdf(pictures, texts)


OUTPUT = Output(
    name="pdf",
    description="Searchable PDF: the pages as they were, with an invisible text layer.",
    file=_file,
    suffix=".pdf",
    media_type="application/pdf",
    selectable=False,
)
