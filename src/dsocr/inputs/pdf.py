"""PDF pages rendered one at a time with pypdfium2 (Apache-2.0/BSD, not AGPL PyMuPDF).

This module runs inside the render worker processes (``dsocr.inputs.render_worker``), which
can be killed when a page runs over its budget; the server process makes no pdfium call on an input.
PDFium is not thread-safe, not even across different documents, so every pdfium call in a
process still goes through ``PDFIUM_LOCK``.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

from dsocr.errors import InputTooLarge, InvalidInput, UndecodableInput

__all__ = ["PDFIUM_LOCK", "PagePixels", "PdfFile", "parse_page_range"]

PDFIUM_LOCK = threading.Lock()

# pdfium's FPDF_GetLastError codes for FPDF_LoadMemDocument.
_ERR_FORMAT = 3
_ERR_PASSWORD = 4
_ERR_SECURITY = 5

_MAX_RANGE_SPEC = 1000
_RANGE_PART = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")
_WHITE = (255, 255, 255, 255)


def parse_page_range(spec: str, page_count: int, *, field: str = "pages") -> tuple[int, ...]:
    """Parse a 1-based page selection such as ``"1-3,5,8-"`` into sorted 0-based indices.

    ``"8-"`` runs to the last page and ``"-3"`` from the first. Pages are deduplicated and kept in
    document order. Raises ``InvalidInput`` naming the bad part.
    """
    if len(spec) > _MAX_RANGE_SPEC:
        raise InvalidInput(f"page range is longer than {_MAX_RANGE_SPEC} characters", field=field)
    if not spec.strip():
        raise InvalidInput("page range is empty; use e.g. '1-3,5,8-'", field=field)
    selected: set[int] = set()
    for part in spec.split(","):
        match = _RANGE_PART.match(part)
        if match is None or not (match.group(1) or match.group(3)):
            raise InvalidInput(f"page range part {part.strip()!r} is not N, N-M, N- or -M", field=field)
        first_text, dash, last_text = match.groups()
        if not dash and not first_text:
            raise InvalidInput(f"page range part {part.strip()!r} is not N, N-M, N- or -M", field=field)
        first = int(first_text) if first_text else 1
        last = (int(last_text) if last_text else page_count) if dash else first
        if first < 1 or last < 1:
            raise InvalidInput(f"page numbers start at 1; got {part.strip()!r}", field=field)
        if first > last:
            raise InvalidInput(f"page range {part.strip()!r} runs backwards", field=field)
        if last > page_count:
            raise InvalidInput(
                f"page {last} is past the end: the document has {page_count} page(s)", field=field
            )
        selected.update(range(first - 1, last))
    return tuple(sorted(selected))


@dataclass(frozen=True, slots=True)
class PagePixels:
    """A rendered page as packed RGB bytes: what crosses the process boundary (no PNG round trip)."""

    width: int
    height: int
    rgb: bytes

    def to_image(self) -> Image.Image:
        """The page as a PIL RGB image."""
        return Image.frombytes("RGB", (self.width, self.height), self.rgb)


@contextmanager
def _pdfium_errors(field: str) -> Iterator[None]:
    """Translate pypdfium2 errors into typed dsocr errors, once, at this seam."""
    try:
        yield
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code in (_ERR_PASSWORD, _ERR_SECURITY):
            raise UndecodableInput(
                "PDF is encrypted and needs a password; send an unencrypted copy", field=field
            ) from exc
        if code == _ERR_FORMAT:
            raise UndecodableInput("PDF is corrupt or not a PDF", field=field) from exc
        raise UndecodableInput(f"PDF cannot be read: {exc}", field=field) from exc


class PdfFile:
    """An open PDF whose selected pages are rendered on demand.

    Opening checks the page-count and per-page pixel limits up front (page sizes come from the
    page tree without loading pages), so errors surface before any page is rendered.
    Not thread-safe by itself; all pdfium work runs under ``PDFIUM_LOCK``. Close it when done.
    """

    def __init__(
        self,
        data: bytes | Path,
        *,
        max_pages: int,
        max_page_pixels: int,
        dpi: int,
        pages: str | None = None,
        field: str = "document",
    ) -> None:
        self._field = field
        self._scale = dpi / 72
        with PDFIUM_LOCK, _pdfium_errors(field):
            self._doc = pdfium.PdfDocument(str(data) if isinstance(data, Path) else data)
            try:
                self.page_count: int = len(self._doc)
                if self.page_count == 0:
                    raise UndecodableInput("PDF has no pages", field=field)
                if pages is None:
                    if self.page_count > max_pages:
                        raise InputTooLarge(
                            f"PDF has {self.page_count} pages; limit is {max_pages} "
                            "(DSOCR_LIMITS__MAX_PDF_PAGES); select fewer with a page range",
                            field=field,
                        )
                    self.selected: tuple[int, ...] = tuple(range(self.page_count))
                else:
                    self.selected = parse_page_range(pages, self.page_count)
                    if len(self.selected) > max_pages:
                        raise InputTooLarge(
                            f"page range selects {len(self.selected)} pages; limit is {max_pages} "
                            "(DSOCR_LIMITS__MAX_PDF_PAGES)",
                            field="pages",
                        )
                self.sizes: tuple[tuple[int, int], ...] = tuple(self._pixel_size(i) for i in self.selected)
                for index, (width, height) in zip(self.selected, self.sizes, strict=True):
                    if width * height > max_page_pixels:
                        raise InputTooLarge(
                            f"page {index + 1} at {dpi} dpi is {width}×{height} = {width * height:,} "
                            f"pixels; limit is {max_page_pixels:,} (DSOCR_LIMITS__MAX_PAGE_PIXELS); "
                            "use a lower dpi",
                            field=field,
                        )
                # Forms must be initialised before any page is loaded for fields to be drawn.
                self._doc.init_forms()
            except BaseException:
                self._doc.close()
                raise

    def _pixel_size(self, index: int) -> tuple[int, int]:
        # The size after /Rotate, rounded as pypdfium2 rounds the bitmap it renders.
        width_pt, height_pt = self._doc.get_page_size(index)
        return math.ceil(width_pt * self._scale), math.ceil(height_pt * self._scale)

    def render(self, index: int) -> PagePixels:
        """Render page ``index`` (0-based) to packed RGB on a white background."""
        with PDFIUM_LOCK, _pdfium_errors(self._field):
            page = self._doc[index]
            try:
                bitmap = page.render(
                    scale=self._scale,
                    may_draw_forms=True,
                    fill_color=_WHITE,
                    rev_byteorder=True,  # RGB straight from pdfium: no BGR→RGB pass in Python
                    draw_annots=True,
                )
                try:
                    # A fill colour without alpha gives packed 3-byte pixels (stride = 3 × width);
                    # bytes() copies them out of the bitmap, which is freed next.
                    pixels = PagePixels(bitmap.width, bitmap.height, bytes(bitmap.buffer))
                finally:
                    bitmap.close()
            finally:
                page.close()
        return pixels

    def close(self) -> None:
        """Release the pdfium document."""
        with PDFIUM_LOCK:
            self._doc.close()
