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


def feed(*messages: Message) -> asyncio.Queue[Message]:
    """A client's body, as the chunks it has sent so far (``put_nowait`` sends more)."""
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for message in messages:
        queue.put_nowait(message)
    return queue


def upload(gate: UploadGate, path: str, body: asyncio.Queue[Message]) -> asyncio.Task[None]:
    """A large upload to ``path`` through ``gate``, its body read from ``body``."""
    return asyncio.create_task(gate(scope(path), body.get, no_send))


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
    feeds = [feed(chunk(more=True)) for _ in range(5)]  # every client has sent its first chunk
    tasks = [upload(gate, f"/{i}", body) for i, body in enumerate(feeds)]
    await settle()
    assert app.started == ["/0", "/1"]  # two slots: the first two to arrive
    feeds[1].put_nowait(chunk(more=False))  # /1's last byte frees its slot for the next in line
    await settle()
    assert app.started == ["/0", "/1", "/2"] and app.finished == ["/1"]
    for body in (feeds[0], feeds[2], feeds[3], feeds[4]):
        body.put_nowait(chunk(more=False))
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert app.started == ["/0", "/1", "/2", "/3", "/4"]
    assert app.peak == 2 and sorted(app.finished) == ["/0", "/1", "/2", "/3", "/4"]


async def test_a_stalled_sender_holds_its_slot_for_hold_s_at_most() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(1, hold_s=0.2))
    slow = upload(gate, "/slow", feed(chunk(more=True)))  # and nothing more
    await settle()
    assert app.started == ["/slow"]
    # /other is read while /slow is still unfinished
    await asyncio.wait_for(upload(gate, "/other", feed(chunk(more=False))), 5)
    assert app.finished == ["/other"] and "/slow" in app.reading
    slow.cancel()


async def test_a_request_waits_hold_s_at_most_for_a_slot() -> None:
    # 20 stalled senders ahead of ours would pass the one slot along for 20 × 0.2 s; ours waits
    # 0.2 s and is read without a slot (the bound below leaves ten times that).
    slots = UploadSlots(1, hold_s=0.2)
    app = Reader()
    gate = UploadGate(app, slots=slots)
    # a queue of stalled senders ahead of ours
    stalled = [upload(gate, f"/stalled{i}", feed(chunk(more=True))) for i in range(20)]
    await settle()
    await asyncio.wait_for(upload(gate, "/ours", feed(chunk(more=False))), 2.0)
    assert app.finished == ["/ours"]  # the stalled ones are all still unfinished
    for task in stalled:
        task.cancel()


async def test_small_bodies_and_gets_are_not_gated() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(1, hold_s=30))
    slow = upload(gate, "/slow", feed(chunk(more=True)))
    await settle()
    for path, length, method in (("/small", 300, "POST"), ("/get", None, "GET")):
        body = feed({"type": "http.request", "body": b"", "more_body": False})
        await asyncio.wait_for(gate(scope(path, length, method), body.get, no_send), 5)
    assert app.finished == ["/small", "/get"]
    slow.cancel()


async def test_a_client_that_goes_away_frees_its_slot() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(1, hold_s=30))
    gone = feed(chunk(more=True))
    first = upload(gate, "/gone", gone)
    await settle()
    second = upload(gate, "/next", feed(chunk(more=False)))
    await settle()
    assert app.started == ["/gone"]
    gone.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert app.finished == ["/gone", "/next"]


async def test_no_limit_reads_everything_at_once() -> None:
    app = Reader()
    gate = UploadGate(app, slots=UploadSlots(0, hold_s=30))  # DSOCR_SERVER__UPLOAD_SLOTS=0
    feeds = [feed(chunk(more=True)) for _ in range(4)]
    tasks = [upload(gate, f"/{i}", body) for i, body in enumerate(feeds)]
    await settle()
    assert len(app.started) == 4
    for body in feeds:
        body.put_nowait(chunk(more=False))
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
