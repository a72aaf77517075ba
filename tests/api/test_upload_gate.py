"""Large upload bodies are read a few at a time, in arrival order, and never held up for long.

The gate is tested as ASGI middleware with bodies the test feeds chunk by chunk, so which
request is being read at any moment is exact; then on a real server under a burst of uploads.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
from PIL import Image
from starlette.types import Message

from dsocr.engine.fake import FakeEngine
from dsocr.server.uploads import UploadGate, UploadSlots
from dsocr.settings import Settings
from server_support import running_server

LARGE = 100_000  # bytes: over the gate's 64 KB threshold


def scope(path: str, length: int | None = LARGE, method: str = "POST") -> dict[str, Any]:
    headers = [(b"content-length", str(length).encode())] if length is not None else []
    return {"type": "http", "method": method, "path": path, "headers": headers}


def chunk(more: bool) -> Message:
    return {"type": "http.request", "body": b"x" * 50_000, "more_body": more}


async def no_send(message: Message) -> None:
    return None


class Reader:
    """An app that reads each body to its end, recording who is being read."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.reading: set[str] = set()
        self.peak = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        self.started.append(scope["path"])
        self.reading.add(scope["path"])
        self.peak = max(self.peak, len(self.reading))
        while message["type"] == "http.request" and message.get("more_body", False):
            message = await receive()
        self.reading.discard(scope["path"])
        self.finished.append(scope["path"])


async def settle() -> None:
    for _ in range(20):  # let every ready task run up to its next wait
        await asyncio.sleep(0)


async def test_large_bodies_are_read_slots_at_a_time_in_arrival_order() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(2, hold_s=30))
    feeds: list[asyncio.Queue[Message]] = [asyncio.Queue() for _ in range(5)]
    tasks = [asyncio.create_task(gate(scope(f"/{i}"), feed.get, no_send)) for i, feed in enumerate(feeds)]
    for feed in feeds:  # every client has sent its first chunk
        feed.put_nowait(chunk(more=True))
    await settle()
    assert app.started == ["/0", "/1"]  # two slots: the first two to arrive
    feeds[1].put_nowait(chunk(more=False))  # /1's last byte frees its slot for the next in line
    await settle()
    assert app.started == ["/0", "/1", "/2"] and app.finished == ["/1"]
    for feed in (feeds[0], feeds[2], feeds[3], feeds[4]):
        feed.put_nowait(chunk(more=False))
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert app.started == ["/0", "/1", "/2", "/3", "/4"]
    assert app.peak == 2 and sorted(app.finished) == ["/0", "/1", "/2", "/3", "/4"]


async def test_a_stalled_sender_holds_its_slot_for_hold_s_at_most() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(1, hold_s=0.2))
    stalled: asyncio.Queue[Message] = asyncio.Queue()
    stalled.put_nowait(chunk(more=True))  # and nothing more
    waiting: asyncio.Queue[Message] = asyncio.Queue()
    waiting.put_nowait(chunk(more=False))
    slow = asyncio.create_task(gate(scope("/slow"), stalled.get, no_send))
    await settle()
    assert app.started == ["/slow"]
    other = asyncio.create_task(gate(scope("/other"), waiting.get, no_send))
    await asyncio.wait_for(other, 5)  # read while /slow is still unfinished
    assert app.finished == ["/other"] and "/slow" in app.reading
    slow.cancel()


async def test_a_request_waits_hold_s_at_most_for_a_slot() -> None:
    # 20 stalled senders ahead of ours would pass the one slot along for 20 × 0.2 s; ours waits
    # 0.2 s and is read without a slot (the bound below leaves ten times that).
    slots = UploadSlots(1, hold_s=0.2)
    app = Reader()
    gate = UploadGate(app, slots=slots)
    stalled: list[asyncio.Task[None]] = []
    for i in range(20):  # a queue of stalled senders ahead of ours
        feed: asyncio.Queue[Message] = asyncio.Queue()
        feed.put_nowait(chunk(more=True))
        stalled.append(asyncio.create_task(gate(scope(f"/stalled{i}"), feed.get, no_send)))
    await settle()
    ours: asyncio.Queue[Message] = asyncio.Queue()
    ours.put_nowait(chunk(more=False))
    await asyncio.wait_for(gate(scope("/ours"), ours.get, no_send), 2.0)
    assert app.finished == ["/ours"]  # the stalled ones are all still unfinished
    for task in stalled:
        task.cancel()


async def test_small_bodies_and_gets_are_not_gated() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(1, hold_s=30))
    stalled: asyncio.Queue[Message] = asyncio.Queue()
    stalled.put_nowait(chunk(more=True))
    slow = asyncio.create_task(gate(scope("/slow"), stalled.get, no_send))
    await settle()
    for path, length, method in (("/small", 300, "POST"), ("/get", None, "GET")):
        feed: asyncio.Queue[Message] = asyncio.Queue()
        feed.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        await asyncio.wait_for(gate(scope(path, length, method), feed.get, no_send), 5)
    assert app.finished == ["/small", "/get"]
    slow.cancel()


async def test_a_client_that_goes_away_frees_its_slot() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(1, hold_s=30))
    gone: asyncio.Queue[Message] = asyncio.Queue()
    gone.put_nowait(chunk(more=True))
    first = asyncio.create_task(gate(scope("/gone"), gone.get, no_send))
    await settle()
    nxt: asyncio.Queue[Message] = asyncio.Queue()
    nxt.put_nowait(chunk(more=False))
    second = asyncio.create_task(gate(scope("/next"), nxt.get, no_send))
    await settle()
    assert app.started == ["/gone"]
    gone.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert app.finished == ["/gone", "/next"]


async def test_no_limit_reads_everything_at_once() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(0, hold_s=30))  # DSOCR_SERVER__UPLOAD_SLOTS=0
    feeds: list[asyncio.Queue[Message]] = [asyncio.Queue() for _ in range(4)]
    tasks = [asyncio.create_task(gate(scope(f"/{i}"), feed.get, no_send)) for i, feed in enumerate(feeds)]
    for feed in feeds:
        feed.put_nowait(chunk(more=True))
    await settle()
    assert len(app.started) == 4
    for feed in feeds:
        feed.put_nowait(chunk(more=False))
    await asyncio.gather(*tasks)


def page_b64(i: int) -> str:
    """A noisy page whose PNG is well over the gate's threshold."""
    image = Image.effect_noise((300, 300), 64 + i).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert buffer.tell() > 64 * 1024
    return base64.b64encode(buffer.getvalue()).decode()


async def test_a_burst_of_uploads_through_one_slot_is_all_served() -> None:
    settings = Settings(engine={"kind": "fake"}, server={"upload_slots": 1, "upload_slot_s": 0.5})
    with running_server(settings, FakeEngine()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/ocr", json={"image_base64": page_b64(i)}) for i in range(12))
            )
    assert [r.status_code for r in responses] == [200] * 12
    assert all(r.json()["markdown"] for r in responses)
