"""Shared by the OpenAI e2e tests: request builders; the loopback server comes from server_support."""

from __future__ import annotations

import base64
import io

from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam
from PIL import Image, ImageDraw

from server_support import Server, running_server

__all__ = ["MODEL", "Server", "ocr_messages", "page_data_url", "running_server"]

MODEL = "deepseek-ai/DeepSeek-OCR"


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
