"""The admission queue's memory budget: pages and decoded pixels in flight, waits, 429s, clamping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from api_support import ClientFactory, pdf_bytes

from dsocr.admission import AdmissionQueue, Ticket, page_cost
from dsocr.engine.base import EngineDelta, EngineRequest
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineOverloaded
from dsocr.server.errors import http_status
from dsocr.settings import Settings

MP = 1_000_000


async def admitted_soon(task: asyncio.Task[Ticket]) -> Ticket:
    return await asyncio.wait_for(task, 5)


async def test_a_request_over_the_pixel_budget_waits_for_room_then_runs() -> None:
    queue = AdmissionQueue(10, max_pixels=100 * MP)
    first = await queue.admit([60 * MP], wait_s=5)
    second = asyncio.create_task(queue.admit([60 * MP], wait_s=5))
    await asyncio.sleep(0.05)
    assert not second.done()  # 120 MP would be decoded at once
    assert (queue.pixels, queue.depth) == (60 * MP, 2)  # it holds its page slot while it waits
    first.release()
    ticket = await admitted_soon(second)
    assert (ticket.pixels, queue.pixels) == (60 * MP, 60 * MP)
    ticket.release()
    assert (queue.pixels, queue.depth) == (0, 0)


async def test_no_room_within_the_wait_is_429_with_retry_after_and_holds_nothing() -> None:
    queue = AdmissionQueue(10, max_pixels=100 * MP, retry_after_s=1.0)
    held = await queue.admit([80 * MP])
    with pytest.raises(EngineOverloaded) as refused:
        await queue.admit([30 * MP], wait_s=0.05)
    assert refused.value.retry_after == 1.0
    assert http_status(refused.value) == 429
    assert "DSOCR_LIMITS__MAX_INFLIGHT_PIXELS" in refused.value.message
    assert "30.0 MP" in refused.value.message
    assert (queue.pixels, queue.depth) == (80 * MP, 1)
    held.release()
    assert (queue.pixels, queue.depth) == (0, 0)


async def test_no_wait_means_refused_at_once_when_over_budget() -> None:
    queue = AdmissionQueue(10, max_pixels=100 * MP)
    await queue.admit([80 * MP])
    with pytest.raises(EngineOverloaded):
        await asyncio.wait_for(queue.admit([30 * MP], wait_s=0), 1)


async def test_a_full_page_queue_refuses_at_once_without_waiting() -> None:
    queue = AdmissionQueue(1, max_pixels=100 * MP)
    await queue.admit([1 * MP])
    with pytest.raises(EngineOverloaded, match="DSOCR_LIMITS__MAX_QUEUE"):
        queue.check_room()
    with pytest.raises(EngineOverloaded, match="DSOCR_LIMITS__MAX_QUEUE"):
        await asyncio.wait_for(queue.admit([1 * MP], wait_s=30), 1)


async def test_waiting_requests_are_served_first_come_first_served() -> None:
    queue = AdmissionQueue(10, max_pixels=100 * MP)
    held = await queue.admit([90 * MP])
    big = asyncio.create_task(queue.admit([80 * MP], wait_s=5))
    await asyncio.sleep(0.01)
    small = asyncio.create_task(queue.admit([5 * MP], wait_s=5))
    await asyncio.sleep(0.05)
    # The small one would fit now, but never overtakes the large one waiting ahead of it.
    assert not big.done() and not small.done()
    held.release()
    await admitted_soon(big)
    await admitted_soon(small)
    assert queue.pixels == 85 * MP


async def test_a_request_larger_than_the_whole_budget_runs_alone() -> None:
    queue = AdmissionQueue(10, max_pixels=50 * MP)
    small = await queue.admit([10 * MP])
    huge = asyncio.create_task(queue.admit([60 * MP], wait_s=5))
    await asyncio.sleep(0.05)
    assert not huge.done()
    small.release()
    ticket = await admitted_soon(huge)
    assert ticket.pixels == 50 * MP  # clamped to the budget: served once nothing else is decoded
    with pytest.raises(EngineOverloaded):
        await queue.admit([1], wait_s=0)


async def test_a_document_window_shrinks_to_fit_the_budget() -> None:
    queue = AdmissionQueue(512, max_pixels=100 * MP)
    # Twenty pages of 30 MP: four would be 120 MP, so three run at a time.
    ticket = await queue.admit([30 * MP] * 20, window=16)
    assert (ticket.slots, ticket.pixels) == (3, 90 * MP)
    # The window is sized for the costliest pages, wherever they are in the document.
    assert queue.reservation([10 * MP, 10 * MP, 40 * MP, 10 * MP, 50 * MP], window=16) == (3, 100 * MP)
    assert queue.reservation([2 * MP] * 3, window=16) == (3, 6 * MP)
    assert AdmissionQueue(2, max_pixels=100 * MP).reservation([1 * MP] * 9, window=16) == (2, 2 * MP)


async def test_a_caller_cancelled_while_waiting_holds_nothing_and_lets_the_next_in() -> None:
    queue = AdmissionQueue(10, max_pixels=100 * MP)
    held = await queue.admit([60 * MP])
    leaving = asyncio.create_task(queue.admit([90 * MP], wait_s=5))
    await asyncio.sleep(0.01)
    behind = asyncio.create_task(queue.admit([30 * MP], wait_s=5))
    await asyncio.sleep(0.05)
    assert not behind.done()  # behind the 90 MP request, first in line
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    ticket = await admitted_soon(behind)
    assert (queue.pixels, queue.depth) == (90 * MP, 2)
    ticket.release()
    held.release()
    assert (queue.pixels, queue.depth) == (0, 0)


async def test_release_is_idempotent() -> None:
    queue = AdmissionQueue(10, max_pixels=100 * MP)
    with await queue.admit([10 * MP]) as ticket:
        ticket.release()
    ticket.release()
    other = await queue.admit([10 * MP])
    ticket.release()
    assert (queue.pixels, queue.depth) == (10 * MP, 1)
    other.release()


def test_page_cost_counts_pixels_and_the_renders_asked_for() -> None:
    assert page_cost((6000, 10000)) == 60 * MP
    assert page_cost((6000, 10000), {"markdown", "blocks"}) == 60 * MP
    assert page_cost((6000, 10000), {"visualization"}) == 6 * 60 * MP
    assert page_cost((6000, 10000), {"crops"}) == 2 * 60 * MP
    assert page_cost((6000, 10000), {"crops", "visualization"}) == 7 * 60 * MP


class CountingEngine(FakeEngine):
    """The fake engine, counting the most pages it was given at once."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.running = 0
        self.most = 0

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            async for delta in super().stream(request):
                yield delta
        finally:
            self.running -= 1


@pytest.mark.parametrize(("outputs", "at_once"), [("markdown", 2), ("markdown,visualization", 1)])
async def test_a_pdf_runs_as_many_pages_at_once_as_the_pixel_budget_holds(
    make_client: ClientFactory, outputs: str, at_once: int
) -> None:
    # Pages of 300×400 pt render at 600×800 (0.48 MP): two fit in 1 MP; with a visualization
    # each costs 2.9 MP, more than the whole budget, so they run one at a time.
    settings = Settings(engine={"kind": "fake"}, limits={"max_inflight_pixels": 1_000_000})
    engine = CountingEngine(delay_s=0.2)
    async with make_client(settings=settings, engine=engine) as client:
        response = await client.post(
            "/v1/ocr",
            files={"file": ("doc.pdf", pdf_bytes(6), "application/pdf")},
            data={"outputs": outputs},
        )
    assert response.status_code == 200, response.text
    assert [page["ok"] for page in response.json()["pages"]] == [True] * 6
    assert engine.most == at_once
