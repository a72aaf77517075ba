"""Every error answer and every abandoned request is counted once in ``/metrics``, on every route.

A real server on loopback gets a list of bad requests per route; ``dsocr_errors_total`` must then
have grown, code by code, by exactly the codes the client was answered with. Client disconnects
are real socket closes, mid-request and mid-stream.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import Server, running_server

API_KEY = "e2e-metrics-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "deepseek-ai/DeepSeek-OCR"
MAX_UPLOAD = 200_000
SLOW = "Free OCR. [fake:slow=30]"


def png_bytes() -> bytes:
    image = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(image).text((20, 20), "metrics", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()
PNG_B64 = base64.b64encode(PNG).decode("ascii")
BROKEN_B64 = base64.b64encode(PNG[: len(PNG) // 3]).decode("ascii")
DATA_URL = "data:image/png;base64," + PNG_B64
DEEP = b"[" * 50_000 + b"]" * 50_000
JSON = {"Content-Type": "application/json"}


def chat(*content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": list(content)}], **extra}


IMAGE_PART = {"type": "image_url", "image_url": {"url": DATA_URL}}

# (method, path, keyword arguments for httpx, whether to send the key)
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], bool]] = [
    # /v1/ocr
    ("POST", "/v1/ocr", {"json": {"image_base64": PNG_B64}}, False),
    ("POST", "/v1/ocr", {"content": b"{not json", "headers": JSON}, True),
    ("POST", "/v1/ocr", {"content": DEEP, "headers": JSON}, True),
    ("POST", "/v1/ocr", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, True),
    ("POST", "/v1/ocr", {"json": {"image_base64": PNG_B64, "outputs": ["everything"]}}, True),
    ("POST", "/v1/ocr", {"json": {"image_base64": BROKEN_B64}}, True),
    ("POST", "/v1/ocr", {"json": {"image_base64": PNG_B64, "mode": "enormous"}}, True),
    ("POST", "/v1/ocr", {"content": b"x" * (MAX_UPLOAD * 2), "headers": JSON}, True),
    ("GET", "/v1/ocr", {}, True),
    # /predict
    ("POST", "/predict", {"json": {"image_base64": PNG_B64}}, False),
    ("POST", "/predict", {"content": b"{not json", "headers": JSON}, True),
    ("POST", "/predict", {"content": DEEP, "headers": JSON}, True),
    ("POST", "/predict", {"json": [1, 2]}, True),
    ("POST", "/predict", {"json": {"image_base64": "@@not base64@@"}}, True),
    ("POST", "/predict", {"json": {"image_base64": BROKEN_B64}}, True),
    ("POST", "/predict", {"content": b"x" * (MAX_UPLOAD * 2), "headers": JSON}, True),
    # /v1/chat/completions
    ("POST", "/v1/chat/completions", {"json": chat(IMAGE_PART)}, False),
    ("POST", "/v1/chat/completions", {"content": b"{not json", "headers": JSON}, True),
    ("POST", "/v1/chat/completions", {"content": DEEP, "headers": JSON}, True),
    ("POST", "/v1/chat/completions", {"json": {"model": MODEL}}, True),
    ("POST", "/v1/chat/completions", {"json": {**chat(IMAGE_PART), "model": "gpt-4o"}}, True),
    ("POST", "/v1/chat/completions", {"json": chat(IMAGE_PART, IMAGE_PART)}, True),
    ("POST", "/v1/chat/completions", {"json": chat(IMAGE_PART, n=2)}, True),
    (
        "POST",
        "/v1/chat/completions",
        {"json": chat({"type": "image_url", "image_url": {"url": "data:image/png;base64," + BROKEN_B64}})},
        True,
    ),
    (
        "POST",
        "/v1/chat/completions",
        {"json": chat({"type": "image_url", "image_url": {"url": "ftp://example.invalid/page.png"}})},
        True,
    ),
    ("POST", "/v1/chat/completions", {"json": {**chat(IMAGE_PART), "mode": "enormous"}}, True),
    ("POST", "/v1/chat/completions", {"content": b"x" * (MAX_UPLOAD * 2), "headers": JSON}, True),
    ("GET", "/v1/chat/completions", {}, True),
    # the others
    ("GET", "/v1/models", {}, False),
    ("GET", "/no/such/route", {}, True),
    ("DELETE", "/health", {}, True),
]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    settings = Settings(
        engine={"kind": "fake", "model": MODEL},
        server={"api_keys": [API_KEY]},
        limits={"max_upload_bytes": MAX_UPLOAD, "request_timeout_s": 600},
    )
    with running_server(settings, FakeEngine()) as running:
        yield running


def request_errors(client: httpx.Client) -> dict[str, float]:
    """``dsocr_errors_total{scope="request"}`` by code, as the server reports it now."""
    text = client.get("/metrics").text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dsocr_errors_total" and sample.labels["scope"] == "request":
                counts[sample.labels["code"]] = sample.value
    return counts


def aborted(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dsocr_aborted_requests_total" and sample.labels == {
                "reason": "client_disconnect"
            }:
                return sample.value
    return 0.0


def test_every_error_answer_is_counted_once_by_its_code(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        before = request_errors(client)
        answered: Counter[str] = Counter()
        for method, path, kwargs, keyed in BAD_REQUESTS:
            headers = {**kwargs.get("headers", {}), **(AUTH if keyed else {})}
            rest = {name: value for name, value in kwargs.items() if name != "headers"}
            response = client.request(method, path, headers=headers, **rest)
            assert response.status_code >= 400, (method, path, response.text[:200])
            code = response.json()["error"]["code"]
            answered[code] += 1
        after = request_errors(client)
    counted = {code: after.get(code, 0.0) - before.get(code, 0.0) for code in set(after) | set(before)}
    counted = {code: n for code, n in counted.items() if n}
    assert counted == {code: float(n) for code, n in answered.items()}
    assert sum(answered.values()) == len(BAD_REQUESTS)


async def _wait(predicate: Any, within_s: float = 15.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def _leave_mid_request(server: Server, path: str, body: dict[str, Any]) -> None:
    seen = server.engine.request_count
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as leaving:
        task = asyncio.create_task(leaving.post(path, json=body))
        assert await _wait(lambda: server.engine.request_count > seen)
        task.cancel()  # closes the connection with the page running
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await _wait(lambda: server.engine.requests[-1].request_id in server.engine.aborted)


async def _leave_mid_stream(server: Server, path: str, body: dict[str, Any]) -> None:
    seen = server.engine.request_count
    async with (
        httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as leaving,
        leaving.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        # Keep the line iterator referenced: a dropped one is closed by the event loop, and with
        # it the connection, maybe before the page reached the engine.
        lines = response.aiter_lines()
        assert await anext(lines)
        assert await _wait(lambda: server.engine.request_count > seen)
    assert await _wait(lambda: server.engine.requests[-1].request_id in server.engine.aborted)


@pytest.mark.parametrize(
    ("how", "path", "body"),
    [
        ("request", "/predict", {"image_base64": PNG_B64, "prompt": SLOW}),
        ("request", "/v1/ocr", {"image_base64": PNG_B64, "prompt": SLOW}),
        ("request", "/v1/chat/completions", chat(IMAGE_PART, {"type": "text", "text": SLOW})),
        ("stream", "/v1/ocr", {"image_base64": PNG_B64, "prompt": SLOW, "stream": True}),
        ("stream", "/v1/chat/completions", chat(IMAGE_PART, {"type": "text", "text": SLOW}, stream=True)),
    ],
)
async def test_a_client_that_leaves_is_counted_once_as_aborted(
    server: Server, how: str, path: str, body: dict[str, Any]
) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        before = aborted(client)
        errors_before = request_errors(client)
        if how == "request":
            await _leave_mid_request(server, path, body)
        else:
            await _leave_mid_stream(server, path, body)
        # Counted once the server has finished with the request (it may trail the engine's abort).
        assert await _wait(lambda: aborted(client) > before)
        await asyncio.sleep(0.3)  # room for a second, wrong count to show
        assert aborted(client) == before + 1
        # A client that left is not an error of the server's.
        assert request_errors(client) == errors_before
