"""``crops``: the page's figures cut out, as base64 PNGs in the order of the markdown's links."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsocr import grounding
from dsocr.outputs.base import Output, RenderContext
from dsocr.outputs.png import png_base64

if TYPE_CHECKING:
    from PIL import Image

    from dsocr.results import PageResult
    from dsocr.types import ParsedOutput

__all__ = ["OUTPUT"]


def _draw(image: Image.Image, parsed: ParsedOutput) -> tuple[str, ...]:
    return tuple(png_base64(crop) for crop in grounding.crops(image, parsed))


def _page(result: PageResult, context: RenderContext) -> list[str] | None:
    drawn: tuple[str, ...] | None = result.drawn.get("crops")
    return None if drawn is None else list(drawn)


OUTPUT = Output(
    name="crops",
    description="Figure crops as base64 PNGs, in the order the markdown links them.",
    page=_page,
    draw=_draw,
    # Crops copy at most the page once more before they are encoded.
    pixel_cost=1,
)
