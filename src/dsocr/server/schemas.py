"""Native wire models (``/v1``) and the JSON shapes of results.

Request models validate once at the edge (``extra="forbid"``: a misspelt field is a 422 naming
it, not silently ignored). Response models document the shapes in the OpenAPI schema; the
routes build the same dicts with :func:`page_json` and :func:`document_json`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dsocr import grounding
from dsocr.errors import DsocrError, InvalidInput
from dsocr.grounding.markdown import join_markdown
from dsocr.pipeline import OUTPUT_KINDS, OutputKind, PageResult, Usage
from dsocr.service import timings_dict, usage_dict
from dsocr.types import Block

__all__ = [
    "DEFAULT_OUTPUTS",
    "OcrRequest",
    "OcrResponse",
    "PageOut",
    "PredictRequest",
    "UsageOut",
    "block_json",
    "document_json",
    "page_error_json",
    "page_json",
    "parse_outputs",
    "usage_json",
]

DEFAULT_OUTPUTS: tuple[OutputKind, ...] = ("markdown", "blocks")


class OcrRequest(BaseModel):
    """``POST /v1/ocr`` as JSON. Give exactly one source: ``image_url``, ``image_base64`` or ``path``.

    Multipart requests send the file as ``file`` and the other fields as form fields
    (``outputs`` comma-separated or repeated).
    """

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(None, description="http(s) URL of an image or PDF (SSRF-guarded).")
    image_base64: str | None = Field(None, description="Base64 or a data: URI of an image or PDF.")
    path: str | None = Field(None, description="Server-side path under DSOCR_LIMITS__LOCAL_PATH_ROOT.")
    pages: str | None = Field(None, description="PDF page selection, 1-based: '1-3,5,8-'.", max_length=1000)
    preset: str | None = Field(
        None, description="Prompt preset: document (default), ocr, free, figure, describe, locate."
    )
    prompt: str | None = Field(None, description="A free prompt instead of a preset.", max_length=20_000)
    target: str | None = Field(None, description="What to find, for the 'locate' preset.", max_length=2_000)
    mode: str = Field("gundam", description="Resolution mode: tiny, small, base, large, gundam.")
    model: str | None = Field(None, description="Served model to use (default: the first).")
    outputs: list[OutputKind] = Field(default_factory=lambda: list(DEFAULT_OUTPUTS))
    max_tokens: int | None = Field(None, ge=1, description="Output token limit per page.")
    stream: bool = Field(False, description="Answer as server-sent events (also: Accept: text/event-stream).")

    @model_validator(mode="after")
    def _one_source(self) -> OcrRequest:
        given = [name for name in ("image_url", "image_base64", "path") if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(f"send only one source; got {', '.join(given)}")
        return self


class PredictRequest(BaseModel):
    """``POST /predict``, the seed Truss contract (documentation only; the route reads the raw JSON)."""

    image_url: str | None = None
    image_base64: str | None = None
    image: str | None = Field(None, description="Base64 or data: URI (the seed also took raw bytes).")
    prompt: str | None = Field(None, examples=["Extract all text from this image. <image>"])


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
    usage: UsageOut
    finish_reason: str | None = None
    repetitive: bool = False
    repetition_score: float | None = None
    warnings: list[str] = Field(default_factory=list)
    timings: dict[str, float | None]
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
    pages: list[PageOut]
    usage: UsageOut


def usage_json(usage: Usage) -> dict[str, int]:
    """Usage totals as JSON."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "vision_tokens": usage.vision_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def block_json(block: Block) -> dict[str, Any]:
    """One block in the wire shape of ``grounding.blocks_to_json`` (for streamed ``block`` events)."""
    item: dict[str, Any] = {
        "index": block.index,
        "label": block.label,
        "text": block.text,
        "boxes": [list(box) for box in block.boxes],
        "boxes_px": [list(box) for box in block.boxes_px],
    }
    if block.crop_index is not None:
        item["crop_index"] = block.crop_index
    return item


def page_error_json(error: DsocrError) -> dict[str, Any]:
    """A per-page error: the same fields as the HTTP error envelope."""
    return {"type": error.code, "code": error.code, "message": error.message, "field": error.field}


def page_json(result: PageResult, outputs: frozenset[OutputKind]) -> dict[str, Any]:
    """The wire dict of one page with only the requested outputs."""
    out: dict[str, Any] = {
        "page": result.page,
        "ok": result.ok,
        "request_id": result.request_id,
        "image_size": list(result.image_size) if result.image_size is not None else None,
    }
    parsed = result.parsed
    if parsed is not None:
        if "markdown" in outputs:
            out["markdown"] = parsed.markdown
        if "text" in outputs:
            out["text"] = parsed.text
        if "raw" in outputs:
            out["raw"] = parsed.raw
        if "blocks" in outputs:
            out["blocks"] = grounding.blocks_to_json(parsed)
        if "crops" in outputs:
            out["crops"] = list(result.crops)
        if "visualization" in outputs:
            out["visualization"] = result.visualization
    out["usage"] = usage_dict(result)
    out["finish_reason"] = result.finish_reason
    out["repetitive"] = result.repetitive
    out["repetition_score"] = result.repetition_score
    out["warnings"] = list(result.warnings)
    out["timings"] = timings_dict(result)
    out["error"] = page_error_json(result.error) if result.error is not None else None
    return out


def document_json(
    results: list[PageResult],
    *,
    outputs: frozenset[OutputKind],
    request_id: str,
    model: str,
    prompt: str,
    mode: str,
    kind: Literal["image", "pdf"],
) -> dict[str, Any]:
    """The whole response: pages in order, document-level markdown/text joining them, usage totals."""
    total = Usage()
    for result in results:
        total = total + result.usage
    body: dict[str, Any] = {
        "request_id": request_id,
        "model": model,
        "prompt": prompt,
        "mode": mode,
        "kind": kind,
        "page_count": len(results),
        "failed_pages": [r.page for r in results if not r.ok],
    }
    if "markdown" in outputs:
        body["markdown"] = join_markdown(r.parsed.markdown for r in results if r.parsed is not None)
    if "text" in outputs:
        body["text"] = "\n\n".join(r.parsed.text for r in results if r.parsed is not None and r.parsed.text)
    body["pages"] = [page_json(r, outputs) for r in results]
    body["usage"] = usage_json(total)
    return body


def parse_outputs(values: list[str]) -> frozenset[OutputKind]:
    """Form values (``"markdown,blocks"`` or repeated fields) → output kinds; unknown ones are errors."""
    kinds: set[OutputKind] = set()
    for value in values:
        for item in value.split(","):
            name = item.strip()
            if not name:
                continue
            if name not in OUTPUT_KINDS:
                raise InvalidInput(
                    f"unknown output {name!r}; choose from {', '.join(OUTPUT_KINDS)}", field="outputs"
                )
            kinds.add(name)  # type: ignore[arg-type]
    return frozenset(kinds) if kinds else frozenset(DEFAULT_OUTPUTS)
