"""Helpers for the result-cache tests: real PNGs and PDFs (Pillow), requests for every door."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from dsocr.settings import Settings

MODEL = "deepseek-ai/DeepSeek-OCR"


def page_image(text: str, size: tuple[int, int] = (400, 300)) -> Image.Image:
    """A page with ``text`` on it: another text, other pixels."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((20, 20), text, fill="black")
    return image


def png_bytes(text: str = "Hello cache", size: tuple[int, int] = (400, 300)) -> bytes:
    buffer = io.BytesIO()
    page_image(text, size).save(buffer, format="PNG")
    return buffer.getvalue()


def pdf_bytes(*texts: str, size: tuple[int, int] = (300, 400)) -> bytes:
    """A real PDF with one page per text (Pillow writes it; the server renders it with pypdfium2)."""
    images = [page_image(text, size) for text in texts]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def cached_settings(cache_dir: Path, **cache: Any) -> Settings:
    """The fake engine, with the result cache in ``cache_dir`` (plus ``cache`` settings)."""
    return Settings(engine={"kind": "fake"}, cache={"dir": cache_dir, **cache})


def chat_body(image: bytes, text: str | None = None, **extra: Any) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(image)}"}}
    ]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text ``text`` (0 when absent)."""
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    wanted = f"{name}{{{selector}}}" if selector else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def without_run_fields(page: dict[str, Any]) -> dict[str, Any]:
    """A page's JSON without what differs between two runs of it (ids, timings, the cache flag)."""
    return {key: value for key, value in page.items() if key not in ("request_id", "timings", "cached")}
