"""Load one image, or the pages of a PDF, from any source a user has.

The whole API in two calls::

    async with await load_document(UrlSource("https://…/scan.pdf"), limits=s.limits, fetch=s.fetch,
                                   pages="1-3") as doc:
        async for page in doc.pages():        # rendered one at a time, off the event loop
            ...page.image                     # PIL RGB, upright, transparency on white

    with open_file(Path("scan.pdf"), limits=s.limits) as doc:   # CLI: synchronous, trusted path
        for page in doc.iter_pages():
            ...

    image = await load_image(source, limits=s.limits, fetch=s.fetch)  # one picture, never a PDF

Every failure is a typed ``dsocr.errors.InvalidInput`` subclass naming the field at fault.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from PIL import Image

from dsocr.errors import DsocrError, InvalidInput, UnsupportedMediaType
from dsocr.inputs.formats import media_type_of, sniff_format
from dsocr.inputs.images import decode_image
from dsocr.inputs.pdf import PdfFile, parse_page_range
from dsocr.inputs.sources import (
    Base64Source,
    BytesSource,
    PathSource,
    Resolver,
    Source,
    UrlSource,
    decode_base64,
    read_local_file,
    read_source,
)
from dsocr.settings import FetchSettings, LimitSettings

__all__ = [
    "Base64Source",
    "BytesSource",
    "Document",
    "Page",
    "PathSource",
    "Source",
    "UrlSource",
    "load_document",
    "load_image",
    "open_document",
    "open_file",
    "open_image",
    "parse_page_range",
]

_MIN_DPI, _MAX_DPI = 36, 600


@dataclass(frozen=True, slots=True)
class Page:
    """One page ready for the model: ``index`` is 0-based in the source document."""

    index: int
    image: Image.Image

    @property
    def size(self) -> tuple[int, int]:
        """Width and height in pixels."""
        return self.image.size


class Document:
    """An opened image or PDF whose selected pages are produced lazily.

    ``page_count`` is the number of pages in the source (1 for an image); ``page_indices`` the
    selected ones, 0-based, in document order. A PDF page is rendered only when iterated, so a
    500-page PDF never sits in memory at once. Close the document (or use ``with``/``async with``).

    Pages may be rendered from several threads. Closing waits for renders already running (a
    cancelled request's worker thread keeps going), and a page asked for after closing fails with
    a ``DsocrError`` instead of touching a freed PDF.
    """

    def __init__(
        self,
        *,
        kind: Literal["image", "pdf"],
        media_type: str,
        page_count: int,
        page_indices: tuple[int, ...],
        name: str | None,
        image: Image.Image | None = None,
        pdf: PdfFile | None = None,
    ) -> None:
        self.kind = kind
        self.media_type = media_type
        self.page_count = page_count
        self.page_indices = page_indices
        self.name = name
        self._image = image
        self._pdf = pdf
        self._renders = 0
        self._closed = False
        self._cond = threading.Condition()

    def page_image(self, index: int) -> Image.Image:
        """Page ``index`` (0-based) as an RGB image; blocking (renders a PDF page), thread-safe."""
        if self.kind == "image":
            assert self._image is not None
            return self._image
        with self._cond:
            if self._closed or self._pdf is None:
                raise DsocrError(f"the document was closed before page {index + 1} was rendered")
            self._renders += 1
            pdf = self._pdf
        try:
            return pdf.render(index)
        finally:
            with self._cond:
                self._renders -= 1
                self._cond.notify_all()

    def _page(self, index: int) -> Page:
        return Page(index, self.page_image(index))

    def iter_pages(self) -> Iterator[Page]:
        """Yield the selected pages, rendering each in the calling thread (CLI, batch workers)."""
        for index in self.page_indices:
            yield self._page(index)

    async def pages(self) -> AsyncIterator[Page]:
        """Yield the selected pages, rendering each in a worker thread so the event loop stays free."""
        for index in self.page_indices:
            if self.kind == "image":
                yield self._page(index)
            else:
                yield await asyncio.to_thread(self._page, index)

    def close(self) -> None:
        """Release the PDF once running renders finished (no-op for images); idempotent."""
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._renders == 0)
            pdf, self._pdf = self._pdf, None
        if pdf is not None:
            pdf.close()

    async def aclose(self) -> None:
        """``close`` from async code: waits for the pdfium lock in a worker thread."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Document:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Document:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"Document(kind={self.kind!r}, media_type={self.media_type!r}, page_count={self.page_count}, "
            f"selected={len(self.page_indices)}, name={self.name!r})"
        )


def _check_dpi(dpi: int | None, default: int) -> int:
    if dpi is None:
        return default
    if not _MIN_DPI <= dpi <= _MAX_DPI:
        raise InvalidInput(f"dpi must be between {_MIN_DPI} and {_MAX_DPI}; got {dpi}", field="dpi")
    return dpi


def open_document(
    data: bytes,
    *,
    limits: LimitSettings,
    pages: str | None = None,
    dpi: int | None = None,
    field: str = "document",
    name: str | None = None,
) -> Document:
    """Open bytes already in memory: decode an image now, or open a PDF for lazy rendering.

    The format comes from the magic bytes only. ``pages`` ("1-3,5,8-") selects pages (an image has
    one); ``dpi`` defaults to ``limits.pdf_dpi``. Blocking: call it from a worker thread in async code.
    """
    resolution = _check_dpi(dpi, limits.pdf_dpi)
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType(
            "not an accepted format: send PNG, JPEG, WebP, TIFF, BMP, GIF or PDF", field=field
        )
    if fmt == "PDF":
        pdf = PdfFile(
            data,
            max_pages=limits.max_pdf_pages,
            max_page_pixels=limits.max_page_pixels,
            dpi=resolution,
            pages=pages,
            field=field,
        )
        return Document(
            kind="pdf",
            media_type=media_type_of(fmt),
            page_count=pdf.page_count,
            page_indices=pdf.selected,
            name=name,
            pdf=pdf,
        )
    selected = (0,) if pages is None else parse_page_range(pages, 1)
    image = decode_image(data, max_pixels=limits.max_image_pixels, field=field)
    return Document(
        kind="image",
        media_type=media_type_of(fmt),
        page_count=1,
        page_indices=selected,
        name=name,
        image=image,
    )


async def load_document(
    source: Source,
    *,
    limits: LimitSettings,
    fetch: FetchSettings,
    pages: str | None = None,
    dpi: int | None = None,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | None = None,
) -> Document:
    """Read ``source`` (URL, base64, bytes or confined path) and open it; see ``open_document``.

    Network reads are async; decoding and PDF opening run in a worker thread. For URLs,
    ``resolver`` replaces DNS resolution (tests) and ``verify`` the trusted CAs.
    """
    if isinstance(source, Base64Source):
        return await asyncio.to_thread(_open_base64_document, source, limits, pages, dpi)
    raw = await read_source(source, limits=limits, fetch=fetch, resolver=resolver, verify=verify)
    return await asyncio.to_thread(
        open_document, raw.data, limits=limits, pages=pages, dpi=dpi, field=raw.field, name=raw.name
    )


# A base64 upload is decoded twice, the text into bytes and the bytes into an image: one worker
# job for both. Under a burst of uploads every job waits its turn in the loop's executor, and a
# second job per upload waited once more, behind every decode queued meanwhile. (On the H100
# bench's burst of 256 uploads the change moved nothing beyond the run-to-run spread:
# bench/README.md, session 13.)


def _open_base64_document(
    source: Base64Source, limits: LimitSettings, pages: str | None, dpi: int | None
) -> Document:
    raw = decode_base64(source.data, max_bytes=limits.max_upload_bytes, field=source.field)
    return open_document(raw.data, limits=limits, pages=pages, dpi=dpi, field=raw.field, name=raw.name)


def _open_base64_image(source: Base64Source, limits: LimitSettings, pdf_advice: str) -> Image.Image:
    raw = decode_base64(source.data, max_bytes=limits.max_upload_bytes, field=source.field)
    return open_image(raw.data, limits=limits, field=raw.field, pdf_advice=pdf_advice)


def open_image(
    data: bytes, *, limits: LimitSettings, field: str = "image", pdf_advice: str = "send one page as an image"
) -> Image.Image:
    """Open bytes that must be one image (PNG, JPEG, WebP, TIFF, BMP or GIF), never a PDF.

    For inputs that take one picture (``/predict``, OpenAI chat, the visualizer): decoded now,
    upright and RGB, within ``limits.max_image_pixels``. A PDF is refused, before pdfium sees it,
    with ``pdf_advice`` saying where PDFs go. Blocking: call it from a worker thread in async code.
    """
    if sniff_format(data) == "PDF":
        raise UnsupportedMediaType(f"{field} takes one image, not a PDF; {pdf_advice}", field=field)
    return decode_image(data, max_pixels=limits.max_image_pixels, field=field)


async def load_image(
    source: Source,
    *,
    limits: LimitSettings,
    fetch: FetchSettings,
    pdf_advice: str = "send one page as an image",
) -> Image.Image:
    """Read ``source`` and open it as one image; see ``open_image``."""
    if isinstance(source, Base64Source):
        return await asyncio.to_thread(_open_base64_image, source, limits, pdf_advice)
    raw = await read_source(source, limits=limits, fetch=fetch)
    return await asyncio.to_thread(
        open_image, raw.data, limits=limits, field=raw.field, pdf_advice=pdf_advice
    )


def open_file(
    path: Path, *, limits: LimitSettings, pages: str | None = None, dpi: int | None = None
) -> Document:
    """Open a file the local user named (CLI): synchronous, not confined to a root."""
    source = read_local_file(path, limits=limits)
    return open_document(source.data, limits=limits, pages=pages, dpi=dpi, field="file", name=source.filename)
