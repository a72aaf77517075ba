"""Streams that end early (client gone, deadline) and images fetched by URL, on a real server."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai_support import MODEL, ocr_messages, page_data_url, running_server
from PIL import Image, ImageDraw

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings


def _png_bytes() -> bytes:
    image = Image.new("RGB", (500, 700), "white")
    ImageDraw.Draw(image).text((30, 30), "fetched page", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_host() -> Iterator[str]:
    """A loopback HTTP server with /page.png (a PNG) and /page.txt (not an image)."""
    png = _png_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = (png, "image/png") if self.path == "/page.png" else (b"plain text", "text/plain")
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_image_url_is_fetched_when_the_operator_allows_the_host(image_host: str) -> None:
    settings = Settings(
        engine={"kind": "fake", "model": MODEL},
        fetch={"allow_http": True, "allow_networks": ["127.0.0.0/8"]},
    )
    engine = FakeEngine()
    with (
        running_server(settings, engine) as server,
        openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client,
    ):
        completion = client.chat.completions.create(
            model=MODEL, messages=ocr_messages("document", f"{image_host}/page.png")
        )
        assert "<|ref|>" in (completion.choices[0].message.content or "")
        assert engine.requests[-1].image_size == (500, 700)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=ocr_messages("free", f"{image_host}/page.txt")
            )
        assert caught.value.code in ("unsupported_media_type", "fetch_failed")


def _stream_body(text: str) -> dict[str, object]:
    return {"model": MODEL, "messages": ocr_messages(text, page_data_url()), "stream": True}


def test_client_leaving_a_stream_aborts_the_engine_request() -> None:
    engine = FakeEngine(delay_s=3.0)
    with running_server(Settings(engine={"kind": "fake", "model": MODEL}), engine) as server:
        with (
            httpx.Client(base_url=server.base_url, timeout=30) as http,
            http.stream("POST", "/chat/completions", json=_stream_body("document")) as response,
        ):
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "chat.completion.chunk"
        request_id = engine.requests[-1].request_id
        deadline = time.monotonic() + 10
        while request_id not in engine.aborted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert request_id in engine.aborted


def test_deadline_mid_stream_ends_with_an_error_event_then_done() -> None:
    # The fake spreads 16 s over its ~8 deltas: the first comes at ~2 s, the deadline hits at 3 s.
    settings = Settings(engine={"kind": "fake", "model": MODEL}, limits={"request_timeout_s": 3.0})
    with (
        running_server(settings, FakeEngine(delay_s=16.0)) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as http,
    ):
        response = http.post("/chat/completions", json=_stream_body("document"))
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert response.status_code == 200
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "engine_timeout"
    assert error["type"] == "server_error"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"


def test_openai_client_raises_on_a_mid_stream_error() -> None:
    settings = Settings(engine={"kind": "fake", "model": MODEL}, limits={"request_timeout_s": 3.0})
    with (
        running_server(settings, FakeEngine(delay_s=16.0)) as server,
        openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client,
    ):
        stream = client.chat.completions.create(
            model=MODEL, messages=ocr_messages("document", page_data_url()), stream=True
        )
        with pytest.raises(openai.APIError, match="deadline"):
            for _ in stream:
                pass


def test_engine_failure_before_the_first_chunk_is_a_real_http_error() -> None:
    with (
        running_server(Settings(engine={"kind": "fake", "model": MODEL}), FakeEngine()) as server,
        openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        client.chat.completions.create(
            model=MODEL, messages=ocr_messages("Free OCR. [fake:fail]", page_data_url()), stream=True
        )
    assert caught.value.status_code == 500
    assert caught.value.code == "engine_error"


def test_data_url_payload_round_trips_the_image_size() -> None:
    engine = FakeEngine()
    with (
        running_server(Settings(engine={"kind": "fake", "model": MODEL}), engine) as server,
        openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client,
    ):
        client.chat.completions.create(model=MODEL, messages=ocr_messages(None, page_data_url(333, 444)))
    request = engine.requests[-1]
    assert request.image_size == (333, 444)
    # No text part: the official default document prompt.
    assert request.prompt == "<image>\n<|grounding|>Convert the document to markdown."


def test_client_leaving_a_plain_completion_aborts_the_engine_request() -> None:
    engine = FakeEngine(delay_s=8.0)
    with running_server(Settings(engine={"kind": "fake", "model": MODEL}), engine) as server:
        body = {"model": MODEL, "messages": ocr_messages("document", page_data_url())}
        with (
            httpx.Client(base_url=server.base_url, timeout=2.0) as http,
            pytest.raises(httpx.ReadTimeout),
        ):
            http.post("/chat/completions", json=body)
        deadline = time.monotonic() + 10
        while not engine.aborted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.aborted == [engine.requests[-1].request_id]
