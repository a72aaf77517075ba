"""``markdown``: the page's markdown; the document's pages joined."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from dsocr.grounding.markdown import join_markdown
from dsocr.outputs.base import FileContext, Output, RenderContext

if TYPE_CHECKING:
    from dsocr.results import PageResult

__all__ = ["OUTPUT", "crop_offsets", "relink_crops"]

# How the parser links a page's figure crops: images/<index>.png, numbered per page.
_CROP_LINK = re.compile(r"!\[([^\]\n]*)\]\(images/(\d+)\.png\)")
# Between pages in a markdown file.
_PAGE_RULE = "\n\n---\n\n"


def crop_offsets(results: Sequence[PageResult]) -> list[int]:
    """Where each page's crop numbers start, so crops are numbered over the whole document."""
    offsets: list[int] = []
    total = 0
    for result in results:
        offsets.append(total)
        if result.parsed is not None:
            total += len(result.parsed.crop_boxes_px)
    return offsets


def relink_crops(markdown: str, name: Callable[[int], str]) -> str:
    """Point the page's crop links at ``name(index)``, ``index`` being the page-local crop number."""
    return _CROP_LINK.sub(lambda m: f"![{m.group(1)}]({name(int(m.group(2)))})", markdown)


def _page(result: PageResult, context: RenderContext) -> str | None:
    return result.parsed.markdown if result.parsed is not None else None


def _document(results: Sequence[PageResult]) -> str:
    return join_markdown(r.parsed.markdown for r in results if r.parsed is not None)


def _file(results: Sequence[PageResult], context: FileContext) -> bytes:
    parts: list[str] = []
    for result, offset in zip(results, crop_offsets(results), strict=True):
        if result.parsed is None:
            parts.append(f"<!-- page {result.page} failed -->")
            continue
        markdown = result.parsed.markdown
        if offset or context.crops_link != "images":

            def link(index: int, offset: int = offset) -> str:
                return quote(f"{context.crops_link}/{index + offset}.png")

            markdown = relink_crops(markdown, link)
        parts.append(markdown.strip())
    return (_PAGE_RULE.join(parts) + "\n").encode("utf-8")


OUTPUT = Output(
    name="markdown",
    description="Markdown of each page (tables as HTML, figures linked), and of the whole document.",
    page=_page,
    document=_document,
    file=_file,
    suffix=".md",
    media_type="text/markdown; charset=utf-8",
)
