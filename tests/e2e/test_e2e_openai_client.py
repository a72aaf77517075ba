"""The official OpenAI Python client against a real uvicorn server on loopback (fake engine)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import openai
import pytest
from openai_support import MODEL, Server, ocr_messages, page_data_url, running_server

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # Pages are sent again to compare answers made by the engine (a stream's chunks among them),
    # which the result cache would give back whole.
    settings = Settings(
        engine={"kind": "fake", "model": MODEL}, server={"api_keys": [API_KEY]}, cache={"enabled": False}
    )
    with running_server(settings, FakeEngine()) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=30) as client:
        yield client


def test_models_list_names_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == [MODEL]
    assert models.data[0].object == "model"
    # The OCR-safe sampling the server enforces is published with each model.
    enforced = models.data[0].model_extra["dsocr"]  # type: ignore[index]
    assert enforced["temperature"] == 0.0 and enforced["skip_special_tokens"] is False
    assert (enforced["ngram_size"], enforced["window_size"]) == (30, 90)


def test_document_preset_returns_grounded_markdown_with_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages("document", page_data_url()),
    )
    choice = completion.choices[0]
    content = choice.message.content or ""
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    # Special tokens are kept: grounding tags reach the client.
    assert "<|ref|>" in content and "<|det|>" in content
    assert completion.model == MODEL
    assert completion.id.startswith("chatcmpl-")
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens > 0
    # The prompt count includes the image's vision tokens (hundreds for a page).
    assert usage.prompt_tokens > 100
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_preset_name_and_equivalent_prompt_give_the_same_text(client: openai.OpenAI) -> None:
    url = page_data_url()
    by_name = client.chat.completions.create(model=MODEL, messages=ocr_messages("free", url))
    by_prompt = client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages("<image>\nFree OCR.", url),
    )
    grounded = client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages("<|grounding|>Convert the document to markdown.", url),
    )
    assert by_name.choices[0].message.content == by_prompt.choices[0].message.content
    assert "<|ref|>" not in (by_name.choices[0].message.content or "")
    assert "<|ref|>" in (grounded.choices[0].message.content or "")


def test_stream_chunks_concatenate_to_the_non_streamed_text(client: openai.OpenAI) -> None:
    url = page_data_url()
    whole = client.chat.completions.create(model=MODEL, messages=ocr_messages("document", url))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages("document", url),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    finish = [
        chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason
    ]
    assert len(pieces) > 3, "the text arrives in several chunks"
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == ["stop"]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    # The usage chunk comes last, with no choices, and matches the non-streamed usage.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages("free", page_data_url()),
        stream=True,
    )
    chunks = list(stream)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_cuts_the_output_with_finish_reason_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages("document", page_data_url()),
        max_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens <= 5


def test_vllm_xargs_and_temperature_reach_the_engine_as_ocr_safe_sampling(
    server: Server, client: openai.OpenAI
) -> None:
    client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages("free", page_data_url()),
        temperature=0.9,
        max_completion_tokens=300,
        extra_body={"vllm_xargs": {"ngram_size": 20, "window_size": 50}, "skip_special_tokens": False},
    )
    sampling = server.engine.requests[-1].sampling
    assert sampling.temperature == 0.0
    assert (sampling.ngram_size, sampling.ngram_window) == (20, 50)
    assert sampling.max_tokens == 300


def test_max_tokens_over_the_limit_is_refused_naming_the_field(client: openai.OpenAI) -> None:
    # Refused as on every route, never silently clamped: the client learns its text would be cut.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=ocr_messages("free", page_data_url()), max_completion_tokens=10**9
        )
    assert caught.value.param == "max_completion_tokens"
    assert "DSOCR_LIMITS__MAX_TOKENS" in caught.value.message


def test_unknown_model_is_not_found_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=ocr_messages("free", page_data_url()))
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert MODEL in caught.value.message


def test_undecodable_image_is_a_bad_request_naming_the_part(client: openai.OpenAI) -> None:
    truncated = base64.b64decode(page_data_url().split(",", 1)[1])[:80]
    url = "data:image/png;base64," + base64.b64encode(truncated).decode("ascii")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ocr_messages("free", url))
    assert caught.value.code == "undecodable_input"
    assert caught.value.param == "messages[0].content[0].image_url.url"


def test_not_an_image_is_a_bad_request(client: openai.OpenAI) -> None:
    url = "data:image/png;base64," + base64.b64encode(b"hello, this is text").decode("ascii")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ocr_messages("free", url))
    assert caught.value.code == "unsupported_media_type"


def test_message_without_image_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Free OCR."}])
    assert caught.value.param == "messages[0].content"


def test_private_address_url_is_refused_by_the_fetch_guard(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=ocr_messages("free", "https://127.0.0.1/page.png"),
        )
    assert caught.value.code == "fetch_failed"


def test_wrong_api_key_is_an_authentication_error(server: Server) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=MODEL, messages=ocr_messages("free", page_data_url()))


def test_unknown_mode_is_a_bad_request_naming_mode(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=ocr_messages("free", page_data_url()), extra_body={"mode": "huge"}
        )
    assert caught.value.param == "mode"
    assert "gundam" in caught.value.message
