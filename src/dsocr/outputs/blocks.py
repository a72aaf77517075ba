"""``blocks``: the page's layout blocks (label, text, boxes in the model's 0-999 grid and in pixels)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsocr.grounding import blocks_to_json
from dsocr.outputs.base import Output, RenderContext

if TYPE_CHECKING:
    from dsocr.results import PageResult

__all__ = ["OUTPUT"]


def _page(result: PageResult, context: RenderContext) -> list[dict[str, Any]] | None:
    return blocks_to_json(result.parsed) if result.parsed is not None else None


OUTPUT = Output(
    name="blocks",
    description="Layout blocks with labels and boxes (grid and pixels).",
    page=_page,
)
