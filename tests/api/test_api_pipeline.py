"""``dsocr.pipeline`` directly: bounded pages in flight, page order, per-page errors, aborts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from PIL import Image

from dsocr.engine.base import EngineDelta, EngineRequest
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineTimeout, InputTooLarge
from dsocr.pipeline import BlockFound, PageInput, PageResult, PageStarted, Pipeline
from dsocr.request import StreamKind, build_request
from dsocr.settings import Settings

SETTINGS = Settings(engine={"kind": "fake"})


def pipeline(engine: FakeEngine) -> Pipeline:
    return Pipeline(engine, limits=SETTINGS.limits, fetch=SETTINGS.fetch)


def request(request_id: str, *, timeout_s: float | None = None, stream: StreamKind = "pages") -> Any:
    built = build_request(SETTINGS, source=None, request_id=request_id, deadline=False, stream=stream)
    return replace(built, timeout_s=timeout_s)


class CountingEngine(FakeEngine):
    """Records how many requests run at once; later pages finish first (reverse delays)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.running = 0
        self.peak = 0

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            page = int(request.request_id.rsplit("-p", 1)[1])
            await asyncio.sleep(0.05 / page)
            async for delta in super().stream(request):
                yield delta
        finally:
            self.running -= 1


def pages(count: int, loaded: list[int]) -> list[PageInput]:
    def loader(number: int) -> Any:
        def load() -> Image.Image:
            loaded.append(number)
            if number == 3:
                raise InputTooLarge("page 3 is too large", field="file")
            return Image.new("RGB", (100 + number, 100), "white")

        return load

    return [PageInput(number=n, load=loader(n)) for n in range(1, count + 1)]


async def test_results_in_page_order_with_bounded_in_flight_and_page_errors() -> None:
    engine = CountingEngine()
    await engine.start()
    loaded: list[int] = []
    results = [r async for r in pipeline(engine).run_pages(request("doc"), pages(10, loaded), window=3)]
    assert [r.page for r in results] == list(range(1, 11))
    assert engine.peak == 3  # concurrent, never more than the window
    assert results[2].error is not None and results[2].error.code == "input_too_large"
    assert all(r.ok for i, r in enumerate(results) if i != 2)
    assert results[4].image_size == (105, 100)
    assert sorted(loaded) == list(range(1, 11))


async def test_events_are_grouped_per_page() -> None:
    engine = FakeEngine()
    await engine.start()
    events = [
        e async for e in pipeline(engine).page_events(request("d", stream="blocks"), pages(2, []), window=2)
    ]
    kinds = [(type(e).__name__, getattr(e, "page", None)) for e in events]
    first_done = kinds.index(("PageResult", 1))
    assert kinds[0] == ("PageStarted", 1)
    assert all(page == 1 for _, page in kinds[: first_done + 1])
    assert kinds[first_done + 1] == ("PageStarted", 2)
    blocks_1 = [e.block for e in events[:first_done] if isinstance(e, BlockFound)]
    result_1 = events[first_done]
    assert isinstance(result_1, PageResult) and result_1.parsed is not None
    assert tuple(blocks_1) == result_1.parsed.blocks
    assert isinstance(events[0], PageStarted) and events[0].request_id == "d-p1"


async def test_deadline_raises_and_aborts_every_running_page() -> None:
    engine = FakeEngine(delay_s=10)
    await engine.start()
    with pytest.raises(EngineTimeout):
        async for _ in pipeline(engine).run_pages(request("slow", timeout_s=0.1), pages(2, []), window=2):
            pass
    assert sorted(set(engine.aborted)) == ["slow-p1", "slow-p2"]


async def test_flagged_pages_are_retried_with_a_smaller_window_then_warmer() -> None:
    settings = Settings(engine={"kind": "fake", "retry_attempts": 2})
    engine = FakeEngine()
    await engine.start()
    built = build_request(settings, source=None, request_id="r", max_tokens=3, deadline=False)
    image = Image.new("RGB", (200, 100), "white")
    (result,) = [
        r
        async for r in Pipeline(engine, limits=settings.limits, fetch=settings.fetch).run_pages(
            built, [PageInput(number=1, load=lambda: image)]
        )
    ]
    seen = {request.request_id: request.sampling for request in engine.requests}
    assert list(seen) == ["r-p1", "r-p1-retry1", "r-p1-retry2"]
    assert seen["r-p1-retry1"].ngram_window == settings.engine.retry_ngram_window
    assert seen["r-p1-retry2"].temperature == settings.engine.retry_temperatures[0]
    # Still cut at max_tokens after both retries: the page keeps its flag, nothing is hidden.
    assert result.finish_reason == "length" and any("truncated" in w for w in result.warnings)


async def test_streamed_text_is_not_retried() -> None:
    settings = Settings(engine={"kind": "fake", "retry_attempts": 2})
    engine = FakeEngine()
    await engine.start()
    built = build_request(settings, source=None, request_id="s", max_tokens=3, deadline=False, stream="text")
    image = Image.new("RGB", (200, 100), "white")
    events = [
        e
        async for e in Pipeline(engine, limits=settings.limits, fetch=settings.fetch).page_events(
            built, [PageInput(number=1, load=lambda: image)]
        )
    ]
    assert [request.request_id for request in engine.requests] == ["s-p1"]
    assert any(type(e).__name__ == "TextDelta" for e in events)
