"""Layout boxes drawn on page images, and a layout PDF of annotated pages (Pillow, in memory).

Pure functions over :mod:`dsocr.types`: nothing here parses model text or does I/O. Boxes are
taken from each block's 0–999 grid coordinates and scaled to the image being drawn on
(``v / 999 * W``, deepseek-ocr.md §5.2), so a thumbnail or a page re-rendered at another DPI
gets correctly placed boxes too.

Compared with the official ``draw_bounding_boxes`` (random colour per call, fixed 11 px font,
labels that can leave the image), colours here are a fixed palette keyed by label, the font and
line widths scale with the image, and label tags are kept inside the image.
"""

from __future__ import annotations

import io
import math
import threading
import zlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from dsocr.types import Block, Box, ParsedOutput

__all__ = ["Colour", "draw_blocks", "label_colour", "layout_pdf", "scale_box"]

Colour = tuple[int, int, int]

# Fixed colours for the labels DeepSeek-OCR is known to emit (§5.1). Dark and saturated so that a
# thin outline and white tag text stay readable on white paper.
_LABEL_COLOURS: dict[str, Colour] = {
    "title": (200, 30, 45),
    "sub_title": (230, 100, 20),
    "text": (30, 90, 200),
    "image": (20, 140, 60),
    "image_caption": (110, 150, 20),
    "table": (130, 50, 180),
    "table_caption": (170, 80, 150),
    "table_footnote": (120, 90, 160),
    "equation": (0, 130, 140),
    "figure_title": (150, 110, 0),
    "header": (90, 90, 90),
    "footer": (90, 90, 90),
    "footnote": (100, 70, 40),
}

# Any other label (OCR-mode blocks carry the recognised text as their label) gets one of these,
# chosen by a CRC of the label: stable across calls and processes, unlike ``hash()``.
_FALLBACK_COLOURS: tuple[Colour, ...] = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 150, 160),
    (188, 140, 0),
    (60, 60, 160),
    (160, 60, 60),
)

_FILL_ALPHA = 40
_HIGHLIGHT_FILL_ALPHA = 90
_MAX_LABEL_CHARS = 40


def label_colour(label: str) -> Colour:
    """The RGB colour used for ``label``: the same label always gets the same colour."""
    known = _LABEL_COLOURS.get(label.strip().lower())
    if known is not None:
        return known
    return _FALLBACK_COLOURS[zlib.crc32(label.encode("utf-8")) % len(_FALLBACK_COLOURS)]


def scale_box(box: Box, size: tuple[int, int]) -> Box:
    """A 0–999 grid box in pixels of an image of ``size`` (``int(v / 999 * W)``, clamped, ordered)."""
    width, height = size
    x1, y1, x2, y2 = (min(max(v, 0), 999) for v in box)
    px1, px2 = sorted((int(x1 / 999 * width), int(x2 / 999 * width)))
    py1, py2 = sorted((int(y1 / 999 * height), int(y2 / 999 * height)))
    # Keep the far edge on the image: a box reaching 999 would otherwise be drawn at x == W.
    return px1, py1, min(px2, width - 1), min(py2, height - 1)


@dataclass(frozen=True, slots=True)
class _Style:
    """Sizes that scale with the image, so labels stay readable on a phone photo and a 300 dpi scan."""

    line: int
    title_line: int
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    pad: int

    @classmethod
    def for_size(cls, size: tuple[int, int]) -> _Style:
        short = min(size)
        line = max(2, round(short / 400))
        font_px = max(11, min(48, round(short / 55)))
        return cls(line=line, title_line=2 * line, font=_font(font_px), pad=max(2, font_px // 5))


# One font cache per thread: a FreeType face is not safe to render from two threads at once, and
# servers draw in a thread pool.
_fonts = threading.local()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    cache: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = _fonts.__dict__.setdefault("by_size", {})
    font = cache.get(size)
    if font is None:
        # Pillow >= 10.1 with FreeType ships a scalable default font (Aileron); no system font needed.
        font = cache[size] = ImageFont.load_default(size=size)
    return font


def _to_rgba(image: Image.Image) -> Image.Image:
    # Transparent areas become white (as on paper) rather than whatever colour hides under alpha 0.
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba)
    return image.convert("RGB").convert("RGBA")


def _tag_text(label: str) -> str:
    text = " ".join(label.split())
    return text if len(text) <= _MAX_LABEL_CHARS else text[: _MAX_LABEL_CHARS - 3] + "..."


def _overlap_area(rect: Box, others: npt.NDArray[np.int64]) -> int:
    """Total area of ``rect`` covered by the rows (x1, y1, x2, y2) of ``others``."""
    if len(others) == 0:
        return 0
    w = np.minimum(others[:, 2], rect[2]) - np.maximum(others[:, 0], rect[0])
    h = np.minimum(others[:, 3], rect[3]) - np.maximum(others[:, 1], rect[1])
    return int((np.clip(w, 0, None) * np.clip(h, 0, None)).sum())


class _TagPlacer:
    """Puts each label tag above its box, or inside the box top when above is off the image or
    would hide more of the page's ink (adjacent layout blocks are common, so "above" often lies
    on the previous block's last line). Always inside the image; the right edge is clamped."""

    # Covering another tag hides a whole label; weigh it like that many pixels of ink each.
    _TAG_WEIGHT = 4

    def __init__(self, page: Image.Image, boxes: Sequence[Box]) -> None:
        self._boxes = boxes
        self._tags: list[Box] = []
        self._size = page.size
        # Summed-area table of dark pixels: the ink under any rectangle in O(1).
        ink = np.asarray(page.convert("L"), dtype=np.uint8) < 128
        # int32 holds counts for pages up to 2 gigapixels at half the memory of int64.
        self._ink = np.pad(ink.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32), ((1, 0), (1, 0)))

    def _ink_under(self, rect: Box) -> int:
        x1, y1, x2, y2 = rect
        table = self._ink
        return int(table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1])

    def place(self, box_number: int, tag_size: tuple[int, int]) -> Box | None:
        """The tag rectangle for box ``box_number``, or ``None`` if the tag cannot fit the image."""
        tag_w, tag_h = tag_size
        width, height = self._size
        if tag_w > width or tag_h > height:
            return None
        x1, y1 = self._boxes[box_number][:2]
        x = min(max(x1, 0), width - tag_w)
        tops = [y1 - tag_h, y1] if y1 - tag_h >= 0 else [y1]
        rects = [(x, y, x + tag_w, y + tag_h) for y in (min(top, height - tag_h) for top in tops)]
        tags = np.array(self._tags, dtype=np.int64).reshape(-1, 4)
        # min() keeps the first of equal costs: above wins ties.
        best = min(rects, key=lambda r: self._ink_under(r) + self._TAG_WEIGHT * _overlap_area(r, tags))
        self._tags.append(best)
        return best


def draw_blocks(
    image: Image.Image,
    blocks: Sequence[Block],
    *,
    highlight: Collection[int] | None = None,
) -> Image.Image:
    """Return an RGB copy of ``image`` with every box of every block drawn and labelled.

    Each box gets a translucent fill and an opaque outline in its label's colour (twice as thick
    for ``title``), and a tag with the label in white on that colour, kept inside the image.
    ``highlight`` names block indices (``Block.index``) to emphasise: those get a thicker outline
    and a stronger fill. ``image`` is not modified.
    """
    canvas = _to_rgba(image)
    size = canvas.size
    style = _Style.for_size(size)
    wanted = set(highlight) if highlight is not None else set()

    fills = Image.new("RGBA", size, (0, 0, 0, 0))
    fill_draw = ImageDraw.Draw(fills)
    outlines: list[tuple[Box, Colour, int, str]] = []
    for block in blocks:
        colour = label_colour(block.label)
        emphasised = block.index in wanted
        width = style.title_line if block.label == "title" else style.line
        if emphasised:
            width *= 2
        alpha = _HIGHLIGHT_FILL_ALPHA if emphasised else _FILL_ALPHA
        for grid_box in block.boxes:
            box = scale_box(grid_box, size)
            fill_draw.rectangle(box, fill=(*colour, alpha))
            outlines.append((box, colour, width, block.label))

    page = canvas  # the page before any drawing: tags avoid its ink
    canvas = Image.alpha_composite(canvas, fills)
    draw = ImageDraw.Draw(canvas)
    # Outlines first, then every tag, so that no outline crosses a label.
    for box, colour, width, _ in outlines:
        draw.rectangle(box, outline=(*colour, 255), width=width)
    placer = _TagPlacer(page, [box for box, _, _, _ in outlines])
    for number, (_, colour, _, label) in enumerate(outlines):
        text = _tag_text(label)
        if not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=style.font)
        tag_size = (math.ceil(right - left) + 2 * style.pad, math.ceil(bottom - top) + 2 * style.pad)
        rect = placer.place(number, tag_size)
        if rect is None:
            continue
        draw.rectangle(rect, fill=(*colour, 255))
        draw.text(
            (rect[0] + style.pad - left, rect[1] + style.pad - top), text, font=style.font, fill="white"
        )
    return canvas.convert("RGB")


def layout_pdf(
    pages: Iterable[tuple[Image.Image, ParsedOutput]],
    *,
    max_side: int = 2000,
    jpeg_quality: int = 85,
    dpi: float = 150.0,
) -> bytes:
    """A PDF with one annotated page per ``(page image, parsed output)``, like the official
    ``<name>_layouts.pdf``.

    Memory stays bounded by the compressed pages, not the pixels: each page is shrunk to at most
    ``max_side`` pixels, annotated, JPEG-encoded and dropped before the next one is drawn, and
    pdfium embeds the JPEG streams as they are (no re-encoding). The price is JPEG's softening of
    thin outlines and small text; raise ``jpeg_quality`` or ``max_side`` for sharper pages.
    ``dpi`` sets the physical page size (pixels / dpi inches).
    """
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    # pdfium reads each JPEG lazily at save time, so the buffers must outlive ``pdf.save``.
    buffers: list[io.BytesIO] = []
    try:
        for image, parsed in pages:
            page_image = image.copy()
            page_image.thumbnail((max_side, max_side))
            annotated = draw_blocks(page_image, parsed.blocks)
            buffer = io.BytesIO()
            annotated.save(buffer, format="JPEG", quality=jpeg_quality, optimize=True)
            buffer.seek(0)
            buffers.append(buffer)
            width_pt = annotated.width * 72.0 / dpi
            height_pt = annotated.height * 72.0 / dpi
            page = pdf.new_page(width_pt, height_pt)
            picture = pdfium.PdfImage.new(pdf)
            picture.load_jpeg(buffer, inline=False, autoclose=False)
            picture.set_matrix(pdfium.PdfMatrix().scale(width_pt, height_pt))
            page.insert_obj(picture)
            page.gen_content()
            page.close()
        out = io.BytesIO()
        pdf.save(out)
        return out.getvalue()
    finally:
        pdf.close()
        for buffer in buffers:
            buffer.close()
