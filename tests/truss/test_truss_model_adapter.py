"""The Truss adapter, imported from truss/model/model.py the way Truss imports it.

Truss calls ``load()`` synchronously in a worker thread and awaits ``predict`` on its own event
loop; these tests do the same (``load`` via ``asyncio.to_thread`` from the test's loop).
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from fastapi import HTTPException
from PIL import Image, ImageDraw

TRUSS_DIR = Path(__file__).resolve().parents[2] / "truss"


def _import_truss_model(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # Truss puts the model directory on sys.path and imports model.py from it.
    monkeypatch.syspath_prepend(str(TRUSS_DIR / "model"))
    spec = importlib.util.spec_from_file_location("truss_model_under_test", TRUSS_DIR / "model" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page_png(width: int, height: int, text: str) -> str:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 20), text, fill="black")
    draw.rectangle((20, 60, width - 20, height - 20), outline="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("DSOCR_ENGINE__KIND", "fake")
    module = _import_truss_model(monkeypatch)
    instance = module.Model(config={"model_name": "test"}, data_dir=Path("."), secrets={})
    yield instance
    instance.close()


async def test_is_healthy_only_between_load_and_close(model: Any) -> None:
    assert model.is_healthy() is False
    await asyncio.to_thread(model.load)
    assert model.is_healthy() is True
    model.close()
    assert model.is_healthy() is False


async def test_concurrent_predicts_follow_the_predict_contract(model: Any) -> None:
    await asyncio.to_thread(model.load)
    sizes = [(400 + 40 * i, 500 + 30 * i) for i in range(8)]
    payloads = [{"image_base64": _page_png(w, h, f"page {i}")} for i, (w, h) in enumerate(sizes)]

    results = await asyncio.gather(*(model.predict(payload) for payload in payloads))

    assert len({result["request_id"] for result in results}) == len(results)
    for (width, height), result in zip(sizes, results, strict=True):
        assert result["image_size"] == [width, height]
        assert result["has_bounding_boxes"] is True
        assert "<|ref|>" in result["raw_output"]
        assert result["extracted_text"].strip()
        assert result["prompt_used"] == "<image>\n<|grounding|>Convert the document to markdown."
        assert result["blocks"], "typed blocks are returned alongside the seed's keys"
        for block in result["blocks"]:
            for x1, y1, x2, y2 in block["boxes_px"]:
                assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
        assert result["usage"]["completion_tokens"] > 0


async def test_free_prompt_is_echoed_and_normalised(model: Any) -> None:
    await asyncio.to_thread(model.load)
    prompt = "Extract all text from this image. <image>"
    result = await model.predict({"image_base64": _page_png(300, 200, "hello"), "prompt": prompt})
    assert result["prompt_used"] == prompt
    assert "extracted_text" in result


async def test_the_configs_example_input_gets_grounded_output(model: Any) -> None:
    # truss/config.yaml's example input, with the image sent inline (no network in tests).
    config = yaml.safe_load((TRUSS_DIR / "config.yaml").read_text(encoding="utf-8"))
    example = dict(config["model_metadata"]["example_model_input"])
    assert example.pop("image_url").startswith("https://")
    await asyncio.to_thread(model.load)
    result = await model.predict({**example, "image_base64": _page_png(600, 800, "example")})
    assert result["has_bounding_boxes"] is True
    assert result["blocks"] and all(block["boxes_px"] for block in result["blocks"])
    assert "<|ref|>" not in result["extracted_text"] and result["extracted_text"].strip()


async def test_bad_input_raises_http_400_with_the_error_envelope(model: Any) -> None:
    await asyncio.to_thread(model.load)
    with pytest.raises(HTTPException) as missing:
        await model.predict({"prompt": "document"})
    assert missing.value.status_code == 400
    error = missing.value.detail["error"]
    assert error["code"] == "invalid_input"
    assert error["field"] == "image_url"
    assert error["type"] == "invalid_request_error"
    assert "image_url" in error["message"]


async def test_undecodable_image_is_422_naming_the_field(model: Any) -> None:
    await asyncio.to_thread(model.load)
    truncated = base64.b64decode(_page_png(300, 200, "x"))[:60]
    with pytest.raises(HTTPException) as caught:
        await model.predict({"image_base64": base64.b64encode(truncated).decode("ascii")})
    assert caught.value.status_code == 422
    assert caught.value.detail["error"]["field"] == "image_base64"


async def test_predict_before_load_is_503_not_a_mock_answer(model: Any) -> None:
    with pytest.raises(HTTPException) as caught:
        await model.predict({"image_base64": _page_png(300, 200, "x")})
    assert caught.value.status_code == 503
    assert caught.value.detail["error"]["code"] == "engine_unavailable"
    assert caught.value.headers == {"Retry-After": "5"}


async def test_cancelled_predict_aborts_the_engine_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_ENGINE__KIND", "fake")
    monkeypatch.setenv("DSOCR_ENGINE__FAKE_DELAY_S", "5")
    instance = _import_truss_model(monkeypatch).Model(secrets={})
    try:
        await asyncio.to_thread(instance.load)
        task = asyncio.create_task(instance.predict({"image_base64": _page_png(300, 200, "slow")}))
        engine = instance._engine
        for _ in range(200):  # wait until the engine has the request
            if engine.requests:
                break
            await asyncio.sleep(0.01)
        assert engine.requests, "the request reached the engine"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        request_id = engine.requests[0].request_id
        for _ in range(200):
            if request_id in engine.aborted:
                break
            await asyncio.sleep(0.01)
        assert engine.aborted == [request_id]
    finally:
        instance.close()


def test_failed_load_raises_and_stays_unhealthy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The vLLM engine cannot start on this CPU-only machine: load() must fail loudly.
    monkeypatch.setenv("DSOCR_ENGINE__KIND", "vllm")
    instance = _import_truss_model(monkeypatch).Model(secrets={})
    with pytest.raises(Exception):  # noqa: B017 - whichever error the engine raises, load fails
        instance.load()
    assert instance.is_healthy() is False
    with pytest.raises(HTTPException) as caught:
        asyncio.run(instance.predict({"image_base64": _page_png(300, 200, "x")}))
    assert caught.value.status_code == 503
    assert "failed to load" in caught.value.detail["error"]["message"]


def test_hf_access_token_secret_is_exported_for_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSOCR_ENGINE__KIND", "fake")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    instance = _import_truss_model(monkeypatch).Model(secrets={"hf_access_token": "hf_secret_value"})
    try:
        instance.load()
        assert os.environ["HF_TOKEN"] == "hf_secret_value"
    finally:
        instance.close()
        monkeypatch.delenv("HF_TOKEN", raising=False)
