"""``raw``: the model's output as generated, grounding tags included."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsocr.outputs.base import Output, RenderContext

if TYPE_CHECKING:
    from dsocr.results import PageResult

__all__ = ["OUTPUT"]


def _page(result: PageResult, context: RenderContext) -> str | None:
    return result.parsed.raw if result.parsed is not None else None


OUTPUT = Output(name="raw", description="The model's raw output, grounding tags included.", page=_page)
