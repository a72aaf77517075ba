"""Load one image, or the pages of a PDF, from any source a user has.

The whole API in two calls::

    async with await load_document(UrlSource("https://…/scan.pdf"), limits=s.limits, fetch=s.fetch,
                                   pages="1-3") as doc:
        doc.page_sizes                        # (width, height) of each selected page: no pixel decoded yet
        async for page in doc.pages():        # rendered one at a time, cancellable
            ...page.image                     # PIL RGB, upright, transparency on white

    with open_file(Path("scan.pdf"), limits=s.limits) as doc:   # CLI: synchronous, trusted path
        for page in doc.iter_pages():
            ...

    image = await load_image(source, limits=s.limits, fetch=s.fetch)  # one picture, never a PDF

Opening decodes nothing: an image's header is read (size, EXIF orientation, pixel limit), a
PDF's page tree is read in a render worker. Pixels come when a page is asked for; PDF pages
render in worker processes under a time and memory budget (``dsocr.inputs.render_worker``).
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
from typing import Any, Literal, Protocol

from pebble import ProcessFuture
from PIL import Image

from dsocr.errors import DsocrError, InvalidInput, UnsupportedMediaType
from dsocr.inputs.formats import media_type_of, sniff_format
from dsocr.inputs.images import ImageHeader, decode_image, decode_pixels, read_image_header
from dsocr.inputs.pdf import PagePixels, parse_page_range
from dsocr.inputs.render_worker import (
    PdfLayout,
    PdfTempFile,
    RenderPool,
    cancel,
    open_pdf_task,
    render_pool,
    render_task,
)
from dsocr.inputs.sources import (
    Base64Source,
    BytesSource,
    PathSource,
    Resolver,
    Source,
    UrlSource,
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
# Pixels up to which a rendered page is turned into an image on the event loop (a few ms);
# larger pages are copied in a worker thread.
_INLINE_PIXELS = 4_000_000


@dataclass(frozen=True, slots=True)
class Page:
    """One page ready for the model: ``index`` is 0-based in the source document."""

    index: int
    image: Image.Image

    @property
    def size(self) -> tuple[int, int]:
        """Width and height in pixels."""
        return self.image.size


class _PageSource(Protocol):
    """How a document's pages become pixels (a decoded image, or PDF pages from render workers)."""

    def load(self, index: int) -> Image.Image: ...

    async def render(self, index: int) -> Image.Image: ...

    def close(self) -> None: ...


class _ImagePages:
    """The one page of an image, decoded on first request and then kept."""

    def __init__(self, data: bytes, header: ImageHeader, field: str) -> None:
        self._data = data
        self._header = header
        self._field = field
        self._lock = threading.Lock()
        self._image: Image.Image | None = None
        self._closed = False

    def load(self, index: int) -> Image.Image:
        with self._lock:
            if self._closed:
                raise DsocrError("the document was closed before its image was decoded")
            if self._image is None:
                self._image = decode_pixels(self._data, self._header, field=self._field)
                self._data = b""  # the encoded bytes are no longer needed
            return self._image

    async def render(self, index: int) -> Image.Image:
        # Decoding is bounded by the pixel limit checked from the header: a thread suffices.
        return await asyncio.to_thread(self.load, index)

    def close(self) -> None:
        # Drop the pixels now: route locals and page closures may outlive the request's
        # admission ticket, and the next admitted request must not find them still held.
        with self._lock:
            self._closed = True
            self._image = None
            self._data = b""


def _cancel_requested() -> bool:
    """Whether the running task was asked to cancel (always assumed before Python 3.11)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or cancelling() > 0


class _PdfPages:
    """Pages of a PDF rendered in render workers, each under the render budget.

    One document renders at most ``pool.slots_per_document`` pages at once. Closing cancels the
    renders still running (their workers are killed) and removes the PDF's file.
    """

    def __init__(
        self, file: PdfTempFile, pool: RenderPool, *, dpi: int, field: str, timeout_s: float
    ) -> None:
        self._file = file
        self._pool = pool
        self._dpi = dpi
        self._field = field
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._closed = False
        self._futures: set[ProcessFuture[Any]] = set()
        self._sync_slots = threading.BoundedSemaphore(pool.slots_per_document)
        self._async_slots: asyncio.Semaphore | None = None

    def _submit(self, index: int) -> ProcessFuture[Any]:
        with self._lock:
            if self._closed:
                raise DsocrError(f"the document was closed before page {index + 1} was rendered")
            future = self._pool.submit(
                render_task, str(self._file.path), index, self._dpi, self._field, timeout_s=self._timeout_s
            )
            self._futures.add(future)
            return future

    def _done(self, future: ProcessFuture[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def load(self, index: int) -> Image.Image:
        with self._sync_slots:
            future = self._submit(index)
            try:
                pixels: PagePixels = self._pool.result(
                    future, timeout_s=self._timeout_s, what=f"page {index + 1}", field=self._field
                )
            finally:
                self._done(future)
        return pixels.to_image()

    async def render(self, index: int) -> Image.Image:
        if self._async_slots is None:
            self._async_slots = asyncio.Semaphore(self._pool.slots_per_document)
        async with self._async_slots:
            future = self._submit(index)
            try:
                pixels: PagePixels = await self._pool.result_async(
                    future, timeout_s=self._timeout_s, what=f"page {index + 1}", field=self._field
                )
            except asyncio.CancelledError:
                if self._closed and not _cancel_requested():
                    # The document was closed under us; this task itself goes on.
                    raise DsocrError(
                        f"the document was closed before page {index + 1} was rendered"
                    ) from None
                raise
            finally:
                self._done(future)
        if pixels.width * pixels.height <= _INLINE_PIXELS:
            return pixels.to_image()
        return await asyncio.to_thread(pixels.to_image)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            futures, self._futures = self._futures, set()
        for future in futures:
            cancel(future)
        self._file.remove()


class Document:
    """An opened image or PDF whose selected pages are produced lazily.

    ``page_count`` is the number of pages in the source (1 for an image); ``page_indices`` the
    selected ones, 0-based, in document order; ``page_sizes`` the (width, height) in pixels of
    each selected page as it will be given (an image upright, a PDF page at the chosen dpi),
    known before any pixel is decoded. A page is decoded or rendered only when asked for, so a
    500-page PDF never sits in memory at once. Close the document (or use ``with``/``async with``).

    Pages may be asked for from several threads or tasks. ``await render(index)`` is cancellable:
    cancelling it kills the worker rendering that PDF page. Closing cancels renders still
    running, and a page asked for after closing fails with a ``DsocrError``.
    """

    def __init__(
        self,
        *,
        kind: Literal["image", "pdf"],
        media_type: str,
        page_count: int,
        page_indices: tuple[int, ...],
        page_sizes: tuple[tuple[int, int], ...],
        name: str | None,
        source: _PageSource,
    ) -> None:
        self.kind = kind
        self.media_type = media_type
        self.page_count = page_count
        self.page_indices = page_indices
        self.page_sizes = page_sizes
        self.name = name
        self._source = source

    def page_image(self, index: int) -> Image.Image:
        """Page ``index`` (0-based) as an RGB image; blocking (decodes or renders), thread-safe."""
        return self._source.load(index)

    async def render(self, index: int) -> Image.Image:
        """Page ``index`` (0-based) as an RGB image, off the event loop; cancelling stops the render."""
        return await self._source.render(index)

    def iter_pages(self) -> Iterator[Page]:
        """Yield the selected pages, each produced in the calling thread (CLI, batch workers)."""
        for index in self.page_indices:
            yield Page(index, self.page_image(index))

    async def pages(self) -> AsyncIterator[Page]:
        """Yield the selected pages, each produced off the event loop."""
        for index in self.page_indices:
            yield Page(index, await self.render(index))

    def close(self) -> None:
        """Cancel renders still running and release the PDF's file (no-op for images); idempotent."""
        self._source.close()

    async def aclose(self) -> None:
        """``close`` from async code (it does not block)."""
        self.close()

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


@dataclass(frozen=True, slots=True)
class _PdfToOpen:
    """A PDF written for the render workers, whose page tree is still to be read."""

    file: PdfTempFile
    media_type: str
    dpi: int
    pages: str | None
    field: str
    name: str | None

    def task_args(self, limits: LimitSettings) -> tuple[object, ...]:
        return (
            str(self.file.path),
            self.dpi,
            self.pages,
            limits.max_pdf_pages,
            limits.max_page_pixels,
            self.field,
        )

    def document(self, layout: PdfLayout, pool: RenderPool, limits: LimitSettings) -> Document:
        pages = _PdfPages(self.file, pool, dpi=self.dpi, field=self.field, timeout_s=limits.render_timeout_s)
        return Document(
            kind="pdf",
            media_type=self.media_type,
            page_count=layout.page_count,
            page_indices=layout.selected,
            page_sizes=layout.sizes,
            name=self.name,
            source=pages,
        )


def _prepare(
    data: bytes,
    *,
    limits: LimitSettings,
    pages: str | None,
    dpi: int | None,
    field: str,
    name: str | None,
    pdf_advice: str | None = None,
) -> Document | _PdfToOpen:
    """The part of opening that needs no render worker: sniff, then an image's header or the PDF's file.

    With ``pdf_advice`` the input must be one image: a PDF is refused before pdfium sees it.
    """
    resolution = _check_dpi(dpi, limits.pdf_dpi)
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType(
            "not an accepted format: send PNG, JPEG, WebP, TIFF, BMP, GIF or PDF", field=field
        )
    if fmt == "PDF" and pdf_advice is not None:
        raise UnsupportedMediaType(f"{field} takes one image, not a PDF; {pdf_advice}", field=field)
    if fmt == "PDF":
        return _PdfToOpen(
            file=PdfTempFile(data),
            media_type=media_type_of(fmt),
            dpi=resolution,
            pages=pages,
            field=field,
            name=name,
        )
    selected = (0,) if pages is None else parse_page_range(pages, 1)
    header = read_image_header(data, max_pixels=limits.max_image_pixels, field=field)
    return Document(
        kind="image",
        media_type=media_type_of(fmt),
        page_count=1,
        page_indices=selected,
        page_sizes=(header.size,),
        name=name,
        source=_ImagePages(data, header, field),
    )


def _open_pdf(pdf: _PdfToOpen, limits: LimitSettings) -> Document:
    pool = render_pool(limits)
    try:
        layout: PdfLayout = pool.call(
            open_pdf_task,
            *pdf.task_args(limits),
            timeout_s=limits.render_timeout_s,
            what="the PDF",
            action="to open",
            field=pdf.field,
        )
    except BaseException:
        pdf.file.remove()
        raise
    return pdf.document(layout, pool, limits)


async def _open_pdf_async(pdf: _PdfToOpen, limits: LimitSettings) -> Document:
    pool = render_pool(limits)
    try:
        layout: PdfLayout = await pool.call_async(
            open_pdf_task,
            *pdf.task_args(limits),
            timeout_s=limits.render_timeout_s,
            what="the PDF",
            action="to open",
            field=pdf.field,
        )
    except BaseException:
        pdf.file.remove()
        raise
    return pdf.document(layout, pool, limits)


def open_document(
    data: bytes,
    *,
    limits: LimitSettings,
    pages: str | None = None,
    dpi: int | None = None,
    field: str = "document",
    name: str | None = None,
) -> Document:
    """Open bytes already in memory, decoding no pixel: an image's header is read and checked,
    a PDF's page tree is read (page count, sizes, limits) in a render worker.

    The format comes from the magic bytes only. ``pages`` ("1-3,5,8-") selects pages (an image has
    one); ``dpi`` defaults to ``limits.pdf_dpi``. Blocking: in async code use ``load_document``.
    """
    prepared = _prepare(data, limits=limits, pages=pages, dpi=dpi, field=field, name=name)
    if isinstance(prepared, Document):
        return prepared
    return _open_pdf(prepared, limits)


async def load_document(
    source: Source,
    *,
    limits: LimitSettings,
    fetch: FetchSettings,
    pages: str | None = None,
    dpi: int | None = None,
    resolver: Resolver | None = None,
    verify: ssl.SSLContext | None = None,
    pdf_advice: str | None = None,
) -> Document:
    """Read ``source`` (URL, base64, bytes or confined path) and open it; see ``open_document``.

    With ``pdf_advice`` the input must be one image: a PDF is refused, with that advice.

    Network reads are async; header reading runs in a worker thread and a PDF's page tree in a
    render worker (cancelling the call stops it). For URLs, ``resolver`` replaces DNS resolution
    (tests) and ``verify`` the trusted CAs.
    """
    raw = await read_source(source, limits=limits, fetch=fetch, resolver=resolver, verify=verify)
    prepared = await asyncio.to_thread(
        _prepare,
        raw.data,
        limits=limits,
        pages=pages,
        dpi=dpi,
        field=raw.field,
        name=raw.name,
        pdf_advice=pdf_advice,
    )
    if isinstance(prepared, Document):
        return prepared
    return await _open_pdf_async(prepared, limits)


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
