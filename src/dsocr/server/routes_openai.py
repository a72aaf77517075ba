"""OpenAI-compatible routes: ``POST /v1/chat/completions``, ``GET /v1/models`` and ``/v1/models/{id}``.

A translator, not a second server: the OpenAI wire format is mapped onto the same request
(:func:`dsocr.request.build_request`) and pipeline (:class:`dsocr.pipeline.Pipeline`) the native
routes use, and the pipeline's events back onto OpenAI's chunks. The request is one user
message whose content has one ``image_url`` part (an ``http(s)`` URL, fetched through the
SSRF-guarded fetcher, or a ``data:`` URL) and optionally a text part: a preset name
(``"document"``, ``"free"`` …, see :data:`dsocr.prompts.PRESETS`) or a prompt, with or without
``<image>``. No text part means the official default preset ``document``.

``mode`` (an extra field, default ``gundam``) picks the resolution mode. OCR-safe defaults are
enforced server-side, whatever the client sends (documented here and in
``/v1/models``'s ``dsocr`` block):

* ``temperature`` is always 0 and ``top_p`` 1: OCR wants the most likely reading, and sampling
  makes DeepSeek-OCR hallucinate and loop. The client's values are accepted and ignored.
* Special tokens are kept (``skip_special_tokens`` is effectively False), so the
  ``<|ref|>…<|det|>`` grounding tags reach the client, as with vLLM and the official scripts.
* Repetition control (the official no-repeat n-gram rule, ``<td>``/``</td>`` whitelisted) is on
  with the server's ``ngram_size``/``window_size``. Clients may override them per request like
  vLLM's ``vllm_xargs`` (``extra_body={"vllm_xargs": {"ngram_size": 20, "window_size": 50}}``) or
  as top-level extra fields; ``ngram_size: 0`` turns the rule off.
* ``max_tokens`` / ``max_completion_tokens`` over ``DSOCR_LIMITS__MAX_TOKENS`` are refused (400
  naming the field), as on every route; not sent, the limit is the default.

A parameter the route cannot honour (``n`` > 1, ``stop``, ``logprobs``, ``response_format``,
``tools``, ``seed`` …, see ``_UNSUPPORTED``) is refused with 400 naming it, never silently
ignored; its no-op value (``n: 1``, ``logprobs: false`` …) is accepted. A field OpenAI does not
define is ignored with a logged warning, as vLLM does. The model list and cards are vLLM's
(``root``, ``max_model_len``, ``permission`` …); the model's name is
:func:`dsocr.request.model_name` here as on every route.

``finish_reason`` is OpenAI's ``stop`` or ``length``; an engine stop for repetition or an engine
abort is reported as ``length`` (the text is incomplete). Errors use the team envelope, which is
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` plus ``request_id``. Every invalid
request is answered 400 (the status OpenAI clients map to ``BadRequestError``) with dsocr's precise
``code``; an unknown ``model`` is 404 ``model_not_found``. In a stream, errors after the first
chunk arrive as a final ``data: {"error": …}`` event before ``data: [DONE]``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from dsocr.engine.base import FinishReason
from dsocr.errors import InvalidInput, ModelNotFound
from dsocr.inputs.sources import source_of
from dsocr.pipeline import Run
from dsocr.request import (
    OcrRequest,
    build_request,
    model_name,
    model_profile,
    ngram_defaults,
    route_model,
    served_model_names,
)
from dsocr.results import PageEvent, PageResult, TextDelta, Usage
from dsocr.server.deps import AppState, app_state, ready_pipeline, require_api_key, tenant
from dsocr.server.errors import (
    dsocr_error_body,
    error_headers,
    http_status,
    request_id_of,
    validation_error_body,
)
from dsocr.server.openapi import CACHE_HEADER_DOC, CHAT_REQUEST_EXAMPLE, error_responses
from dsocr.server.runs import (
    ClientGone,
    cache_headers,
    client_gone_response,
    collect,
    start_run,
    stream_response,
    watching_disconnect,
)
from dsocr.settings import Settings

__all__ = [
    "ChatCompletionRequest",
    "refuse_unsupported",
    "router",
    "to_ocr_request",
]

logger = logging.getLogger(__name__)


class _OpenAIRoute(APIRoute):
    """OpenAI clients map only 400 to ``BadRequestError``: every invalid request is answered 400.

    The body keeps dsocr's precise ``code`` (``undecodable_input``, ``unsupported_media_type``,
    ``validation_error`` …) and ``param``; only the status follows OpenAI's convention. An unknown
    model stays 404 (``NotFoundError``), as with OpenAI.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                request_id = request_id_of(request)
                body = validation_error_body(list(exc.errors()), request_id)
                return JSONResponse(body, status_code=400, headers=_request_id_headers(request_id))
            except InvalidInput as exc:
                if isinstance(exc, ModelNotFound) or http_status(exc) == 400:
                    raise
                request_id = request_id_of(request)
                return JSONResponse(
                    dsocr_error_body(exc, request_id), status_code=400, headers=error_headers(exc, request_id)
                )

        return openai_handler


def _request_id_headers(request_id: str | None) -> dict[str, str]:
    return {"X-Request-Id": request_id} if request_id else {}


router = APIRouter(tags=["openai"], route_class=_OpenAIRoute)

_OWNER = "dsocr"
# When the process started: the ``created`` of every served model.
_STARTED = int(time.time())
_FINISH_REASONS: dict[FinishReason, Literal["stop", "length"]] = {
    "stop": "stop",
    "length": "length",
    "repetition": "length",
    "abort": "length",
}


# ---------------------------------------------------------------- wire models (OpenAI's names)


class ImageURL(BaseModel):
    """``{"url": ..., "detail": ...}``; ``detail`` is accepted and ignored (one mode per request)."""

    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    """A content part carrying the image."""

    type: Literal["image_url"]
    image_url: ImageURL


class TextPart(BaseModel):
    """A content part carrying the preset name or prompt."""

    type: Literal["text"]
    text: str


ContentPart = Annotated[ImagePart | TextPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """One chat message. One ``user`` message carries the work: one image_url part, and optionally
    a text part with a preset name or a prompt."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    include_usage: bool = False


class VllmXargs(BaseModel):
    """The per-request repetition knobs vLLM's DeepSeek-OCR recipe passes as ``vllm_xargs``."""

    model_config = ConfigDict(extra="forbid")

    ngram_size: int | None = Field(None, ge=0)
    window_size: int | None = Field(None, ge=1)
    whitelist_token_ids: list[int] | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request as this route reads it, plus dsocr's extra fields.

    Every OpenAI parameter is declared: those the route honours, those that change nothing in
    the reading (``user``, ``metadata`` …), and those it cannot honour, which are refused
    (:func:`refuse_unsupported`) unless they carry their no-op value. A field OpenAI does not
    define either is ignored with a logged warning, as vLLM does.
    """

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # Accepted and pinned: OCR always decodes greedily (see the module docstring).
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    # Bookkeeping that does not change the reading: accepted, without effect.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    parallel_tool_calls: bool | None = None
    # Refused unless they hold their no-op value (see ``_UNSUPPORTED``). Typed as loosely as
    # OpenAI allows, so that the refusal, not a type error, is what a client reads.
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    # vLLM's extra sampling parameters, refused the same way.
    skip_special_tokens: bool | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    bad_words: list[str] | None = None
    allowed_token_ids: list[int] | None = None
    prompt_logprobs: int | None = None
    use_beam_search: bool | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    # dsocr / vLLM extras (``extra_body`` in the OpenAI client).
    ngram_size: int | None = Field(None, ge=0)
    window_size: int | None = Field(None, ge=1)
    vllm_xargs: VllmXargs | None = None
    mode: str = "gundam"


@dataclass(frozen=True, slots=True)
class _Unsupported:
    """A parameter the route cannot honour: the values that ask for nothing, and why the rest fail."""

    name: str
    no_ops: tuple[object, ...]
    why: str


_NO_TOOLS = "DeepSeek-OCR does not call tools"
_NOT_REASONING = "DeepSeek-OCR is not a reasoning model"
_TEXT_ONLY = "the route answers text only"
_GREEDY = (
    "decoding is greedy (temperature 0), so there is nothing to sample or seed: "
    "the same image and prompt give the same reading"
)
_FREE_FORM = 'the reading is the model\'s own markdown or text; only {"type": "text"} is accepted'
_NO_LOGPROBS = "the route returns no token log-probabilities"
_ONE_READING = "decoding is greedy, so every choice would be the same reading"
_NO_BIAS = "the route does not restrict or bias tokens"
_NO_STOP = "the reading ends at the end of the page or at max_tokens; cut the text on the client"
_REPETITION = (
    "repetition is controlled by the no-repeat n-gram rule instead "
    '(extra_body={"vllm_xargs": {"ngram_size": ..., "window_size": ...}})'
)
# Checked in this order; the first one set is named. ``None`` (not sent) is always fine.
_UNSUPPORTED = (
    _Unsupported("n", (1,), f"only n=1: {_ONE_READING}"),
    _Unsupported("stop", ("", []), _NO_STOP),
    _Unsupported("logprobs", (False,), _NO_LOGPROBS),
    _Unsupported("top_logprobs", (0,), _NO_LOGPROBS),
    _Unsupported("response_format", ({"type": "text"},), _FREE_FORM),
    _Unsupported("tools", ([],), _NO_TOOLS),
    _Unsupported("tool_choice", ("none",), _NO_TOOLS),
    _Unsupported("functions", ([],), _NO_TOOLS),
    _Unsupported("function_call", ("none",), _NO_TOOLS),
    _Unsupported("seed", (), _GREEDY),
    _Unsupported("frequency_penalty", (0,), _REPETITION),
    _Unsupported("presence_penalty", (0,), _REPETITION),
    _Unsupported("logit_bias", ({},), _NO_BIAS),
    _Unsupported("reasoning_effort", (), _NOT_REASONING),
    _Unsupported("verbosity", (), _NOT_REASONING),
    _Unsupported("modalities", (["text"],), _TEXT_ONLY),
    _Unsupported("audio", (), _TEXT_ONLY),
    _Unsupported("prediction", (), "predicted outputs are not implemented"),
    _Unsupported("web_search_options", (), "the route does not search the web"),
    _Unsupported(
        "skip_special_tokens",
        (False,),
        "only false: the grounding tags (<|ref|>…<|det|>) are part of the OCR result "
        "(strip them on the client)",
    ),
    # vLLM's extras; the no-op values are the defaults of vLLM's SamplingParams.
    _Unsupported("top_k", (0, -1), _GREEDY),
    _Unsupported("min_p", (0,), _GREEDY),
    _Unsupported("repetition_penalty", (1,), _REPETITION),
    _Unsupported("stop_token_ids", ([],), _NO_STOP),
    _Unsupported("min_tokens", (0,), _NO_STOP),
    _Unsupported("ignore_eos", (False,), _NO_STOP),
    _Unsupported("bad_words", ([],), _NO_BIAS),
    _Unsupported("allowed_token_ids", (), _NO_BIAS),
    _Unsupported("prompt_logprobs", (), _NO_LOGPROBS),
    _Unsupported("use_beam_search", (False,), "the route decodes greedily, as the official scripts do"),
    _Unsupported("structured_outputs", (), _FREE_FORM),
    _Unsupported("guided_json", (), _FREE_FORM),
    _Unsupported("guided_regex", (), _FREE_FORM),
    _Unsupported("guided_choice", (), _FREE_FORM),
    _Unsupported("guided_grammar", (), _FREE_FORM),
)


def refuse_unsupported(body: ChatCompletionRequest) -> None:
    """``InvalidInput`` naming the first parameter the route cannot honour, with what it supports."""
    for parameter in _UNSUPPORTED:
        value = getattr(body, parameter.name)
        if value is not None and value not in parameter.no_ops:
            raise InvalidInput(f"{parameter.name} is not supported: {parameter.why}.", field=parameter.name)


class EnforcedSampling(BaseModel):
    """dsocr's addition to a model card: the sampling the server enforces for OCR."""

    temperature: float = 0.0
    top_p: float = 1.0
    skip_special_tokens: bool = False
    ngram_size: int
    window_size: int
    max_tokens_limit: int


class ModelPermission(BaseModel):
    """vLLM's ``permission`` entry, saying what the route allows: no sampling, no log-probabilities."""

    id: str
    object: Literal["model_permission"] = "model_permission"
    created: int
    allow_create_engine: bool = False
    allow_sampling: bool = False
    allow_logprobs: bool = False
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(BaseModel):
    """vLLM's model card: OpenAI's model object plus ``root``, ``parent``, ``max_model_len`` …"""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = _OWNER
    root: str | None
    parent: str | None = None
    max_model_len: int = Field(description="The configured context length (DSOCR_ENGINE__MAX_MODEL_LEN).")
    permission: list[ModelPermission]
    dsocr: EnforcedSampling


class ModelList(BaseModel):
    """``GET /v1/models``: OpenAI's list shape."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------- translation (pure)


def _user_content(messages: list[ChatMessage]) -> tuple[int, list[ImagePart | TextPart]]:
    user_index: int | None = None
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if message.role in ("system", "developer"):
            if isinstance(message.content, str) and not message.content.strip():
                continue
            if message.content is None or message.content == []:
                continue
            raise InvalidInput(
                "DeepSeek-OCR has no system prompt; put the instruction in the user message's text part.",
                field=f"{field}.content",
            )
        if message.role != "user":
            raise InvalidInput(
                f"{message.role!r} messages are not supported: OCR takes one user message "
                "with one image (no conversation history).",
                field=f"{field}.role",
            )
        if user_index is not None:
            raise InvalidInput(
                "Send exactly one user message (one image per request).",
                field=f"{field}",
            )
        user_index = index
    if user_index is None:
        raise InvalidInput("No user message: send one user message with an image_url part.", field="messages")
    content = messages[user_index].content
    if content is None or isinstance(content, str):
        raise InvalidInput(
            "The user message needs a list content with one image_url part "
            '([{"type": "image_url", ...}, {"type": "text", "text": "document"}]).',
            field=f"messages[{user_index}].content",
        )
    return user_index, list(content)


def to_ocr_request(
    body: ChatCompletionRequest, *, settings: Settings, request_id: str | None, cache_scope: str | None = None
) -> OcrRequest:
    """Validate an OpenAI chat request and translate it; raises ``InvalidInput`` naming the field.

    ``cache_scope``: see :func:`dsocr.request.build_request`."""
    route_model(body.model, settings.engine)  # an unknown model is named before anything else
    refuse_unsupported(body)
    index, parts = _user_content(body.messages)
    images = [(i, part) for i, part in enumerate(parts) if isinstance(part, ImagePart)]
    texts = [(i, part) for i, part in enumerate(parts) if isinstance(part, TextPart)]
    content_field = f"messages[{index}].content"
    if len(images) != 1:
        raise InvalidInput(
            f"The user message has {len(images)} image_url parts; send exactly one image per request.",
            field=content_field,
        )
    image_index, image_part = images[0]
    image_field = f"{content_field}[{image_index}].image_url.url"
    text = "\n".join(part.text for _, part in texts).strip()
    xargs = body.vllm_xargs or VllmXargs()
    both = body.max_completion_tokens is not None and body.max_tokens is not None
    return build_request(
        settings,
        source=source_of(image_part.image_url.url, kind="url", field=image_field),
        request_id=request_id,
        prompt=text or None,
        prompt_field=f"{content_field}[{texts[0][0]}].text" if texts else content_field,
        mode=body.mode,
        model=body.model,
        outputs=(),
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        max_tokens_field="max_completion_tokens" if both or body.max_tokens is None else "max_tokens",
        ngram_size=xargs.ngram_size if xargs.ngram_size is not None else body.ngram_size,
        ngram_window=xargs.window_size if xargs.window_size is not None else body.window_size,
        whitelist_token_ids=xargs.whitelist_token_ids,
        single_image=True,
        stream="text" if body.stream else "pages",
        cache_scope=cache_scope,
    )


# ---------------------------------------------------------------- routes


def _model_card(name: str, settings: Settings) -> ModelCard:
    primary = model_name(settings.engine)
    ngram_size, window_size = ngram_defaults(
        settings.engine, model_profile(None if name == primary else name, settings.engine)
    )
    return ModelCard(
        id=name,
        created=_STARTED,
        # What the name serves: the default model's HF id or directory, or the extra model itself.
        root=settings.engine.model if name == primary else name,
        max_model_len=settings.engine.max_model_len,
        # Stable, so that listing and retrieving a model give the same card.
        permission=[
            ModelPermission(id=f"modelperm-{uuid.uuid5(uuid.NAMESPACE_URL, name).hex}", created=_STARTED)
        ],
        dsocr=EnforcedSampling(
            ngram_size=ngram_size,
            window_size=window_size,
            max_tokens_limit=settings.limits.max_tokens,
        ),
    )


@router.get("/v1/models", dependencies=[Depends(require_api_key)], responses=error_responses(401, 503))
async def list_models(state: Annotated[AppState, Depends(app_state)]) -> ModelList:
    """The served models as vLLM lists them, each with the sampling the server enforces."""
    return ModelList(
        data=[_model_card(name, state.settings) for name in served_model_names(state.settings.engine)]
    )


@router.get(
    # ``:path``: served ids hold slashes (``deepseek-ai/DeepSeek-OCR``).
    "/v1/models/{model:path}",
    dependencies=[Depends(require_api_key)],
    responses=error_responses(401, 404, 503, descriptions={404: "No model this server serves has that id."}),
)
async def retrieve_model(
    model: Annotated[
        str,
        Path(
            description="A served model's id, as GET /v1/models lists it (slashes included).",
            openapi_examples={"default model": {"value": CHAT_REQUEST_EXAMPLE["model"]}},
        ),
    ],
    state: Annotated[AppState, Depends(app_state)],
) -> ModelCard:
    """One served model's card; any name the chat route accepts for it finds it."""
    settings = state.settings
    routed = route_model(model, settings.engine)
    return _model_card(model_name(settings.engine) if routed is None else routed, settings)


@router.post(
    "/v1/chat/completions",
    dependencies=[Depends(require_api_key)],
    response_model=None,
    openapi_extra={"requestBody": {"content": {"application/json": {"example": CHAT_REQUEST_EXAMPLE}}}},
    responses={
        200: {"content": {"text/event-stream": {}}, "headers": CACHE_HEADER_DOC},
        **error_responses(
            400,
            401,
            404,
            413,
            429,
            500,
            503,
            504,
            descriptions={
                400: "Any invalid request, as OpenAI clients expect; `code` says which "
                "(validation_error, undecodable_input, unsupported_media_type, input_too_large, …). "
                "A parameter the route cannot honour (stop, logprobs, response_format, tools, seed, "
                "n > 1 …) is `invalid_input` with `param` naming it.",
                413: "The request body is over the size limit.",
            },
        ),
    },
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    state: Annotated[AppState, Depends(app_state)],
    scope: Annotated[str, Depends(tenant)],
) -> Response:
    """OCR one image, answered as an OpenAI chat completion (or a stream of chunks)."""
    if body.model_extra:
        # vLLM's behaviour: a field the protocol does not define is ignored, and the log says so
        # (the names quoted, a few at most: they are the client's text).
        ignored = sorted(body.model_extra)
        logger.warning("%d field(s) in the request ignored: %.300r", len(ignored), ignored)
    ocr_request = to_ocr_request(
        body, settings=state.settings, request_id=request_id_of(request), cache_scope=scope
    )
    pipeline = await ready_pipeline(state)
    completion_id = f"chatcmpl-{ocr_request.request_id}"
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    try:
        run = await start_run(request, pipeline, ocr_request)
        if body.stream:
            try:
                # Read up to the first text (or the page's end) before answering, so that an early
                # failure (a deadline, an engine error) gets a real status, not a 200 stream.
                events = run.events()
                first = await _first_output(request, events)
            except BaseException:
                await run.aclose()
                raise
            chunks = _chunks(first, events, completion_id=completion_id, run=run, include_usage=include_usage)
            return stream_response(
                run,
                chunks,
                metrics=state.metrics,
                error_event=lambda exc: _sse(dsocr_error_body(exc, ocr_request.request_id)) + _DONE,
            )
        results = await collect(request, run)
    except ClientGone:
        return client_gone_response()
    result = results[0]
    assert result.parsed is not None  # an image's failure is raised, not returned
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ocr_request.public_model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.parsed.raw},
                    "logprobs": None,
                    "finish_reason": _FINISH_REASONS[result.finish_reason or "stop"],
                }
            ],
            "usage": _usage(result.usage),
        },
        headers=cache_headers(results),
    )


# ---------------------------------------------------------------- streaming

_DONE = b"data: [DONE]\n\n"


async def _first_output(request: Request, events: AsyncGenerator[PageEvent, None]) -> list[PageEvent]:
    """The run's events up to its first text delta or its result (the client leaving stops it)."""

    async def read() -> list[PageEvent]:
        seen: list[PageEvent] = []
        async for event in events:
            seen.append(event)
            if isinstance(event, TextDelta | PageResult):
                break
        return seen

    return await watching_disconnect(request, read())


async def _chunks(
    first: list[PageEvent],
    events: AsyncGenerator[PageEvent, None],
    *,
    completion_id: str,
    run: Run,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """OpenAI's chunk sequence: role, content deltas, finish (+ usage chunk), ``[DONE]``."""
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": run.request.public_model,
    }
    usage_field: dict[str, None] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [choice], **usage_field})

    async def all_events() -> AsyncIterator[PageEvent]:
        for event in first:
            yield event
        async for event in events:
            yield event

    yield chunk({"role": "assistant", "content": ""})
    async with aclosing(events):
        async for event in all_events():
            if isinstance(event, TextDelta):
                yield chunk({"content": event.text})
            elif isinstance(event, PageResult):
                yield chunk({}, _FINISH_REASONS[event.finish_reason or "stop"])
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(event.usage)})
    yield _DONE


def _sse(payload: object) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        # Not an OpenAI field: how many of the prompt tokens the image took.
        "prompt_tokens_details": {"cached_tokens": 0, "image_tokens": usage.vision_tokens},
    }
