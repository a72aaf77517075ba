"""PDF pages render lazily, one at a time, in render workers, within page and pixel limits."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from typing import Any

import pypdfium2 as pdfium
import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter
from pypdf.generic import DecodedStreamObject, NameObject

from dsocr.errors import DsocrError, InputTooLarge, InvalidInput, UndecodableInput, UnsupportedMediaType
from dsocr.inputs import BytesSource, load_document, open_document, open_image, parse_page_range
from dsocr.inputs.render_worker import RenderPool, render_task
from dsocr.settings import FetchSettings, LimitSettings
from pdf_bomb import pdf_with_pages


def _blank_pdf(pages: int, size: tuple[float, float] = (612, 792)) -> bytes:
    doc = pdfium.PdfDocument.new()
    for _ in range(pages):
        doc.new_page(*size)
    buffer = io.BytesIO()
    doc.save(buffer)
    doc.close()
    return buffer.getvalue()


def _pdf_with_marks(pages: int) -> bytes:
    """Each page has a black square whose x position encodes the page number (via pypdf)."""
    writer = PdfWriter()
    for number in range(pages):
        page = writer.add_blank_page(width=300, height=200)
        content = DecodedStreamObject()
        content.set_data(f"0 g {20 + number * 40} 150 30 30 re f".encode())
        page[NameObject("/Contents")] = writer._add_object(content)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _dark_column(image: Image.Image) -> int:
    """x of the first dark pixel on the row through the marks (at 144 dpi: y = (200-165)*2)."""
    y = 70
    for x in range(image.width):
        if max(image.getpixel((x, y))) < 60:  # type: ignore[arg-type]
            return x
    return -1


@pytest.fixture(scope="module")
def ten_thousand_pages() -> bytes:
    return _blank_pdf(10_000)


def test_pdf_over_the_page_cap_is_refused_naming_the_limit(
    ten_thousand_pages: bytes, limits: LimitSettings
) -> None:
    with pytest.raises(InputTooLarge) as info:
        open_document(ten_thousand_pages, limits=limits, field="file")
    assert "10000 pages; limit is 500" in info.value.message
    assert info.value.field == "file"
    assert info.value.code == "input_too_large"


def _record_renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Page indices handed to the render workers, in order."""
    rendered: list[int] = []
    original = RenderPool.submit

    def recording_submit(self: RenderPool, task: Any, *args: Any, timeout_s: float) -> Any:
        if task is render_task:
            rendered.append(args[1])
        return original(self, task, *args, timeout_s=timeout_s)

    monkeypatch.setattr(RenderPool, "submit", recording_submit)
    return rendered


def test_page_range_on_a_10000_page_pdf_renders_only_the_selected_pages(
    ten_thousand_pages: bytes, limits: LimitSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = _record_renders(monkeypatch)
    with open_document(ten_thousand_pages, limits=limits, pages="2,9999-") as doc:
        assert doc.page_count == 10_000
        assert doc.page_indices == (1, 9998, 9999)
        assert doc.page_sizes == ((1224, 1584),) * 3  # US letter at 144 dpi, known before rendering
        assert rendered == []  # opening renders nothing
        pages = doc.iter_pages()
        first = next(pages)
        assert rendered == [1]  # one page at a time, on demand
        assert first.index == 1 and first.size == (1224, 1584)
        assert [p.index for p in pages] == [9998, 9999]
    assert rendered == [1, 9998, 9999]


def test_range_selecting_more_pages_than_the_cap_is_refused(
    ten_thousand_pages: bytes, limits: LimitSettings
) -> None:
    with pytest.raises(InputTooLarge) as info:
        open_document(ten_thousand_pages, limits=limits, pages="1-501")
    assert info.value.field == "pages"


def test_pages_come_in_document_order_with_their_content(limits: LimitSettings) -> None:
    with open_document(_pdf_with_marks(5), limits=limits, pages="5,1-2,4") as doc:
        pages = list(doc.iter_pages())
    assert [p.index for p in pages] == [0, 1, 3, 4]
    # The mark of page n sits at x = (20 + 40 n) pt = (40 + 80 n) px at 144 dpi.
    assert [_dark_column(p.image) for p in pages] == [40, 120, 280, 360]
    assert all(p.image.mode == "RGB" for p in pages)


def test_dpi_sets_the_rendered_size(limits: LimitSettings) -> None:
    data = _blank_pdf(1, (595, 842))  # A4
    for dpi, expected in [(72, (595, 842)), (144, (1190, 1684)), (200, (1653, 2339))]:
        with open_document(data, limits=limits, dpi=dpi) as doc:
            assert next(doc.iter_pages()).size == expected


@pytest.mark.parametrize("dpi", [0, 35, 601, -1])
def test_dpi_outside_the_allowed_range_is_invalid(dpi: int, limits: LimitSettings) -> None:
    with pytest.raises(InvalidInput) as info:
        open_document(_blank_pdf(1), limits=limits, dpi=dpi)
    assert info.value.field == "dpi"


def test_page_over_the_pixel_cap_is_refused_before_rendering(limits: LimitSettings) -> None:
    poster = _blank_pdf(1, (8_000, 8_000))  # 111 inches square: 16000² px at 144 dpi
    with pytest.raises(InputTooLarge, match="page 1 at 144 dpi is 16000×16000"):
        open_document(poster, limits=limits)
    with open_document(poster, limits=limits, dpi=36) as doc:  # 4000² = 16 MP: within the cap
        assert next(doc.iter_pages()).size == (4000, 4000)


def test_encrypted_pdf_is_undecodable_with_a_clear_reason(limits: LimitSettings) -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_pdf_with_marks(1))))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    with pytest.raises(UndecodableInput, match="encrypted") as info:
        open_document(buffer.getvalue(), limits=limits, field="file")
    assert info.value.field == "file"


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7\n" + b"garbage " * 100, b"%PDF-1.4\n%%EOF", _blank_pdf(3)[:300]],
    ids=["garbage", "empty-body", "truncated"],
)
def test_corrupt_pdf_is_undecodable(data: bytes, limits: LimitSettings) -> None:
    with pytest.raises(UndecodableInput) as info:
        open_document(data, limits=limits)
    assert info.value.code == "undecodable_input"


def test_rotated_page_renders_landscape(limits: LimitSettings) -> None:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(_pdf_with_marks(1))))
    writer.pages[0].rotate(90)
    buffer = io.BytesIO()
    writer.write(buffer)
    with open_document(buffer.getvalue(), limits=limits) as doc:
        assert next(doc.iter_pages()).size == (400, 600)


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("1-3,5,8-", 10, (0, 1, 2, 4, 7, 8, 9)),
        ("3", 3, (2,)),
        ("-2", 5, (0, 1)),
        (" 2 - 3 , 1 ", 4, (0, 1, 2)),
        ("2,2,1-2", 3, (0, 1)),
        ("4-", 4, (3,)),
    ],
)
def test_page_range_parsing(spec: str, count: int, expected: tuple[int, ...]) -> None:
    assert parse_page_range(spec, count) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("0", "start at 1"),
        ("3-1", "backwards"),
        ("11", "past the end"),
        ("9-12", "past the end"),
        ("a", "not N"),
        ("1-2-3", "not N"),
        ("1,,2", "not N"),
        ("-", "not N"),
        ("1.5", "not N"),
        ("1" * 1001, "longer than"),
    ],
)
def test_bad_page_ranges_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_page_range(spec, 10)
    assert info.value.field == "pages"


async def test_async_pages_render_in_workers_and_the_loop_stays_free(
    limits: LimitSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = _record_renders(monkeypatch)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    data = _blank_pdf(4, (595, 842))
    beat = asyncio.create_task(heartbeat())
    async with await load_document(BytesSource(data), limits=limits, fetch=FetchSettings()) as doc:
        assert doc.page_sizes == ((1190, 1684),) * 4
        sizes = [page.size async for page in doc.pages()]
    beat.cancel()
    assert sizes == [(1190, 1684)] * 4
    assert rendered == [0, 1, 2, 3]  # each page went to a render worker
    assert ticks > 0


async def test_concurrent_documents_render_safely_under_the_pdfium_lock(limits: LimitSettings) -> None:
    data = _pdf_with_marks(4)

    async def columns() -> list[int]:
        async with await load_document(BytesSource(data), limits=limits, fetch=FetchSettings()) as doc:
            return [_dark_column(page.image) async for page in doc.pages()]

    results = await asyncio.gather(*(columns() for _ in range(6)))
    assert results == [[40, 120, 200, 280]] * 6


def test_closing_stops_a_render_in_flight_and_later_pages_fail_cleanly() -> None:
    # A cancelled request closes its document while another thread may still wait for a page:
    # the render is stopped (its worker killed) instead of running on for a closed document.
    limits = LimitSettings(render_timeout_s=120)
    document = open_document(pdf_with_pages(30, None), limits=limits)
    outcome: list[BaseException] = []

    def wait_for_page() -> None:
        try:
            document.page_image(0)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_page)
    waiter.start()
    time.sleep(1)  # the bomb page is rendering by now
    started = time.monotonic()
    document.close()
    waiter.join(30)
    assert not waiter.is_alive() and time.monotonic() - started < 30
    assert len(outcome) == 1 and isinstance(outcome[0], DsocrError)
    with pytest.raises(DsocrError, match="closed before page 2"):
        document.page_image(1)
    document.close()  # idempotent


def test_open_image_refuses_a_pdf_before_opening_it_and_says_where_pdfs_go(limits: LimitSettings) -> None:
    with pytest.raises(UnsupportedMediaType, match="not a PDF; use /v1/ocr") as caught:
        open_image(_blank_pdf(1), limits=limits, field="image_url", pdf_advice="use /v1/ocr")
    assert caught.value.field == "image_url"
    png = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(png, format="PNG")
    assert open_image(png.getvalue(), limits=limits).size == (40, 30)
