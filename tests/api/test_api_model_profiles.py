"""Each served model gets its own profile on every door: its modes, its presets, its n-gram rule
and its vision-token count.

A server whose default model (``DSOCR_ENGINE__MODEL``) or extra model is DeepSeek-OCR 2 offers
that model's one mode and two presets, gives it the model's own n-gram defaults (20, 90) and counts
its vision tokens by its formula; DeepSeek-OCR v1 keeps its five modes, six presets and (30, 90).
A local model directory is known by the architecture its ``config.json`` names.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ClientFactory, b64, png_bytes

from dsocr import modes
from dsocr.engine.factory import create_engine
from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings

V1 = "deepseek-ai/DeepSeek-OCR"
V2 = "deepseek-ai/DeepSeek-OCR-2"
V1_ARCHITECTURE = "DeepseekOCRForCausalLM"
V2_ARCHITECTURE = "DeepseekOCR2ForCausalLM"
IMAGE = b64(png_bytes())


def _settings(config: str, **engine: Any) -> Settings:
    """``v2-default``: DeepSeek-OCR 2 is the default model; ``v2-extra``: it is served beside v1."""
    if config == "v2-default":
        return Settings(engine={"kind": "fake", "model": V2, **engine}, cache={"enabled": False})
    return Settings(engine={"kind": "fake", "extra_models": [V2], **engine}, cache={"enabled": False})


def _v2(config: str) -> str | None:
    """How a request names DeepSeek-OCR 2: not at all where it is the default model."""
    return None if config == "v2-default" else V2


async def _send(
    client: httpx.AsyncClient, door: str, name: str | None, *, mode: str, text: str
) -> httpx.Response:
    """One request for ``text`` (a preset name) in ``mode`` to model ``name`` through one door.

    The chat route always names its model; there ``None`` is DeepSeek-OCR 2's public name.
    """
    model = {} if name is None else {"model": name}
    if door == "ocr":
        return await client.post(
            "/v1/ocr", json={"image_base64": IMAGE, "preset": text, "mode": mode, **model}
        )
    if door == "predict":
        return await client.post(
            "/predict", json={"image_base64": IMAGE, "prompt": text, "mode": mode, **model}
        )
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
        {"type": "text", "text": text},
    ]
    body = {
        "model": model.get("model", V2),
        "messages": [{"role": "user", "content": content}],
        "mode": mode,
    }
    return await client.post("/v1/chat/completions", json=body)


DOORS = ("ocr", "predict", "chat")
# /predict (the seed contract) has no ``model`` field: it reaches the default model only.
CASES = [
    pytest.param(door, config, id=f"{door}-{config}")
    for config in ("v2-default", "v2-extra")
    for door in DOORS
    if (door, config) != ("predict", "v2-extra")
]


@pytest.mark.parametrize(("door", "config"), CASES)
async def test_v2_refuses_a_v1_mode_naming_mode_and_its_modes(
    make_client: ClientFactory, door: str, config: str
) -> None:
    engine = FakeEngine()
    async with make_client(settings=_settings(config), engine=engine) as client:
        refused = await _send(client, door, _v2(config), mode="tiny", text="free")
        served = await _send(client, door, _v2(config), mode="gundam", text="free")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["field"] == "mode"
    assert "'tiny'" in error["message"] and V2 in error["message"]
    assert error["message"].endswith("available: gundam")
    assert served.status_code == 200, served.text
    # The refused request never reached the engine.
    assert [seen.mode for seen in engine.requests] == ["gundam"]


@pytest.mark.parametrize(("door", "config"), CASES)
async def test_v2_refuses_a_preset_it_was_not_released_with(
    make_client: ClientFactory, door: str, config: str
) -> None:
    engine = FakeEngine()
    async with make_client(settings=_settings(config), engine=engine) as client:
        refused = await _send(client, door, _v2(config), mode="gundam", text="figure")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    # /v1/ocr names its preset field; the other doors carry the preset's name in their prompt text.
    assert (
        error["field"] == {"ocr": "preset", "predict": "prompt", "chat": "messages[0].content[1].text"}[door]
    )
    assert "'figure'" in error["message"] and error["message"].endswith("available: document, free")
    assert engine.requests == []


async def test_v1_beside_v2_keeps_its_modes_and_presets(make_client: ClientFactory) -> None:
    engine = FakeEngine()
    async with make_client(settings=_settings("v2-extra"), engine=engine) as client:
        for door in DOORS:
            response = await _send(
                client, door, None if door == "predict" else V1, mode="tiny", text="figure"
            )
            assert response.status_code == 200, (door, response.text)
    assert [(seen.model, seen.mode) for seen in engine.requests] == [(None, "tiny")] * 3


async def test_v1_unknown_mode_still_names_mode(make_client: ClientFactory) -> None:
    async with make_client(settings=_settings("v2-extra")) as client:
        response = await client.post("/v1/ocr", json={"image_base64": IMAGE, "mode": "huge"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "mode" and "tiny, small, base, large, gundam" in error["message"]


async def test_each_model_gets_its_own_ngram_defaults(make_client: ClientFactory) -> None:
    engine = FakeEngine()
    async with make_client(settings=_settings("v2-extra"), engine=engine) as client:
        v1 = await client.post("/v1/ocr", json={"image_base64": IMAGE})
        v2 = await client.post("/v1/ocr", json={"image_base64": IMAGE, "model": V2})
        cards = (await client.get("/v1/models")).json()["data"]
    assert v1.status_code == v2.status_code == 200
    rules = [(seen.model, seen.sampling.ngram_size, seen.sampling.ngram_window) for seen in engine.requests]
    assert rules == [(None, 30, 90), (V2, 20, 90)]
    # /v1/models tells clients the rule each model gets.
    assert {card["id"]: (card["dsocr"]["ngram_size"], card["dsocr"]["window_size"]) for card in cards} == {
        V1: (30, 90),
        V2: (20, 90),
    }


async def test_ngram_settings_the_deployment_sets_apply_to_every_model(make_client: ClientFactory) -> None:
    engine = FakeEngine()
    settings = _settings("v2-extra", ngram_size=25, ngram_window=80)
    async with make_client(settings=settings, engine=engine) as client:
        await client.post("/v1/ocr", json={"image_base64": IMAGE})
        await client.post("/v1/ocr", json={"image_base64": IMAGE, "model": V2})
        # A request's own rule (the chat route's vllm_xargs) wins over both.
        content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}}]
        await client.post(
            "/v1/chat/completions",
            json={
                "model": V2,
                "messages": [{"role": "user", "content": content}],
                "vllm_xargs": {"ngram_size": 12, "window_size": 40},
            },
        )
    rules = [(seen.sampling.ngram_size, seen.sampling.ngram_window) for seen in engine.requests]
    assert rules == [(25, 80), (25, 80), (12, 40)]


async def test_only_the_window_set_keeps_the_models_size(make_client: ClientFactory) -> None:
    engine = FakeEngine()
    async with make_client(settings=_settings("v2-default", ngram_window=60), engine=engine) as client:
        response = await client.post("/v1/ocr", json={"image_base64": IMAGE})
    assert response.status_code == 200
    assert (engine.requests[0].sampling.ngram_size, engine.requests[0].sampling.ngram_window) == (20, 60)


def _model_dir(parent: Path, name: str, architecture: str) -> Path:
    """A local model directory as Hugging Face downloads it: ``config.json`` names its architecture."""
    directory = parent / name
    directory.mkdir()
    config = {"architectures": [architecture], "model_type": "deepseek_vl_v2", "torch_dtype": "bfloat16"}
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


async def test_a_model_directory_is_known_by_the_architecture_its_config_names(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    # Neither directory's name says which model it holds, and one's name says the wrong one.
    v2_dir = _model_dir(tmp_path, "checkpoint", V2_ARCHITECTURE)
    v1_dir = _model_dir(tmp_path, "DeepSeek-OCR-2", V1_ARCHITECTURE)
    settings = Settings(
        engine={"kind": "fake", "model": str(v2_dir), "extra_models": [str(v1_dir)]}, cache={"enabled": False}
    )
    engine = FakeEngine()
    async with make_client(settings=settings, engine=engine) as client:
        refused = await client.post("/v1/ocr", json={"image_base64": IMAGE, "mode": "tiny"})
        v2 = await client.post("/v1/ocr", json={"image_base64": IMAGE})
        v1 = await client.post("/v1/ocr", json={"image_base64": IMAGE, "mode": "tiny", "model": str(v1_dir)})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "mode"
    assert refused.json()["error"]["message"].endswith("available: gundam")
    assert v2.status_code == v1.status_code == 200, (v2.text, v1.text)
    rules = [(seen.model, seen.mode, seen.sampling.ngram_size) for seen in engine.requests]
    assert rules == [(None, "gundam", 20), (str(v1_dir), "tiny", 30)]


async def test_a_model_directory_without_a_known_architecture_goes_by_its_name(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    named = _model_dir(tmp_path, "DeepSeek-OCR-2", "SomeOtherForCausalLM")
    settings = Settings(engine={"kind": "fake", "model": str(named)}, cache={"enabled": False})
    engine = FakeEngine()
    async with make_client(settings=settings, engine=engine) as client:
        response = await client.post("/v1/ocr", json={"image_base64": IMAGE})
    assert response.status_code == 200, response.text
    assert engine.requests[0].sampling.ngram_size == 20


async def test_model_directories_configs_are_read_once_before_serving_off_the_event_loop(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v2_dir = _model_dir(tmp_path, "weights", V2_ARCHITECTURE)
    v1_dir = _model_dir(tmp_path, "other-weights", V1_ARCHITECTURE)
    reads: list[tuple[str, bool]] = []  # (model, read on a running event loop)
    read = modes._config_architectures

    def counted(model_id: str) -> tuple[str, ...]:
        reads.append((model_id, _on_event_loop()))
        return read(model_id)

    monkeypatch.setattr(modes, "_config_architectures", counted)
    settings = Settings(
        engine={"kind": "fake", "model": str(v2_dir), "extra_models": [str(v1_dir)]}, cache={"enabled": False}
    )
    engine = FakeEngine()
    async with make_client(settings=settings, engine=engine) as client:
        before_serving = list(reads)
        for model in (None, str(v1_dir), None):
            named = {} if model is None else {"model": model}
            response = await client.post("/v1/ocr", json={"image_base64": IMAGE, **named})
            assert response.status_code == 200, response.text
    assert [seen.sampling.ngram_size for seen in engine.requests] == [20, 30, 20]
    # Both directories were read at start, once each and off the loop; requests read nothing.
    assert reads == before_serving
    assert sorted(reads) == sorted([(str(v2_dir), False), (str(v1_dir), False)])


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# (width, height) → vision tokens: v1 Gundam 273 untiled, 16·17+1 + 10·(2·10+1) for 2×1 tiles of
# 640²; v2 257 untiled, 257 + 2·144 for 2×1 tiles of 768² (docs/models.md).
TOKENS = {(400, 300): {V1: 273, V2: 257}, (1600, 800): {V1: 483, V2: 545}}


@pytest.mark.parametrize("size", list(TOKENS), ids=["untiled", "tiled"])
async def test_usage_counts_each_models_vision_tokens_in_one_server(
    make_client: ClientFactory, size: tuple[int, int]
) -> None:
    image = b64(png_bytes(*size))
    usages: dict[str, dict[str, Any]] = {}
    async with make_client(settings=_settings("v2-extra"), engine=FakeEngine()) as client:
        for model in (V1, V2):
            ocr = await client.post("/v1/ocr", json={"image_base64": image, "model": model})
            assert ocr.status_code == 200, ocr.text
            usages[f"ocr {model}"] = ocr.json()["usage"]
            assert ocr.json()["pages"][0]["usage"] == ocr.json()["usage"]
            content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]
            chat = await client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": content}]},
            )
            assert chat.status_code == 200, chat.text
            usage = chat.json()["usage"]
            usages[f"chat {model}"] = {
                "vision_tokens": usage["prompt_tokens_details"]["image_tokens"],
                "prompt_tokens": usage["prompt_tokens"],
            }
    for model in (V1, V2):
        expected = TOKENS[size][model]
        for door in ("ocr", "chat"):
            usage = usages[f"{door} {model}"]
            assert usage["vision_tokens"] == expected, (door, model, usage)
            # BOS + the image's tokens + the prompt's text: the image's part follows the model too.
            assert expected < usage["prompt_tokens"] < expected + 40, (door, model, usage)
    assert usages[f"ocr {V1}"]["prompt_tokens"] - usages[f"ocr {V2}"]["prompt_tokens"] == (
        TOKENS[size][V1] - TOKENS[size][V2]
    )


async def test_usage_counts_the_default_models_vision_tokens(make_client: ClientFactory) -> None:
    # The fake engine as the factory builds it for DSOCR_ENGINE__MODEL=DeepSeek-OCR-2.
    settings = _settings("v2-default")
    engine = create_engine(settings.engine)
    async with make_client(settings=settings, engine=engine) as client:
        ocr = await client.post("/v1/ocr", json={"image_base64": IMAGE})
        predict = await client.post("/predict", json={"image_base64": IMAGE, "prompt": "free"})
    assert ocr.status_code == predict.status_code == 200, (ocr.text, predict.text)
    assert ocr.json()["usage"]["vision_tokens"] == predict.json()["usage"]["vision_tokens"] == 257
