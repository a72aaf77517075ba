"""Helpers for the API tests: real PNGs (Pillow), real PDFs, base64, an SSE parser."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
from PIL import Image, ImageDraw


def png_bytes(width: int = 400, height: int = 300, text: str = "Hello dsocr") -> bytes:
    """A small real PNG with some text on it."""
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((20, 20), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pdf_bytes(pages: int = 3, size: tuple[int, int] = (300, 400)) -> bytes:
    """A real PDF with ``pages`` pages (Pillow writes it; the server renders it with pypdfium2)."""
    images = []
    for number in range(1, pages + 1):
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).text((20, 20), f"Page {number}", fill="black")
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """``event:``/``data:`` frames → [(event, decoded JSON)], in order."""
    events: list[tuple[str, Any]] = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        name = ""
        data_lines: list[str] = []
        for line in frame.splitlines():
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data_lines.append(line[len("data:") :].strip())
        events.append((name, json.loads("\n".join(data_lines))))
    return events


# ``make_client(settings=..., engine=...)``: an async context manager giving a client on a running app.
ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
