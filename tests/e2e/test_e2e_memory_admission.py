"""Admission bounds memory: every route admits a request before decoding its pixels.

Whether a large upload was decoded is read from the server's peak RSS: ``dsocr serve`` runs as its
own process (fake engine) and its ``VmHWM`` is reset through ``/proc/PID/clear_refs`` before the
upload; a 60 MP page holds 229 MiB once decoded and 0.2 MB as the PNG that was sent. How many
pixels are decoded at once is counted inside an in-process server, on Pillow's ``load``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFile

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import free_port, running_server, wait_ready

LARGE_SIZE = (6000, 10000)  # 60 MP: the default DSOCR_LIMITS__MAX_IMAGE_PIXELS
# Peak RSS growth below which a large page was certainly not decoded (it would add ~230 MB).
NOT_DECODED_MB = 100
HOLD = "Free OCR. [fake:slow=4]"  # keeps a small request in flight


@dataclass(frozen=True)
class ServeProcess:
    url: str
    process: subprocess.Popen[str]

    def _status_mb(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) // 1024
        raise AssertionError(f"{key} not in /proc/{self.process.pid}/status")

    def reset_peak_rss(self) -> int:
        """Set the server's peak RSS to its current RSS; returns that, in MB."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return self._status_mb("VmHWM")

    def peak_rss_mb(self) -> int:
        return self._status_mb("VmHWM")


def _peak_rss_resettable() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


needs_peak_rss = pytest.mark.skipif(
    not _peak_rss_resettable(), reason="needs Linux /proc/PID/clear_refs to measure the server's peak RSS"
)


@pytest.fixture(scope="module")
def tmp_module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("memory-admission")


def serve(tmp: Path, **limits: object) -> Iterator[ServeProcess]:
    """``python -m dsocr serve`` with the fake engine and ``limits`` as DSOCR_LIMITS__* variables."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    env["DSOCR_ENGINE__KIND"] = "fake"
    # Requests are held in flight by slow pages sent again and again, which the result cache
    # would answer at once.
    env["DSOCR_CACHE__ENABLED"] = "false"
    # A fixed threshold keeps glibc from raising it after the first large free: pixel buffers are
    # then always mapped and unmapped, so each test's peak starts from what is live, not from
    # memory an earlier decode left in the heap.
    env["MALLOC_MMAP_THRESHOLD_"] = str(1024 * 1024)
    env.update({f"DSOCR_LIMITS__{name.upper()}": str(value) for name, value in limits.items()})
    log = (tmp / f"serve-{port}.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "dsocr", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process=process, output=lambda: Path(log.name).read_text())
        yield ServeProcess(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def tight(tmp_module_dir: Path) -> Iterator[ServeProcess]:
    """A 30 MP budget, 4 pages in flight, half a second of waiting for room."""
    yield from serve(
        tmp_module_dir,
        max_queue=4,
        max_inflight_pixels=30_000_000,
        admission_wait_s=0.5,
        request_timeout_s=60,
    )


def png(size: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for y in range(50, size[1] - 50, max(100, size[1] // 20)):
        draw.text((50, y), f"line at {y}", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def large_png() -> bytes:
    return png(LARGE_SIZE)


SMALL_PNG = png((400, 300))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


Send = Callable[[httpx.AsyncClient, bytes], Awaitable[httpx.Response]]


async def ocr_multipart(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await client.post("/v1/ocr", files={"file": ("scan.png", data, "image/png")})


async def ocr_json(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await client.post("/v1/ocr", json={"image_base64": b64(data)})


async def ocr_stream(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await client.post("/v1/ocr", json={"image_base64": b64(data), "stream": True})


async def predict(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await client.post("/predict", json={"image_base64": b64(data)})


async def chat(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    url = f"data:image/png;base64,{b64(data)}"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    return await client.post(
        "/v1/chat/completions", json={"model": "deepseek-ai/DeepSeek-OCR", "messages": [message]}
    )


ROUTES: dict[str, Send] = {
    "ocr-multipart": ocr_multipart,
    "ocr-json": ocr_json,
    "ocr-stream": ocr_stream,
    "predict": predict,
    "chat": chat,
}


@pytest.fixture
async def client(tight: ServeProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tight.url, timeout=60) as c:
        yield c


async def queue_depth(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    match = re.search(r"^dsocr_queue_depth_pages (\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return float(match.group(1))


async def hold(client: httpx.AsyncClient, count: int) -> list[asyncio.Task[httpx.Response]]:
    """``count`` small slow requests, each admitted (one page, 0.1 MP) before this returns."""
    before = await queue_depth(client)
    holders = [
        asyncio.create_task(client.post("/v1/ocr", json={"image_base64": b64(SMALL_PNG), "prompt": HOLD}))
        for _ in range(count)
    ]
    for _ in range(200):
        if await queue_depth(client) >= before + count:
            return holders
        await asyncio.sleep(0.025)
    raise AssertionError("the holding requests were not admitted")


async def finish(holders: list[asyncio.Task[httpx.Response]]) -> None:
    """Wait for the holding requests, so that the next test starts with nothing in flight."""
    for response in await asyncio.gather(*holders):
        assert response.status_code == 200, response.text


def assert_overloaded(response: httpx.Response, limit: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "engine_overloaded")
    assert limit in error["message"]


@needs_peak_rss
@pytest.mark.parametrize("route", list(ROUTES))
async def test_over_the_pixel_budget_is_429_after_the_wait_without_decoding(
    route: str, client: httpx.AsyncClient, tight: ServeProcess, large_png: bytes
) -> None:
    holders = await hold(client, 1)  # 0.1 MP decoded: the 60 MP page (30 MP clamped) must wait
    try:
        before = tight.reset_peak_rss()
        refused = await ROUTES[route](client, large_png)
        grown = tight.peak_rss_mb() - before
    finally:
        await finish(holders)
    assert_overloaded(refused, "DSOCR_LIMITS__MAX_INFLIGHT_PIXELS")
    assert grown < NOT_DECODED_MB, f"the server's peak RSS grew by {grown} MB: the upload was decoded"


@needs_peak_rss
@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_full_page_queue_is_429_at_once_without_decoding(
    route: str, client: httpx.AsyncClient, tight: ServeProcess, large_png: bytes
) -> None:
    holders = await hold(client, 4)
    try:
        before = tight.reset_peak_rss()
        refused = await ROUTES[route](client, large_png)
        grown = tight.peak_rss_mb() - before
    finally:
        await finish(holders)
    assert_overloaded(refused, "DSOCR_LIMITS__MAX_QUEUE")
    assert grown < NOT_DECODED_MB, f"the server's peak RSS grew by {grown} MB: the upload was decoded"


@needs_peak_rss
async def test_a_page_larger_than_the_budget_is_served_when_the_server_is_idle(
    client: httpx.AsyncClient, tight: ServeProcess, large_png: bytes
) -> None:
    before = tight.reset_peak_rss()
    response = await ocr_multipart(client, large_png)
    assert response.status_code == 200, response.text
    assert response.json()["pages"][0]["image_size"] == [6000, 10000]
    # The probe sees a decode when there is one.
    assert tight.peak_rss_mb() - before > 150


async def test_a_visualization_counts_against_the_budget(client: httpx.AsyncClient) -> None:
    page = png((2000, 2500))  # 5 MP; with its visualization it costs 30 MP, the whole budget
    holders = await hold(client, 1)
    try:
        plain = await client.post("/v1/ocr", files={"file": ("p.png", page, "image/png")})
        drawn = await client.post(
            "/v1/ocr", files={"file": ("p.png", page, "image/png")}, data={"outputs": "visualization"}
        )
    finally:
        await finish(holders)
    assert plain.status_code == 200, plain.text
    assert_overloaded(drawn, "DSOCR_LIMITS__MAX_INFLIGHT_PIXELS")
    drawn = await client.post(
        "/v1/ocr", files={"file": ("p.png", page, "image/png")}, data={"outputs": "visualization"}
    )
    assert drawn.status_code == 200, drawn.text
    assert drawn.json()["pages"][0]["visualization"]


class DecodedPixels:
    """Pixels of the images Pillow decoded in this process that are still alive, and their peak."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._alive: set[int] = set()  # ids of the images counted and not yet freed

    def _freed(self, key: int, pixels: int) -> None:
        with self._lock:
            self._alive.discard(key)
            self.live -= pixels

    def count(self, image: ImageFile.ImageFile) -> None:
        with self._lock:
            if id(image) in self._alive:
                return
            self._alive.add(id(image))
            pixels = image.width * image.height
            self.live += pixels
            self.peak = max(self.peak, self.live)
        weakref.finalize(image, self._freed, id(image), pixels)


async def test_concurrent_large_uploads_wait_their_turn_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded = DecodedPixels()
    load = ImageFile.ImageFile.load

    def counted_load(image: ImageFile.ImageFile) -> Any:
        decoded.count(image)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    engine = FakeEngine()
    page = png((4000, 6000))  # 24 MP: two at once would be 48 MP, over the 30 MP budget
    settings = Settings(
        engine={"kind": "fake"}, limits={"max_inflight_pixels": 30_000_000, "admission_wait_s": 60}
    )
    with running_server(settings, engine) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            responses = await asyncio.gather(*(ocr_multipart(client, page) for _ in range(4)))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert decoded.peak == 24_000_000, f"{decoded.peak:,} pixels were decoded at once"


async def test_a_client_that_leaves_while_waiting_for_room_gives_its_place_back() -> None:
    engine = FakeEngine()
    settings = Settings(
        engine={"kind": "fake"}, limits={"max_inflight_pixels": 1_500_000, "admission_wait_s": 30}
    )
    page = png((1000, 1000))  # 1 MP: a second one does not fit in 1.5 MP
    with running_server(settings, engine) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            httpx.AsyncClient(base_url=server.url, timeout=30) as leaving,
        ):
            holder = asyncio.create_task(
                client.post("/v1/ocr", files={"file": ("a.png", page, "image/png")}, data={"prompt": HOLD})
            )
            for _ in range(200):
                if await queue_depth(client) == 1 and engine.requests:
                    break
                await asyncio.sleep(0.025)
            waiter = asyncio.create_task(ocr_multipart(leaving, page))
            for _ in range(200):
                if await queue_depth(client) == 2:
                    break
                await asyncio.sleep(0.025)
            assert len(engine.requests) == 1, "the second page was not held back for room"
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            await leaving.aclose()  # the connection closes: the server sees the client go
            for _ in range(80):
                if await queue_depth(client) == 1:
                    break
                await asyncio.sleep(0.025)
            assert await queue_depth(client) == 1  # the holder only, still running
            assert not holder.done()
            assert (await holder).status_code == 200
            assert len(engine.requests) == 1  # the page that left never reached the engine
            assert (await ocr_multipart(client, page)).status_code == 200
