"""``POST /predict``: the seed Truss contract, key for key, and real HTTP errors for bad input."""

from __future__ import annotations

import uuid

import httpx
import pytest
from api_support import b64, pdf_bytes, png_bytes

from dsocr.engine.fake import FakeEngine
from dsocr.prompts import PRESETS
from dsocr.settings import Settings
from predict_contract import SEED_LONG_KEYS, SEED_SHORT_KEYS, TYPED_ADDITIONS
from server_support import running_server


async def test_default_prompt_returns_seed_long_form_in_seed_key_order(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"image_base64": b64(png_bytes(640, 480))})
    assert response.status_code == 200
    body = response.json()
    keys = list(body)
    assert keys[: len(SEED_LONG_KEYS)] == SEED_LONG_KEYS
    assert set(keys[len(SEED_LONG_KEYS) :]) == TYPED_ADDITIONS
    assert body["image_size"] == [640, 480]
    assert body["prompt_used"] == PRESETS["document"]
    assert body["has_bounding_boxes"] is True
    assert "<|ref|>" in body["raw_output"]
    assert "<|ref|>" not in body["extracted_text"]
    # The image block's reference is replaced by the seed's link, the others are removed.
    assert "![](image_0.jpg)" in body["extracted_text"]
    assert len(body["references"]) == len(body["image_references"]) + len(body["other_references"])
    assert all(len(ref) == 3 for ref in body["references"])
    # Typed additions agree with the seed fields.
    assert len(body["blocks"]) == len(body["references"])
    assert body["blocks"][0]["boxes_px"][0][2] <= 640
    assert body["usage"]["vision_tokens"] > 0
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    assert body["finish_reason"] == "stop"
    assert response.headers["x-request-id"] == body["request_id"]
    assert uuid.UUID(body["request_id"]).version == 4


async def test_seed_free_form_prompt_returns_short_form_and_echoes_prompt(client: httpx.AsyncClient) -> None:
    prompt = "Extract all text from this image. <image>"
    response = await client.post("/predict", json={"image_base64": b64(png_bytes()), "prompt": prompt})
    assert response.status_code == 200
    body = response.json()
    assert list(body)[: len(SEED_SHORT_KEYS)] == SEED_SHORT_KEYS
    assert set(list(body)[len(SEED_SHORT_KEYS) :]) == TYPED_ADDITIONS
    assert "raw_output" not in body and "has_bounding_boxes" not in body
    assert body["prompt_used"] == prompt
    assert body["image_size"] == [400, 300]
    assert body["extracted_text"]
    # The model saw the normalised prompt: <image> first.
    engine = client.app.state.dsocr.engine  # type: ignore[attr-defined]
    assert engine.requests[-1].prompt == "<image>\nExtract all text from this image."


async def test_image_field_accepts_base64_and_data_uri(client: httpx.AsyncClient) -> None:
    data = png_bytes(200, 100)
    plain = await client.post("/predict", json={"image": b64(data)})
    uri = await client.post("/predict", json={"image": "data:image/png;base64," + b64(data)})
    assert plain.status_code == 200 and uri.status_code == 200
    assert plain.json()["image_size"] == uri.json()["image_size"] == [200, 100]


async def test_missing_source_is_400_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"prompt": "Free OCR."})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["field"] == "image_url"
    assert "image_base64" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


async def test_two_sources_are_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/predict", json={"image_url": "https://example.com/a.png", "image": b64(png_bytes())}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "image"


async def test_bad_base64_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"image_base64": "this is not base64!"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["field"]) == (
        "invalid_request_error",
        "invalid_input",
        "image_base64",
    )


async def test_non_image_bytes_are_415(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"image_base64": b64(b"just some text, not an image" * 4)})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


async def test_truncated_png_is_422(client: httpx.AsyncClient) -> None:
    data = png_bytes(800, 600)
    response = await client.post("/predict", json={"image_base64": b64(data[: len(data) // 2])})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "undecodable_input"


async def test_pdf_is_refused_with_a_pointer_to_v1_ocr(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"image_base64": b64(pdf_bytes(1))})
    assert response.status_code == 415
    assert "/v1/ocr" in response.json()["error"]["message"]


async def test_prompt_with_two_image_tags_is_400_on_prompt(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/predict", json={"image_base64": b64(png_bytes()), "prompt": "<image> and <image> again"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "prompt"


async def test_body_that_is_not_json_is_400_and_wrong_type_415(client: httpx.AsyncClient) -> None:
    broken = await client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["error"]["message"]
    wrong = await client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    assert wrong.status_code == 415


async def test_engine_failure_is_an_http_error_never_200_with_error_key(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/predict", json={"image_base64": b64(png_bytes()), "prompt": "Free OCR. [fake:fail]"}
    )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "engine_error"
    # And the server keeps serving.
    again = await client.post("/predict", json={"image_base64": b64(png_bytes())})
    assert again.status_code == 200


@pytest.mark.parametrize("name", ["document", "ocr", "free", "figure", "describe"])
def test_a_preset_name_means_the_same_prompt_on_predict_v1_ocr_and_chat(name: str) -> None:
    # truss/config.yaml's example input sends "prompt": "document": it must be grounded output,
    # the same as the preset on the other routes, not the word "document" sent to the model.
    image = b64(png_bytes(640, 480))
    engine = FakeEngine()
    # Every door must reach the engine: the result cache would answer the second and third.
    settings = Settings(engine={"kind": "fake"}, cache={"enabled": False})
    with (
        running_server(settings, engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        predict = http.post("/predict", json={"image_base64": image, "prompt": name})
        native = http.post("/v1/ocr", json={"image_base64": image, "preset": name})
        chat = http.post(
            "/v1/chat/completions",
            json={
                "model": "deepseek-ai/DeepSeek-OCR",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                            {"type": "text", "text": name},
                        ],
                    }
                ],
            },
        )
    assert [r.status_code for r in (predict, native, chat)] == [200, 200, 200]
    assert [request.prompt for request in engine.requests] == [PRESETS[name]] * 3
    body = predict.json()
    # What the model got, in full: the preset's prompt text.
    assert body["prompt_used"] == PRESETS[name]
    if name in ("document", "ocr"):
        assert body["has_bounding_boxes"] is True and body["blocks"]
        assert all(block["boxes_px"] for block in body["blocks"])


def test_ocr_preset_extracted_text_holds_every_line_the_model_read() -> None:
    engine = FakeEngine()
    with running_server(Settings(engine={"kind": "fake"}), engine) as server:
        response = httpx.post(
            f"{server.url}/predict",
            json={"image_base64": b64(png_bytes(640, 480)), "prompt": PRESETS["ocr"]},
            timeout=30,
        )
    assert response.status_code == 200
    body = response.json()
    lines = [block["text"] for block in body["blocks"]]
    assert len(lines) > 3
    assert body["extracted_text"].splitlines() == lines
    assert "<|ref|>" not in body["extracted_text"]
