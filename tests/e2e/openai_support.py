"""Shared by the OpenAI e2e tests: a real uvicorn server on loopback, and request builders."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam
from PIL import Image, ImageDraw

from dsocr.engine.fake import FakeEngine
from dsocr.server.app import create_app
from dsocr.settings import Settings

MODEL = "deepseek-ai/DeepSeek-OCR"


@dataclass
class Server:
    base_url: str
    engine: FakeEngine


@contextmanager
def running_server(settings: Settings, engine: FakeEngine) -> Iterator[Server]:
    """uvicorn in a thread on a free loopback port; stopped and joined on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings, engine=engine), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield Server(base_url=f"http://127.0.0.1:{port}/v1", engine=engine)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def page_data_url(width: int = 640, height: int = 820) -> str:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 40), "A test page", fill="black")
    for row in range(6):
        draw.line((40, 120 + 60 * row, width - 40, 120 + 60 * row), fill="black", width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def ocr_messages(text: str | None, url: str) -> list[ChatCompletionMessageParam]:
    content: list[ChatCompletionContentPartParam] = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]
