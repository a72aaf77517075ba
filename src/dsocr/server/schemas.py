"""Native wire models (``/v1``) and the JSON shapes of results.

Request models validate once at the edge (``extra="forbid"``: a misspelt field is a 422 naming
it, not silently ignored). Response models document the shapes in the OpenAPI schema; the
routes answer with the dicts :mod:`dsocr.outputs` builds, and every error body is an
:class:`ErrorEnvelope` (built by :mod:`dsocr.server.errors`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from dsocr.errors import InvalidInput
from dsocr.outputs import DEFAULT_OUTPUTS, SELECTABLE, check_outputs

__all__ = [
    "EXAMPLE_IMAGE",
    "ErrorDetail",
    "ErrorEnvelope",
    "JobList",
    "JobOut",
    "JobProgress",
    "JobRequest",
    "OcrRequest",
    "OcrResponse",
    "PageOut",
    "PredictRequest",
    "ReadyResponse",
    "UsageOut",
    "ocr_form_schema",
    "parse_outputs",
]


def _exactly_one(branches: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """JSON Schema for "exactly one of these fields is given", each branch saying what "given" is."""
    return {
        "oneOf": [
            {"required": [name], "properties": {name: given}} if given else {"required": [name]}
            for name, given in branches.items()
        ]
    }


# The server counts a source as given when it is a non-empty string (null and "" are absent).
# Documentation only: the routes' own checks decide.
_NON_EMPTY = {"type": "string", "minLength": 1}
_OCR_SOURCES = {"image_url": _NON_EMPTY, "image_base64": _NON_EMPTY, "path": _NON_EMPTY}
_PREDICT_SOURCES = {"image_url": _NON_EMPTY, "image_base64": _NON_EMPTY, "image": _NON_EMPTY}
# A 16×16 white PNG: /docs' "Try it out" and API testers send a request that succeeds.
EXAMPLE_IMAGE = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAAAAAA6mKC9AAAAEUlEQVR42mP8z4AKmBhGtAAAIBABH+35zCgAAAAASUVORK5CYII="
)


class ErrorDetail(BaseModel):
    """What went wrong. OpenAI clients read ``message``, ``type``, ``param`` and ``code``."""

    type: Literal["invalid_request_error", "authentication_error", "rate_limit_error", "server_error"]
    code: str = Field(description="dsocr's stable error code, e.g. input_too_large, validation_error.")
    message: str = Field(description="What was wrong and how to fix it.")
    field: str | None = Field(description="The request field at fault, if one is.")
    param: str | None = Field(description="The same as field, under the name OpenAI clients read.")
    request_id: str | None = Field(description="The request's id, also in the X-Request-Id header.")


class ErrorEnvelope(BaseModel):
    """Every error body: ``{"error": {...}}``."""

    error: ErrorDetail


class ReadyResponse(BaseModel):
    """``GET /ready``: ``ready`` (200), or ``unready`` with the reason (503)."""

    status: Literal["ready", "unready"]
    reason: str | None = Field(None, description="Why the engine is not ready (503 only).")
    engine: dict[str, Any] = Field(description="The engine's kind, model, modes and state.")


def _known_output(name: str) -> str:
    try:
        check_outputs((name,))
    except InvalidInput as exc:
        raise ValueError(exc.message) from None
    return name


class OcrRequest(BaseModel):
    """``POST /v1/ocr`` as JSON. Give exactly one source: ``image_url``, ``image_base64`` or ``path``.

    Multipart requests send the file as ``file`` and the other fields as form fields
    (``outputs`` comma-separated or repeated).
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one(_OCR_SOURCES))

    image_url: str | None = Field(None, description="http(s) URL of an image or PDF (SSRF-guarded).")
    image_base64: str | None = Field(
        None, description="Base64 or a data: URI of an image or PDF.", examples=[EXAMPLE_IMAGE]
    )
    path: str | None = Field(None, description="Server-side path under DSOCR_LIMITS__LOCAL_PATH_ROOT.")
    pages: str | None = Field(None, description="PDF page selection, 1-based: '1-3,5,8-'.", max_length=1000)
    preset: str | None = Field(
        None, description="Prompt preset: document (default), ocr, free, figure, describe, locate."
    )
    prompt: str | None = Field(
        None, description="A preset name or a free prompt (instead of preset).", max_length=20_000
    )
    target: str | None = Field(None, description="What to find, for the 'locate' preset.", max_length=2_000)
    mode: str = Field("gundam", description="Resolution mode: tiny, small, base, large, gundam.")
    model: str | None = Field(None, description="Served model to use (default: the first).")
    outputs: list[Annotated[str, AfterValidator(_known_output)]] = Field(
        default_factory=lambda: list(DEFAULT_OUTPUTS),
        json_schema_extra={"items": {"type": "string", "enum": list(SELECTABLE)}},
        description="What each page returns.",
    )
    max_tokens: int | None = Field(None, ge=1, description="Output token limit per page.")
    stream: bool = Field(False, description="Answer as server-sent events (also: Accept: text/event-stream).")


class JobRequest(OcrRequest):
    """``POST /v1/jobs``: the body of ``/v1/ocr`` (JSON or multipart), run in the background."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_exactly_one(_OCR_SOURCES))

    callback_url: str | None = Field(
        None,
        description="https URL POSTed (signed, Standard Webhooks) when the job ends; SSRF-guarded.",
        max_length=2_000,
    )


class JobProgress(BaseModel):
    """How far a job has got."""

    pages_total: int | None = Field(description="Pages the job reads; null until its input is opened.")
    pages_done: int = Field(description="Pages finished with a result.")
    pages_failed: int = Field(description="Pages finished with an error (named in the result).")


class JobOut(BaseModel):
    """A job: its state, progress and links. Times are Unix seconds."""

    id: str
    object: Literal["ocr.job"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    filename: str | None = Field(description="The input's file name, when it had one.")
    pages: list[int] | None = Field(
        description="The page numbers the job reads; null until its input is opened."
    )
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None = Field(description="When the finished job and its result are deleted.")
    progress: JobProgress
    error: dict[str, Any] | None = Field(description="Why the job failed: code, message, field.")
    callback: dict[str, Any] | None = Field(description="The callback URL and its delivery.")
    links: dict[str, str]
    deleted: bool | None = Field(None, description="DELETE of a finished job: it was deleted.")


class JobList(BaseModel):
    """``GET /v1/jobs``: the caller's jobs, newest first."""

    object: Literal["list"]
    data: list[JobOut]


class PredictRequest(BaseModel):
    """``POST /predict``, the seed Truss contract (documentation only; the route reads the raw JSON).

    Give exactly one source: ``image_url``, ``image_base64`` or ``image``.
    """

    model_config = ConfigDict(json_schema_extra=_exactly_one(_PREDICT_SOURCES))

    image_url: str | None = None
    image_base64: str | None = Field(None, examples=[EXAMPLE_IMAGE])
    image: str | None = Field(None, description="Base64 or data: URI (the seed also took raw bytes).")
    prompt: str | None = Field(
        None,
        description="A preset name (document, ocr, free …) or a free prompt.",
        examples=["Extract all text from this image. <image>"],
    )
    mode: str | None = Field(None, description="Resolution mode (default gundam); not in the seed.")


def _form_field(schema: dict[str, Any]) -> dict[str, Any]:
    # A form field is absent or a string, never null: keep the non-null alternative only.
    variants = [v for v in schema.get("anyOf", ()) if v != {"type": "null"}]
    if len(variants) != 1:
        return schema
    field = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    return {**field, **variants[0]}


def ocr_form_schema(model: type[OcrRequest] = OcrRequest) -> dict[str, Any]:
    """``POST /v1/ocr`` (or ``/v1/jobs``: ``model``) as multipart/form-data: its fields plus ``file``.

    ``outputs`` is comma-separated (``markdown,blocks``) or repeated; exactly one of ``file``,
    ``image_url``, ``image_base64`` and ``path`` is required.
    """
    json_schema = model.model_json_schema()
    properties: dict[str, Any] = {
        # As FastAPI documents an UploadFile in OpenAPI 3.1.
        "file": {
            "type": "string",
            "contentMediaType": "application/octet-stream",
            "description": "The image or PDF.",
        }
    }
    for name, schema in json_schema["properties"].items():
        properties[name] = _form_field(schema)
    kinds = "|".join(re.escape(kind) for kind in SELECTABLE)
    # parse_outputs: comma-separated names, blanks around them and empty items ignored.
    listed = {"type": "string", "pattern": rf"^[\s,]*(?:(?:{kinds})(?:\s*,[\s,]*|\s*$))*$"}
    properties["outputs"] = {
        "anyOf": [listed, {"type": "array", "items": listed}],
        "description": "Outputs, comma-separated or as repeated fields (default: markdown,blocks).",
    }
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        **_exactly_one({"file": {}, **_OCR_SOURCES}),
    }


class UsageOut(BaseModel):
    """Token counts; ``vision_tokens`` is part of ``prompt_tokens``."""

    prompt_tokens: int
    vision_tokens: int
    completion_tokens: int
    total_tokens: int


class PageOut(BaseModel):
    """One page. ``error`` is set (and the outputs are absent) when the page failed."""

    page: int
    ok: bool
    request_id: str
    image_size: list[int] | None = None
    markdown: str | None = None
    text: str | None = None
    raw: str | None = None
    blocks: list[dict[str, Any]] | None = None
    crops: list[str] | None = None
    visualization: str | None = None
    hocr: str | None = Field(None, description="The page as an hOCR document (outputs: hocr).")
    alto: str | None = Field(None, description="The page as an ALTO 4 document (outputs: alto).")
    html: str | None = Field(None, description="The page's markdown as sanitised HTML (outputs: html).")
    usage: UsageOut
    finish_reason: str | None = None
    repetitive: bool = False
    repetition_score: float | None = None
    warnings: list[str] = Field(default_factory=list)
    timings: dict[str, float | None]
    cached: bool = Field(
        False, description="The engine's output came from the result cache (X-Dsocr-Cache, docs/serving.md)."
    )
    error: dict[str, Any] | None = None


class OcrResponse(BaseModel):
    """The result of ``POST /v1/ocr`` (non-streaming)."""

    request_id: str
    model: str
    prompt: str
    mode: str
    kind: Literal["image", "pdf"]
    page_count: int
    failed_pages: list[int]
    markdown: str | None = None
    text: str | None = None
    hocr: str | None = Field(None, description="The document as hOCR (outputs: hocr).")
    alto: str | None = Field(None, description="The document as ALTO 4 XML (outputs: alto).")
    html: str | None = Field(None, description="The document as a standalone HTML page (outputs: html).")
    pages: list[PageOut]
    usage: UsageOut


def parse_outputs(values: list[str]) -> list[str]:
    """Form values (``"markdown,blocks"`` or repeated fields) → output names; unknown ones are errors."""
    names = [item.strip() for value in values for item in value.split(",") if item.strip()]
    return sorted(check_outputs(names)) if names else list(DEFAULT_OUTPUTS)
