"""The native API through a real uvicorn server on loopback, driven by httpx.

Every error path checks the status and the error body, and then that the same server still
answers a good request. Client disconnects are real socket closes; the fake engine (in the
server's thread) records which requests were aborted.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineUnavailable
from dsocr.settings import Settings
from fake_engines import FailsOnPageTwo
from predict_contract import SEED_LONG_KEYS
from server_support import Server, running_server

API_KEY = "e2e-native-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_UPLOAD = 300_000


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    settings = Settings(
        engine={"kind": "fake"},
        server={"api_keys": [API_KEY]},
        limits={"max_upload_bytes": MAX_UPLOAD, "max_pdf_pages": 3, "max_queue": 2, "request_timeout_s": 1.0},
        # The tests count the engine's requests and resend the same pages: no result cache.
        cache={"enabled": False},
    )
    with running_server(settings, FailsOnPageTwo()) as running:
        yield running


@pytest.fixture(scope="module")
def patient_server() -> Iterator[Server]:
    """No practical deadline: an abort seen here can only come from the client leaving."""
    settings = Settings(
        engine={"kind": "fake"}, server={"api_keys": [API_KEY]}, limits={"request_timeout_s": 600}
    )
    with running_server(settings, FakeEngine()) as running:
        yield running


@pytest.fixture(scope="module")
def unready_server() -> Iterator[Server]:
    engine = FakeEngine(start_error=EngineUnavailable("CUDA out of memory while loading weights"))
    with running_server(Settings(engine={"kind": "fake"}), engine) as running:
        yield running


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


def png_bytes(width: int = 400, height: int = 300) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((20, 20), "e2e page", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pdf_bytes(pages: int) -> bytes:
    images = [Image.new("RGB", (200, 260), "white") for _ in range(pages)]
    for number, image in enumerate(images, start=1):
        ImageDraw.Draw(image).text((10, 10), f"Page {number}", fill="black")
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


GOOD = {"image_base64": b64(png_bytes())}


async def assert_still_serving(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["has_bounding_boxes"] is True


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert set(error) >= {"type", "code", "message", "field", "request_id"}
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert uuid.UUID(error["request_id"]).version == 4
    if field is not None:
        assert error["field"] == field
    return error


async def wait_for(predicate: Any, *, within_s: float = 10.0) -> bool:
    """Poll a condition set by the server's thread (no assertion on how long it took)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def test_predict_contract_over_a_real_socket(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"image_base64": b64(png_bytes(320, 240))})
    assert response.status_code == 200
    body = response.json()
    assert list(body)[: len(SEED_LONG_KEYS)] == SEED_LONG_KEYS
    assert body["image_size"] == [320, 240]


async def test_input_errors_then_good_request(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/predict", json={"image_base64": "@@not base64@@"}), 400, "invalid_input")
    await assert_still_serving(client)
    assert_error(
        await client.post("/v1/ocr", files={"file": ("notes.txt", b"plain text " * 20, "text/plain")}),
        415,
        "unsupported_media_type",
        "file",
    )
    await assert_still_serving(client)
    broken = png_bytes(600, 500)
    assert_error(
        await client.post("/predict", json={"image_base64": b64(broken[: len(broken) // 3])}),
        422,
        "undecodable_input",
        "image_base64",
    )
    await assert_still_serving(client)
    assert_error(
        await client.post("/v1/ocr", json={**GOOD, "outputs": ["everything"]}), 422, "validation_error"
    )
    await assert_still_serving(client)


async def test_size_limits_then_good_request(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post(
            "/predict", content=b"z" * (MAX_UPLOAD * 2), headers={"content-type": "application/json"}
        ),
        413,
        "input_too_large",
        "body",
    )
    await assert_still_serving(client)
    assert_error(
        await client.post("/v1/ocr", json={"image_base64": b64(pdf_bytes(4))}), 413, "input_too_large"
    )
    await assert_still_serving(client)


async def test_auth_errors_then_good_request(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as anonymous:
        assert_error(await anonymous.post("/predict", json=GOOD), 401, "unauthorized")
        wrong = await anonymous.post("/predict", json=GOOD, headers={"X-Api-Key": "nope"})
        assert_error(wrong, 401, "unauthorized")
        assert (await anonymous.get("/health")).status_code == 200
        ok = await anonymous.post("/predict", json=GOOD, headers={"X-Api-Key": API_KEY})
        assert ok.status_code == 200


async def test_queue_full_is_429_then_good_request(client: httpx.AsyncClient, server: Server) -> None:
    seen = server.engine.request_count
    # Two slow one-page requests take both slots of the queue.
    slow = asyncio.create_task(
        client.post(
            "/v1/ocr", json={"image_base64": b64(pdf_bytes(1)), "prompt": "Free OCR. [fake:slow=0.8]"}
        )
    )
    assert await wait_for(lambda: server.engine.request_count > seen)
    other = asyncio.create_task(
        client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "prompt": "Free OCR. [fake:slow=0.8]"})
    )
    assert await wait_for(lambda: server.engine.request_count > seen + 1)
    refused = await client.post("/predict", json=GOOD)
    error = assert_error(refused, 429, "engine_overloaded")
    assert error["type"] == "rate_limit_error"
    assert refused.headers["retry-after"] == "1"
    assert (await slow).status_code == 200 and (await other).status_code == 200
    await assert_still_serving(client)


async def test_deadline_is_504_aborted_in_engine_then_good_request(
    client: httpx.AsyncClient, server: Server
) -> None:
    response = await client.post("/predict", json={**GOOD, "prompt": "Free OCR. [fake:slow=30]"})
    assert_error(response, 504, "engine_timeout")
    # The page's engine request: the request id, page suffixed as on every route.
    request_id = response.headers["x-request-id"] + "-p1"
    assert await wait_for(lambda: request_id in server.engine.aborted)
    await assert_still_serving(client)


async def test_unready_engine_is_503_with_reason(unready_server: Server) -> None:
    async with httpx.AsyncClient(base_url=unready_server.url, timeout=30) as anonymous:
        ready = await anonymous.get("/ready")
        assert ready.status_code == 503
        assert "CUDA out of memory" in ready.json()["reason"]
        error = assert_error(await anonymous.post("/predict", json=GOOD), 503, "engine_unavailable")
        assert "CUDA out of memory" in error["message"]
        # Still alive and saying why.
        health = await anonymous.get("/health")
        assert health.status_code == 200 and health.json()["engine"]["ready"] is False


async def test_pdf_page_failure_is_reported_in_place(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ocr", files={"file": ("doc.pdf", pdf_bytes(3), "application/pdf")}, data={"outputs": "markdown"}
    )
    assert response.status_code == 200
    body = response.json()
    assert [page["page"] for page in body["pages"]] == [1, 2, 3]
    assert [page["ok"] for page in body["pages"]] == [True, False, True]
    assert body["pages"][1]["error"]["code"] == "engine_error"
    assert body["failed_pages"] == [2]


def parse_sse(text: str) -> list[tuple[str, Any]]:
    import json

    events = []
    for frame in text.split("\n\n"):
        lines = frame.strip().splitlines()
        if lines:
            name = lines[0].removeprefix("event:").strip()
            data = "\n".join(line.removeprefix("data:").strip() for line in lines[1:])
            events.append((name, json.loads(data)))
    return events


async def test_sse_stream_over_a_real_socket(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/v1/ocr", json={**GOOD, "stream": True}) as response:
        assert response.status_code == 200
        text = "".join([chunk async for chunk in response.aiter_text()])
    events = parse_sse(text)
    names = [name for name, _ in events]
    assert names[0] == "page.start" and names[-1] == "done"
    assert names.count("block") == len(next(data for name, data in events if name == "page.done")["blocks"])


async def test_client_disconnect_aborts_in_engine(patient_server: Server) -> None:
    server = patient_server
    seen = server.engine.request_count
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as leaving:
        task = asyncio.create_task(
            leaving.post("/predict", json={**GOOD, "prompt": "Free OCR. [fake:slow=20]"})
        )
        assert await wait_for(lambda: server.engine.request_count > seen)
        request_id = server.engine.requests[-1].request_id
        task.cancel()  # closes the connection mid-request
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await wait_for(lambda: request_id in server.engine.aborted)
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as again:
        await assert_still_serving(again)


async def test_stream_disconnect_aborts_in_engine(patient_server: Server) -> None:
    server = patient_server
    seen = server.engine.request_count
    async with (
        httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as leaving,
        leaving.stream(
            "POST", "/v1/ocr", json={**GOOD, "prompt": "Free OCR. [fake:slow=20]", "stream": True}
        ) as response,
    ):
        # Keep the line iterator referenced: a dropped one is closed by the event loop, and with
        # it the connection, maybe before the page reached the engine.
        lines = response.aiter_lines()
        first = await anext(lines)
        assert first == "event: page.start"
        # page.start comes before the page reaches the engine: leave once it is there.
        assert await wait_for(lambda: server.engine.request_count > seen)
    # Leaving the block closed the connection with the page still running.
    assert await wait_for(lambda: any(rid.endswith("-p1") for rid in server.engine.aborted))


async def test_metrics_text_has_the_counters(client: httpx.AsyncClient) -> None:
    await assert_still_serving(client)
    text = (await client.get("/metrics")).text
    for name in (
        "dsocr_http_requests_total",
        "dsocr_http_request_duration_seconds_bucket",
        "dsocr_pages_total",
        "dsocr_vision_tokens_total",
        "dsocr_output_tokens_total",
        "dsocr_queue_depth_pages",
        "dsocr_http_requests_in_flight",
    ):
        assert name in text
