"""A PDF page over its render budget is stopped and named; the renderer carries on for the rest.

PDFium cannot be interrupted, so pages render in worker processes that the budget kills. The
pages here are "billion laughs" PDFs (tests/pdf_bomb.py): a few KB that would render for hours.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from dsocr.errors import DsocrError, RenderBudgetExceeded
from dsocr.inputs import BytesSource, load_document, open_document
from dsocr.settings import FetchSettings, LimitSettings
from pdf_bomb import pdf_with_pages

ENDLESS = 40  # 2**40 nested draws: hours of pdfium time, and gigabytes


def test_page_over_the_time_budget_fails_naming_the_page_and_the_next_pages_render() -> None:
    limits = LimitSettings(render_timeout_s=2)
    with open_document(pdf_with_pages(None, ENDLESS, None), limits=limits, field="file") as doc:
        assert doc.page_image(0).size == (400, 400)
        started = time.monotonic()
        with pytest.raises(RenderBudgetExceeded) as info:
            doc.page_image(1)
        elapsed = time.monotonic() - started
        # The page after the bomb renders as usual: the stuck worker was replaced.
        assert doc.page_image(2).size == (400, 400)
    assert info.value.message == "page 2 took longer than 2 s to render (DSOCR_LIMITS__RENDER_TIMEOUT_S)"
    assert (info.value.code, info.value.field) == ("render_budget_exceeded", "file")
    assert 2 <= elapsed < 15  # stopped at its budget, not after the hours it would take


def test_page_over_the_memory_budget_fails_naming_the_page_and_the_setting() -> None:
    # The same nested drawing takes memory as fast as time: with a long time budget, the
    # worker's address-space limit is what stops it.
    limits = LimitSettings(render_timeout_s=300, render_memory_mb=512)
    with open_document(pdf_with_pages(ENDLESS, None), limits=limits) as doc:
        started = time.monotonic()
        with pytest.raises(RenderBudgetExceeded) as info:
            doc.page_image(0)
        elapsed = time.monotonic() - started
        assert doc.page_image(1).size == (400, 400)
    assert info.value.message.startswith("page 1 needed more than 512 MiB of memory to render")
    assert "DSOCR_LIMITS__RENDER_MEMORY_MB" in info.value.message
    assert elapsed < 120


async def test_cancelling_a_render_kills_its_worker_so_other_documents_go_on() -> None:
    # One worker only: if the cancelled bomb kept rendering, nothing else could.
    limits = LimitSettings(render_workers=1, render_timeout_s=300)
    fetch = FetchSettings()
    async with await load_document(BytesSource(pdf_with_pages(ENDLESS)), limits=limits, fetch=fetch) as bomb:
        render = asyncio.create_task(bomb.render(0))
        await asyncio.sleep(1.5)  # the worker is deep in the bomb by now
        assert not render.done()
        render.cancel()
        with pytest.raises(asyncio.CancelledError):
            await render
        started = time.monotonic()
        async with await load_document(BytesSource(pdf_with_pages(None)), limits=limits, fetch=fetch) as doc:
            image = await doc.render(0)
        assert image.size == (400, 400)
        assert time.monotonic() - started < 20  # a fresh worker, not the end of a 300 s budget


async def test_one_document_cannot_take_every_render_worker() -> None:
    # A PDF made only of slow pages renders on half the workers at most, so another request's
    # PDF still finds a free worker at once.
    limits = LimitSettings(render_workers=2, render_timeout_s=300)
    fetch = FetchSettings()
    bombs = pdf_with_pages(ENDLESS, ENDLESS, ENDLESS)
    async with await load_document(BytesSource(bombs), limits=limits, fetch=fetch) as bomb:
        renders = [asyncio.create_task(bomb.render(i)) for i in range(3)]
        await asyncio.sleep(1)
        try:
            started = time.monotonic()
            async with await load_document(
                BytesSource(pdf_with_pages(None)), limits=limits, fetch=fetch
            ) as doc:
                await doc.render(0)
            assert time.monotonic() - started < 20
        finally:
            for render in renders:
                render.cancel()
            await asyncio.gather(*renders, return_exceptions=True)


async def test_closing_a_document_fails_its_render_in_flight_with_a_clear_error() -> None:
    limits = LimitSettings(render_timeout_s=300)
    document = await load_document(BytesSource(pdf_with_pages(ENDLESS)), limits=limits, fetch=FetchSettings())
    render = asyncio.create_task(document.render(0))
    await asyncio.sleep(1)
    await document.aclose()
    with pytest.raises(DsocrError, match="closed before page 1 was rendered"):
        await asyncio.wait_for(render, 30)
