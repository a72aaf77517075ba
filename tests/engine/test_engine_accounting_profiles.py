"""The CPU and fake engines count a request's vision tokens by its model's profile.

A request that names no model goes to the default model (``DSOCR_ENGINE__MODEL``); one that names
an extra model goes to it. DeepSeek-OCR spends 273 placeholder tokens on an untiled Gundam image,
DeepSeek-OCR 2 257 (docs/models.md); prompt tokens grow by the same.
"""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from dsocr.engine.base import Engine, EngineOutput, EngineRequest
from dsocr.engine.cpu import CpuEngine
from dsocr.engine.factory import create_engine
from dsocr.prompts import PRESETS
from dsocr.settings import EngineSettings

V1 = "deepseek-ai/DeepSeek-OCR"
V2 = "deepseek-ai/DeepSeek-OCR-2"


def _page() -> Image.Image:
    image = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(image).text((20, 20), "Hello tokens", fill="black")
    return image


async def _counts(engine: Engine, model: str | None) -> tuple[int, int]:
    request = EngineRequest(request_id=f"r-{model}", prompt=PRESETS["free"], image=_page(), model=model)
    output: EngineOutput = await engine.generate(request)
    return output.vision_tokens, output.prompt_tokens


async def _all_counts(engine: Engine) -> dict[str | None, tuple[int, int]]:
    return {model: await _counts(engine, model) for model in (None, V1, V2)}


def _check(counts: dict[str | None, tuple[int, int]], default: int) -> None:
    assert {model: vision for model, (vision, _) in counts.items()} == {None: default, V1: 273, V2: 257}
    # The prompt's text is the same: only the image's part differs.
    assert counts[V1][1] - counts[V2][1] == 273 - 257


@pytest.mark.parametrize(("default_model", "default_tokens"), [(V1, 273), (V2, 257)])
async def test_fake_engine_counts_by_the_request_model(default_model: str, default_tokens: int) -> None:
    engine = create_engine(EngineSettings(kind="fake", model=default_model))
    await engine.start()
    try:
        _check(await _all_counts(engine), default_tokens)
    finally:
        await engine.close()


async def test_cpu_engine_counts_by_the_request_model(cpu_engine: CpuEngine) -> None:
    _check(await _all_counts(cpu_engine), 273)


@pytest.mark.slow
async def test_cpu_engine_serving_v2_by_default_counts_v2_tokens() -> None:
    engine = CpuEngine(EngineSettings(kind="cpu", model=V2), threads=1)
    await engine.start()
    try:
        _check(await _all_counts(engine), 257)
    finally:
        await engine.close()
