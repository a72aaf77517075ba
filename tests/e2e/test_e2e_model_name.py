"""The served model has one name on every route: ``/health``, ``/v1/models``, chat, ``/v1/ocr``, ``/predict``.

The engine's own model (the CPU engine's PP-OCRv6 recognizer, the fake engine's script) is engine
detail on ``/health`` (``engine_model``), never the name a client sees.
"""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image, ImageDraw

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import dsocr_serve, running_server

MODEL = "deepseek-ai/DeepSeek-OCR"


def _png_b64() -> str:
    image = Image.new("RGB", (480, 200), "white")
    ImageDraw.Draw(image).text((20, 80), "Invoice 42", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _names_on_every_route(base: str, *, chat_model: str) -> dict[str, str]:
    image = _png_b64()
    with httpx.Client(base_url=base, timeout=120) as client:
        health = client.get("/health").json()["engine"]
        models = client.get("/v1/models").json()["data"]
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": chat_model,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                            {"type": "text", "text": "free"},
                        ],
                    }
                ],
            },
        )
        ocr = client.post("/v1/ocr", json={"image_base64": image, "preset": "free"})
        predict = client.post("/predict", json={"image_base64": image, "prompt": "Free OCR."})
    assert (chat.status_code, ocr.status_code, predict.status_code) == (200, 200, 200)
    return {
        "/health": health["model"],
        "/v1/models": models[0]["id"],
        "/v1/chat/completions": chat.json()["model"],
        "/v1/ocr": ocr.json()["model"],
        "/predict": predict.json()["model_name"],
    }


@pytest.mark.parametrize(("served_name", "expected"), [(None, MODEL), ("ocr-prod", "ocr-prod")])
def test_the_fake_engine_server_reports_one_model_name(served_name: str | None, expected: str) -> None:
    settings = Settings(engine={"kind": "fake", "model": MODEL, "served_model_name": served_name})
    with running_server(settings, FakeEngine()) as server:
        names = _names_on_every_route(server.url, chat_model=expected)
        engine = httpx.get(f"{server.url}/health", timeout=30).json()["engine"]
    assert names == dict.fromkeys(names, expected)
    assert engine["engine_model"] == "fake-deepseek-ocr"


def test_dsocr_serve_with_the_cpu_engine_reports_one_model_name() -> None:
    with dsocr_serve("--engine", "cpu", "--log-level", "warning", timeout_s=120) as (base, process):
        names = _names_on_every_route(base, chat_model=MODEL)
        engine = httpx.get(f"{base}/health", timeout=30).json()["engine"]
    process.communicate()  # reads and closes the pipes of the stopped server
    assert names == dict.fromkeys(names, MODEL)
    assert engine["name"] == "cpu" and "PP-OCRv6" in engine["engine_model"]
