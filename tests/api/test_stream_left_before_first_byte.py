"""A client that leaves before a stream's first byte gives back everything the request held.

The route has already admitted the request and opened the engine stream when the response
starts; if sending the headers fails, the body generator never runs, so its own cleanup never
does either. Driven through the raw ASGI interface with a ``send`` that fails as a closed
socket does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from PIL import Image
from starlette.requests import ClientDisconnect

from dsocr.engine.fake import FakeEngine
from dsocr.server.app import create_app
from dsocr.server.deps import AppState
from dsocr.settings import Settings


def _png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _chat_body() -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": _png_data_uri()}}, {"type": "text", "text": "ocr"}]
    messages = [{"role": "user", "content": content}]
    return {"model": Settings().engine.model, "stream": True, "messages": messages}


def _ocr_body() -> dict[str, Any]:
    return {"image_base64": _png_data_uri(), "stream": True}


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", _chat_body), ("/v1/ocr", _ocr_body)])
async def test_a_stream_whose_client_left_before_the_first_byte_releases_its_admission(
    path: str, body: Any
) -> None:
    engine = FakeEngine(delay_s=0.05)
    app = create_app(Settings(engine={"kind": "fake"}), engine=engine)
    payload = json.dumps(body()).encode()
    received = [{"type": "http.request", "body": payload, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if received:
            return received.pop(0)
        # The socket's close is found by the first send, not announced before it.
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
            raise OSError("the client closed the connection")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    async with LifespanManager(app):
        state: AppState = app.state.dsocr
        # How the server meets the closed socket is not the point here.
        with contextlib.suppress(OSError, ClientDisconnect):
            await app(scope, receive, send)
        assert statuses == [200]  # the request was admitted and its stream started
        assert state.admission.depth == 0
        assert state.admission.pixels == 0
    if path == "/v1/chat/completions":
        # The engine stream was opened before the response started: it must be aborted too.
        assert engine.aborted, "the engine request kept running for a client that had left"
