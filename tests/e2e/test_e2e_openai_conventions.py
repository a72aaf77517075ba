"""OpenAI's and vLLM's conventions on the OpenAI route, through the official client on loopback.

A parameter the route cannot honour is a 400 naming it, never silently dropped; ``/v1/models``
and ``/v1/models/{id}`` return vLLM's model cards; an unknown field is ignored with a warning,
as vLLM does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai_support import MODEL, Server, ocr_messages, page_data_url, running_server

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings

MAX_MODEL_LEN = 6144


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # The tests read what the engine was sent, for the same page again and again: no result cache.
    settings = Settings(
        engine={"kind": "fake", "model": MODEL, "max_model_len": MAX_MODEL_LEN}, cache={"enabled": False}
    )
    with running_server(settings, FakeEngine()) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=30) as client:
        yield client


# (the parameter the error names, the request's extra arguments): each asks for something the
# route cannot produce.
_REFUSED: list[tuple[str, dict[str, Any]]] = [
    ("stop", {"stop": ["</table>"]}),
    ("stop", {"stop": "\n\n"}),
    ("logprobs", {"logprobs": True}),
    ("top_logprobs", {"top_logprobs": 3}),
    ("response_format", {"response_format": {"type": "json_object"}}),
    (
        "tools",
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
    ),
    ("tool_choice", {"tool_choice": "required"}),
    ("seed", {"seed": 7}),
    ("n", {"n": 2}),
    ("frequency_penalty", {"frequency_penalty": 0.5}),
    ("presence_penalty", {"presence_penalty": -0.5}),
    ("logit_bias", {"logit_bias": {"128821": -100}}),
    ("reasoning_effort", {"reasoning_effort": "high"}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("skip_special_tokens", {"extra_body": {"skip_special_tokens": True}}),
    # vLLM's extra sampling parameters.
    ("top_k", {"extra_body": {"top_k": 5}}),
    ("repetition_penalty", {"extra_body": {"repetition_penalty": 1.2}}),
    ("stop_token_ids", {"extra_body": {"stop_token_ids": [128821]}}),
    ("guided_json", {"extra_body": {"guided_json": {"type": "object"}}}),
]


@pytest.mark.parametrize(("param", "extra"), _REFUSED, ids=[f"{p}-{i}" for i, (p, _) in enumerate(_REFUSED)])
@pytest.mark.parametrize("stream", [False, True])
def test_a_parameter_the_route_cannot_honour_is_a_bad_request_naming_it(
    server: Server, client: openai.OpenAI, param: str, extra: dict[str, Any], stream: bool
) -> None:
    before = server.engine.request_count
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=ocr_messages("free", page_data_url()), stream=stream, **extra
        )
    assert caught.value.param == param
    assert caught.value.code == "invalid_input"
    assert f"- {param} is not supported" in caught.value.message
    assert server.engine.request_count == before, "a refused request never reaches the engine"


def test_the_no_op_values_of_those_parameters_are_accepted(server: Server, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=ocr_messages("free", page_data_url()),
        n=1,
        stop=[],
        logprobs=False,
        response_format={"type": "text"},
        tools=[],
        tool_choice="none",
        frequency_penalty=0,
        presence_penalty=0.0,
        logit_bias={},
        modalities=["text"],
        # Bookkeeping that does not change the reading.
        user="alice",
        metadata={"job": "invoices"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=False,
        # Pinned for OCR, as documented: accepted, decoding stays greedy.
        temperature=0.7,
        top_p=0.5,
        extra_body={
            "skip_special_tokens": False,
            "top_k": -1,
            "repetition_penalty": 1.0,
            "ignore_eos": False,
        },
    )
    assert completion.choices[0].message.content
    assert completion.choices[0].logprobs is None
    assert server.engine.requests[-1].sampling.temperature == 0.0


def test_an_unknown_field_is_ignored_with_a_warning_as_vllm_does(
    client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dsocr.server.routes_openai"):
        completion = client.chat.completions.create(
            model=MODEL,
            messages=ocr_messages("free", page_data_url()),
            extra_body={"no_such_field": 1},
        )
    assert completion.choices[0].message.content
    assert any("no_such_field" in record.getMessage() for record in caplog.records)


def _check_card(card: openai.types.Model, model_id: str, root: str) -> None:
    assert (card.id, card.object, card.owned_by) == (model_id, "model", "dsocr")
    assert card.created > 0
    extra = card.model_extra or {}
    # vLLM's ModelCard fields.
    assert extra["root"] == root
    assert extra["parent"] is None
    assert extra["max_model_len"] == MAX_MODEL_LEN
    (permission,) = extra["permission"]
    assert permission["object"] == "model_permission"
    assert permission["allow_sampling"] is False and permission["allow_logprobs"] is False


def test_models_list_and_retrieve_return_vllm_model_cards(client: openai.OpenAI) -> None:
    (listed,) = client.models.list().data
    _check_card(listed, MODEL, MODEL)
    # The id holds a slash; the client percent-encodes it into one path segment.
    retrieved = client.models.retrieve(MODEL)
    _check_card(retrieved, MODEL, MODEL)
    assert retrieved.model_dump() == listed.model_dump()


def test_retrieving_an_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert caught.value.code == "model_not_found"
    assert MODEL in caught.value.message


def test_a_served_model_name_is_the_card_id_and_the_model_path_its_root() -> None:
    settings = Settings(
        engine={"kind": "fake", "model": MODEL, "served_model_name": "ocr", "max_model_len": MAX_MODEL_LEN}
    )
    with (
        running_server(settings, FakeEngine()) as running,
        openai.OpenAI(base_url=running.base_url, api_key="unused", max_retries=0, timeout=30) as client,
    ):
        (listed,) = client.models.list().data
        _check_card(listed, "ocr", MODEL)
        _check_card(client.models.retrieve("ocr"), "ocr", MODEL)
        # Asked for by its path, the model answers under its served name, as vLLM's responses do.
        completion = client.chat.completions.create(
            model=MODEL, messages=ocr_messages("free", page_data_url())
        )
        assert completion.model == "ocr"
