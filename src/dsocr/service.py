"""Request-level operations shared by the front ends (HTTP, CLI); no web framework types.

* :func:`predict` — the seed Truss server's ``/predict`` contract, byte for byte, plus typed
  additions under new keys.
* :func:`load_image_admitted` — one image, with a hook (the server's admission) between reading
  its header and decoding its pixels.
* :func:`check_page_range` — a page range is for PDFs only.
* :func:`sampling_options` — the engine sampling for a request, from settings and its own limits.

Everything raises :class:`~dsocr.errors.DsocrError` subclasses naming the field at fault.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from PIL import Image

from dsocr import grounding
from dsocr.engine.base import Engine, SamplingOptions
from dsocr.errors import InvalidInput, UnsupportedMediaType
from dsocr.inputs import Base64Source, BytesSource, Document, Source, UrlSource, load_image
from dsocr.inputs.formats import sniff_format
from dsocr.inputs.images import ImageHeader, decode_pixels, read_image_header
from dsocr.inputs.sources import RawInput, decode_base64, read_source
from dsocr.pipeline import PageResult, ocr_page
from dsocr.prompts import PRESETS, build_prompt, prompt_from_text
from dsocr.settings import EngineSettings, FetchSettings, LimitSettings, Settings

__all__ = [
    "PREDICT_SOURCE_FIELDS",
    "BeforeDecode",
    "check_page_range",
    "load_image_admitted",
    "model_name",
    "new_request_id",
    "predict",
    "predict_source",
    "sampling_options",
    "typed_page_fields",
]

# The seed's input fields, in the order it looked at them.
PREDICT_SOURCE_FIELDS = ("image_url", "image_base64", "image")
DEFAULT_MODE = "gundam"
_PDF_ADVICE = "send PDFs to POST /v1/ocr (one result per page)"

# Awaited with an image's (width, height) once its header is read, before any pixel is decoded:
# the server's admission, which may wait for room or refuse the request.
BeforeDecode = Callable[[tuple[int, int]], Awaitable[None]]


def new_request_id() -> str:
    """A fresh request id (uuid4 hex): unique across processes, so aborts hit the right request."""
    return uuid.uuid4().hex


def check_page_range(document: Document, pages: str | None) -> None:
    """The front ends' rule: a page range applies to PDFs only (an image has nothing to close)."""
    if pages is not None and document.kind != "pdf":
        raise InvalidInput("a page range applies to PDFs only; this input is an image", field="pages")


def sampling_options(
    engine_settings: EngineSettings, limits: LimitSettings, *, max_tokens: int | None = None
) -> SamplingOptions:
    """Sampling for one request: OCR-safe defaults, the configured n-gram rule, a bounded length."""
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise InvalidInput(
            f"max_tokens {max_tokens} is over the limit of {limits.max_tokens} (DSOCR_LIMITS__MAX_TOKENS)",
            field="max_tokens",
        )
    if max_tokens is not None and max_tokens < 1:
        raise InvalidInput("max_tokens must be at least 1", field="max_tokens")
    return SamplingOptions(
        max_tokens=max_tokens if max_tokens is not None else limits.max_tokens,
        ngram_size=engine_settings.ngram_size,
        ngram_window=engine_settings.ngram_window,
    )


def model_name(engine_settings: EngineSettings) -> str:
    """The one name of the served model on every route: the served name if set, else the model.

    Never the engine's own model (the CPU engine's recognizer, say): clients address the model
    by this name, whichever engine answers.
    """
    return engine_settings.served_model_name or engine_settings.model


def predict_source(payload: Mapping[str, Any]) -> Source:
    """The one image source of a ``/predict`` payload (exactly one of the seed's three fields).

    ``image_url`` is a URL, ``image_base64`` base64 or a data URI; ``image`` is base64 / a data
    URI over JSON, or raw bytes when a Python caller (Truss) passes them. Nothing is guessed from
    a string's length, unlike the seed.
    """
    given = [name for name in PREDICT_SOURCE_FIELDS if payload.get(name) not in (None, "")]
    if not given:
        raise InvalidInput("send one of image_url, image_base64 or image", field="image_url")
    if len(given) > 1:
        raise InvalidInput(f"send only one image source; got {', '.join(given)}", field=given[1])
    name = given[0]
    value = payload[name]
    if name == "image" and isinstance(value, bytes | bytearray):
        return BytesSource(bytes(value), field="image")
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, not {type(value).__name__}", field=name)
    if name == "image_url":
        return UrlSource(value, field=name)
    return Base64Source(value, field=name)


async def predict(
    payload: Mapping[str, Any],
    *,
    engine: Engine,
    settings: Settings,
    request_id: str | None = None,
    observe: Callable[[PageResult], None] | None = None,
    before_decode: BeforeDecode | None = None,
) -> dict[str, Any]:
    """Run the seed's ``/predict``: one image in, the seed's response dict out.

    Input: ``image_url`` | ``image_base64`` | ``image`` (exactly one) and an optional ``prompt``:
    a preset name (``"document"``, the default, ``"ocr"``, ``"free"`` …; echoed in ``prompt_used``
    as the preset's full prompt) or a free prompt (``"Extract all text from this image. <image>"``
    is normalised to ``<image>`` first for the model but echoed verbatim in ``prompt_used``).
    Output: the seed's keys (long form when the output has grounding refs, short form otherwise)
    plus ``blocks``, ``markdown``, ``usage``, ``finish_reason``, ``warnings``, ``timings`` and
    ``request_id``. Raises ``DsocrError`` on any failure, never
    returns an ``error`` key. The deadline is ``settings.limits.request_timeout_s``.
    ``observe`` receives the page result (metrics) before the response is built;
    ``before_decode`` is awaited with the image's size before its pixels are decoded.
    """
    if not isinstance(payload, Mapping):
        raise InvalidInput("the request body must be a JSON object", field=None)
    request_id = request_id or new_request_id()
    source = predict_source(payload)
    user_prompt = payload.get("prompt")
    if user_prompt is not None and not isinstance(user_prompt, str):
        raise InvalidInput(f"prompt must be a string, not {type(user_prompt).__name__}", field="prompt")
    if user_prompt is not None and not user_prompt.strip():
        user_prompt = None
    # A preset name means the preset here too, as on /v1/ocr, the chat route and the CLI. It is
    # echoed as the full prompt the model got; a free prompt is echoed verbatim, as the seed did.
    prompt = prompt_from_text(user_prompt) if user_prompt is not None else build_prompt()
    is_preset_name = user_prompt is not None and user_prompt.strip().lower() in PRESETS
    prompt_used = user_prompt if user_prompt is not None and not is_preset_name else prompt

    image = await load_image_admitted(
        source,
        limits=settings.limits,
        fetch=settings.fetch,
        pdf_advice=_PDF_ADVICE,
        before_decode=before_decode,
    )
    result = await ocr_page(
        engine,
        image,
        prompt=prompt,
        mode=DEFAULT_MODE,
        sampling=sampling_options(settings.engine, settings.limits),
        request_id=request_id,
        timeout_s=settings.limits.request_timeout_s,
    )
    if observe is not None:
        observe(result)
    assert result.parsed is not None
    response = grounding.legacy_fields(
        result.parsed, prompt=prompt_used, model_name=model_name(settings.engine)
    )
    response.update(typed_page_fields(result))
    response["request_id"] = request_id
    return response


async def load_image_admitted(
    source: Source,
    *,
    limits: LimitSettings,
    fetch: FetchSettings,
    pdf_advice: str,
    before_decode: BeforeDecode | None,
) -> Image.Image:
    """One image from ``source``, as ``load_image``, with ``before_decode`` awaited on its size
    between reading the header and decoding the pixels (which it may refuse by raising)."""
    if before_decode is None:
        return await load_image(source, limits=limits, fetch=fetch, pdf_advice=pdf_advice)
    if isinstance(source, Base64Source):
        raw, header = await asyncio.to_thread(_read_base64_header, source, limits, pdf_advice)
    else:
        raw = await read_source(source, limits=limits, fetch=fetch)
        header = await asyncio.to_thread(_read_header, raw, limits, pdf_advice)
    await before_decode(header.size)
    return await asyncio.to_thread(decode_pixels, raw.data, header, field=raw.field)


def _read_header(raw: RawInput, limits: LimitSettings, pdf_advice: str) -> ImageHeader:
    # A PDF is refused before pdfium sees it, as ``open_image`` does.
    if sniff_format(raw.data) == "PDF":
        raise UnsupportedMediaType(f"{raw.field} takes one image, not a PDF; {pdf_advice}", field=raw.field)
    return read_image_header(raw.data, max_pixels=limits.max_image_pixels, field=raw.field)


def _read_base64_header(
    source: Base64Source, limits: LimitSettings, pdf_advice: str
) -> tuple[RawInput, ImageHeader]:
    # One worker job for the base64 text and the header, as the inputs loaders do.
    raw = decode_base64(source.data, max_bytes=limits.max_upload_bytes, field=source.field)
    return raw, _read_header(raw, limits, pdf_advice)


def typed_page_fields(result: PageResult) -> dict[str, Any]:
    """The typed additions of a page (JSON-ready): blocks, markdown, usage, finish reason, …"""
    parsed = result.parsed
    return {
        "blocks": grounding.blocks_to_json(parsed) if parsed is not None else [],
        "markdown": parsed.markdown if parsed is not None else "",
        "usage": usage_dict(result),
        "finish_reason": result.finish_reason,
        "repetitive": result.repetitive,
        "warnings": list(result.warnings),
        "timings": timings_dict(result),
    }


def usage_dict(result: PageResult) -> dict[str, int]:
    """Token usage as JSON."""
    usage = result.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "vision_tokens": usage.vision_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def timings_dict(result: PageResult) -> dict[str, float | None]:
    """Page timings as JSON (seconds, rounded to the microsecond)."""
    t = result.timings

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 6)

    return {
        "load_s": r(t.load_s),
        "queue_s": r(t.queue_s),
        "first_token_s": r(t.first_token_s),
        "engine_s": r(t.engine_s),
        "post_s": r(t.post_s),
        "total_s": r(t.total_s),
    }
