"""Output formats: one registry, and the page and document JSON every front end answers with.

A format is a module with an :class:`~dsocr.outputs.base.Output` and one entry in
:data:`OUTPUTS`. Front ends look formats up here and call what each offers; none of them branches
on a format's name. The JSON shapes are built here only: :func:`page_json` for a page (the same
on ``/v1/ocr``, in its event stream, in ``/predict``'s typed additions, in ``dsocr ocr``'s JSON
and in ``dsocr batch``'s page files) and :func:`document_json` for a document.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dsocr.errors import InvalidInput, error_class
from dsocr.grounding import parse
from dsocr.outputs import (
    alto,
    blocks,
    crops,
    hocr,
    html,
    json_file,
    layout_pdf,
    markdown,
    raw,
    searchable_pdf,
    text,
    truss,
    visualization,
)
from dsocr.outputs.base import FileContext, Output, RenderContext
from dsocr.results import PageResult, PageTimings, Usage

if TYPE_CHECKING:
    from PIL import Image

    from dsocr.types import ParsedOutput

__all__ = [
    "DEFAULT_OUTPUTS",
    "FILE_FORMATS",
    "OUTPUTS",
    "SELECTABLE",
    "FileContext",
    "Output",
    "RenderContext",
    "check_outputs",
    "document_json",
    "draw",
    "file_output",
    "page_error_json",
    "page_from_json",
    "page_json",
    "pixel_weight",
    "timings_json",
    "usage_json",
    "with_uses",
]

OUTPUTS: Mapping[str, Output] = MappingProxyType(
    {
        output.name: output
        for output in (
            markdown.OUTPUT,
            text.OUTPUT,
            blocks.OUTPUT,
            raw.OUTPUT,
            crops.OUTPUT,
            visualization.OUTPUT,
            truss.OUTPUT,
            json_file.OUTPUT,
            layout_pdf.OUTPUT,
            hocr.OUTPUT,
            alto.OUTPUT,
            html.OUTPUT,
            searchable_pdf.OUTPUT,
        )
    }
)
# What a request may list in ``outputs``, in the registry's order.
SELECTABLE: tuple[str, ...] = tuple(name for name, output in OUTPUTS.items() if output.selectable)
# What ``dsocr ocr --format`` writes, by the file suffix users know ("md") and by name; a name
# wins over another format's suffix ("pdf" is the searchable PDF, not the layout PDF).
FILE_FORMATS: Mapping[str, Output] = MappingProxyType(
    {
        **{output.suffix.lstrip("."): output for output in OUTPUTS.values() if output.file is not None},
        **{name: output for name, output in OUTPUTS.items() if output.file is not None},
    }
)
DEFAULT_OUTPUTS: tuple[str, ...] = ("markdown", "blocks")


def check_outputs(names: Iterable[str], *, field: str = "outputs") -> frozenset[str]:
    """The names as a set, each a selectable format; else ``InvalidInput`` listing the choices."""
    chosen = frozenset(names)
    for name in sorted(chosen):
        if name not in SELECTABLE:
            raise InvalidInput(f"unknown output {name!r}; choose from {', '.join(SELECTABLE)}", field=field)
    return chosen


def file_output(name: str, *, field: str = "format") -> Output:
    """The format that writes ``name`` files (``md``, ``txt``, ``json``, ``pdf`` …)."""
    output = FILE_FORMATS.get(name)
    if output is None:
        raise InvalidInput(
            f"unknown file format {name!r}; choose from {', '.join(sorted(FILE_FORMATS))}", field=field
        )
    return output


def with_uses(names: Iterable[str]) -> frozenset[str]:
    """``names`` and the formats whose drawings they read (``html`` reads ``crops``)."""
    chosen = set(names)
    for name in list(chosen):
        output = OUTPUTS.get(name)
        if output is not None:
            chosen.update(output.uses)
    return frozenset(chosen)


def pixel_weight(names: Collection[str]) -> int:
    """A page's cost against the pixel budget, in multiples of its pixel count, with ``names`` drawn."""
    return 1 + sum(OUTPUTS[name].pixel_cost for name in with_uses(names) if name in OUTPUTS)


def draw(image: Image.Image, parsed: ParsedOutput, names: Collection[str]) -> dict[str, Any]:
    """What the named formats compute from the page image (blocking: a worker thread's job)."""
    drawn: dict[str, Any] = {}
    for name in sorted(with_uses(names)):
        output = OUTPUTS.get(name)
        if output is not None and output.draw is not None:
            drawn[name] = output.draw(image, parsed)
    return drawn


def usage_json(usage: Usage) -> dict[str, int]:
    """Token counts as JSON; ``vision_tokens`` is the part of ``prompt_tokens`` the image took."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "vision_tokens": usage.vision_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def timings_json(result: PageResult) -> dict[str, float | None]:
    """A page's timings in seconds, rounded to the microsecond."""
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


def page_error_json(result: PageResult) -> dict[str, Any] | None:
    """A failed page's error, with the fields of the HTTP error envelope."""
    error = result.error
    if error is None:
        return None
    return {"type": error.code, "code": error.code, "message": error.message, "field": error.field}


def page_json(result: PageResult, names: Collection[str], context: RenderContext) -> dict[str, Any]:
    """One page as JSON: its number, state and accounting, and the named formats' fields."""
    out: dict[str, Any] = {
        "page": result.page,
        "ok": result.ok,
        "request_id": result.request_id,
        "image_size": list(result.image_size) if result.image_size is not None else None,
    }
    if result.parsed is not None:
        for name in OUTPUTS:
            output = OUTPUTS[name]
            if name in names and output.page is not None and output.selectable:
                out[name] = output.page(result, context)
    out["usage"] = usage_json(result.usage)
    out["finish_reason"] = result.finish_reason
    out["repetitive"] = result.repetitive
    out["repetition_score"] = result.repetition_score
    out["warnings"] = list(result.warnings)
    out["timings"] = timings_json(result)
    out["cached"] = result.cached is True
    out["error"] = page_error_json(result)
    return out


def document_json(
    results: Sequence[PageResult], names: Collection[str], context: RenderContext
) -> dict[str, Any]:
    """A document as JSON: what was run, the named formats' document fields, the pages, usage."""
    total = Usage()
    for result in results:
        total = total + result.usage
    body: dict[str, Any] = {
        "request_id": context.request_id,
        "model": context.model,
        "prompt": context.prompt,
        "mode": context.mode,
        "kind": context.kind,
        "page_count": len(results),
        "failed_pages": [r.page for r in results if not r.ok],
    }
    for name, output in OUTPUTS.items():
        if name in names and output.document is not None:
            body[name] = output.document(results)
    body["pages"] = [page_json(r, names, context) for r in results]
    body["usage"] = usage_json(total)
    return body


def page_from_json(data: Mapping[str, Any], *, prompt: str) -> PageResult:
    """The page result that :func:`page_json` rendered, read back (a stored job page, a remote
    server's answer). The page must have been rendered with ``raw``: the rest of the parse is
    redone from it, exactly as the pipeline did; what formats drew from the image is their field.
    """
    error = data.get("error")
    usage = data.get("usage") or {}
    timings = data.get("timings") or {}
    size = data.get("image_size")
    parsed = None
    if error is None:
        if size is None or not isinstance(data.get("raw"), str):
            raise ValueError(f"page {data.get('page')} has no raw output to read back")
        parsed = parse(data["raw"], width=size[0], height=size[1], prompt=prompt)
    drawn = {
        name: tuple(data[name]) if isinstance(data[name], list) else data[name]
        for name, output in OUTPUTS.items()
        if output.draw is not None and data.get(name) is not None
    }
    return PageResult(
        page=int(data["page"]),
        request_id=str(data.get("request_id") or ""),
        parsed=parsed,
        error=None
        if error is None
        else error_class(error.get("code", ""))(error.get("message", ""), field=error.get("field")),
        image_size=None if size is None else (int(size[0]), int(size[1])),
        usage=Usage(
            prompt_tokens=usage.get("prompt_tokens", 0),
            vision_tokens=usage.get("vision_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
        ),
        finish_reason=data.get("finish_reason"),
        repetition_score=data.get("repetition_score"),
        repetitive=bool(data.get("repetitive", False)),
        warnings=tuple(data.get("warnings") or ()),
        timings=PageTimings(**{k: v for k, v in timings.items() if k in PageTimings.__dataclass_fields__}),
        drawn=drawn,
    )
