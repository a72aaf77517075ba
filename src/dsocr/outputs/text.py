"""``text``: plain text without markup; the document's pages separated by a blank line
(in a file, by form feeds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dsocr.outputs.base import FileContext, Output, RenderContext

if TYPE_CHECKING:
    from dsocr.results import PageResult

__all__ = ["OUTPUT"]


def _page(result: PageResult, context: RenderContext) -> str | None:
    return result.parsed.text if result.parsed is not None else None


def _document(results: Sequence[PageResult]) -> str:
    return "\n\n".join(r.parsed.text for r in results if r.parsed is not None and r.parsed.text)


def _file(results: Sequence[PageResult], context: FileContext) -> bytes:
    parts = [r.parsed.text.strip() if r.parsed is not None else "" for r in results]
    return ("\n\f\n".join(parts) + "\n").encode("utf-8")


OUTPUT = Output(
    name="text",
    description="Plain text of each page and of the document.",
    page=_page,
    document=_document,
    file=_file,
    suffix=".txt",
    media_type="text/plain; charset=utf-8",
)
