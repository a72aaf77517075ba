"""A slow engine start: the server answers /health at once and opens OCR routes when ready."""

from __future__ import annotations

import asyncio

from api_support import ClientFactory

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings


class SlowStartEngine(FakeEngine):
    """A fake whose weights take until ``loaded`` is set to load (like vLLM's minute)."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = asyncio.Event()
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        await super().close()

    async def start(self) -> None:
        await self.loaded.wait()
        await super().start()


async def test_health_answers_while_engine_loads_then_ready(make_client: ClientFactory) -> None:
    engine = SlowStartEngine()
    settings = Settings(engine={"kind": "fake"}, server={"startup_wait_s": 0.05})
    async with make_client(settings=settings, engine=engine) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["engine"]["ready"] is False
        assert "starting" in health.json()["engine"]["reason"]

        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.headers["Retry-After"]

        busy = await client.post("/v1/ocr", json={"image_url": "https://example.invalid/x.png"})
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "engine_unavailable"

        engine.loaded.set()
        for _ in range(1000):
            if (await client.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/ready")).status_code == 200


async def test_shutdown_during_a_slow_start_cancels_it(make_client: ClientFactory) -> None:
    engine = SlowStartEngine()
    settings = Settings(engine={"kind": "fake"}, server={"startup_wait_s": 0.0})
    async with make_client(settings=settings, engine=engine) as client:
        assert (await client.get("/ready")).status_code == 503
    # Leaving the lifespan neither hangs on the pending start nor leaves the engine half-open.
    assert engine.closed
    assert not engine.loaded.is_set()
