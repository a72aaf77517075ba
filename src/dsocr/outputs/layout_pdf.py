"""``layout-pdf``: one annotated page per page, boxes and labels drawn, as the official
``<name>_layouts.pdf`` (a file)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from dsocr.errors import InvalidInput
from dsocr.outputs.base import FileContext, Output
from dsocr.render.overlay import layout_pdf

if TYPE_CHECKING:
    from PIL import Image

    from dsocr.results import PageResult
    from dsocr.types import ParsedOutput

__all__ = ["OUTPUT"]


def _file(results: Sequence[PageResult], context: FileContext) -> bytes:
    page_image = context.page_image
    if page_image is None:
        raise InvalidInput("a layout PDF needs the page images", field="format")

    def annotated() -> Iterator[tuple[Image.Image, ParsedOutput]]:
        for result in results:
            if result.parsed is not None:
                yield page_image(result.page), result.parsed

    return layout_pdf(annotated())


OUTPUT = Output(
    name="layout-pdf",
    description="A PDF of the pages with their boxes drawn.",
    file=_file,
    suffix=".pdf",
    media_type="application/pdf",
    selectable=False,
)
