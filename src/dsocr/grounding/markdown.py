"""Blocks → clean markdown, and markdown → plain text.

Markdown follows the official post-processing (§5.4), done span-wise rather than with
``str.replace`` so duplicate tags and multi-box image blocks stay correct:

- grounding tags are gone; each block contributes its content, blocks are separated by one
  blank line and runs of blank lines collapse to one;
- every box of an ``image`` block becomes one link ``![](images/{i}.png)``, where ``i`` counts
  image boxes over the page, so link ``i`` is always crop ``i`` (the official code numbers crops
  per box but links per block, and they diverge);
- ``\\coloneqq`` → ``:=`` and ``\\eqqcolon`` → ``=:`` (as the official scripts do: markdown
  renderers' KaTeX/MathJax builds often lack these macros);
- ``<center>``/``</center>`` wrappers (the model puts them around captions) are removed and their
  content kept: markdown has no centring, GitHub drops the tag, and the block label already says
  it is a caption. This is what the official OmniDocBench eval script does.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

__all__ = ["clean_markdown_text", "image_link", "join_markdown", "markdown_to_text"]

# Exact lowercase tags, as the model writes them and the official eval script removes them.
_CENTER = re.compile(r"</?center>")
_BLANK_RUNS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.MULTILINE)
_IMAGE_LINK = re.compile(r"^[ \t]*!\[[^\]\n]*\]\([^)\n]*\)[ \t]*\n?", re.MULTILINE)
# Inline HTML the model uses in running text, without attributes: a looser pattern would eat
# LaTeX comparisons such as ``\(a<b\) and \(c>d\)``.
_INLINE_TAG = re.compile(r"</?(?:sup|sub|b|i|u|em|strong|br|span|p)\s*/?>", re.IGNORECASE)
_ROW_OPEN = re.compile(r"<tr\b[^>]*>", re.IGNORECASE)
_CELL_OPEN = re.compile(r"<t[dh]\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^<>]+>")
# Only ``**``: underscores are common in LaTeX subscripts, which plain text keeps as written.
# The body holds no "*", so each "**" scans only to the next star (linear on "**a **a **a ...").
_EMPHASIS = re.compile(r"\*\*([^\s*](?:[^*\n]*[^\s*])?)\*\*")


def image_link(crop_index: int) -> str:
    """The markdown link of crop ``crop_index`` (the file a front end writes it to)."""
    return f"![](images/{crop_index}.png)"


def clean_markdown_text(content: str) -> str:
    """Per-block cleanup: LaTeX macro rewrites and ``<center>`` removal."""
    if "\\" in content:
        content = content.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")
    if "center>" in content:
        content = _CENTER.sub("", content)
    return content.strip()


def join_markdown(parts: Iterable[str]) -> str:
    """Join block markdown with one blank line between blocks; collapse longer blank runs."""
    joined = "\n\n".join(part for part in parts if part)
    if "\n\n\n" in joined or "\n \n" in joined or "\n\t\n" in joined:
        joined = _BLANK_RUNS.sub("\n\n", joined)
    return joined


def _cell_text(cell: str) -> str:
    # A cell runs from its opening tag to its closing tag (or the next cell or row).
    cell = cell.split("</t", 1)[0]
    if "<" in cell:
        cell = _TAG.sub("", cell)
    if "&" in cell:
        cell = html.unescape(cell)
    return cell.strip()


def _tables_to_text(text: str) -> str:
    """Replace each ``<table>…</table>`` (lowercase, as the model writes it) by its rows."""
    out: list[str] = []
    pos = 0
    while (start := text.find("<table", pos)) >= 0:
        # Search only as far as the next "<table": looping output ("<table><table>…") stays linear.
        next_open = text.find("<table", start + 6)
        limit = next_open if next_open >= 0 else len(text)
        body_start = text.find(">", start, limit) + 1
        end = text.find("</table>", body_start, limit) if body_start else -1
        # No closing tag before the next table (or at all): leave this opening as written.
        if end < 0:
            out.append(text[pos : start + 6])
            pos = start + 6
            continue
        out.append(text[pos:start])
        out.append(_table_body_to_text(text[body_start:end]))
        pos = end + len("</table>")
    out.append(text[pos:])
    return "".join(out)


def _table_body_to_text(body: str) -> str:
    rows = []
    for row in _ROW_OPEN.split(body)[1:]:
        cells = [_cell_text(cell) for cell in _CELL_OPEN.split(row)[1:]]
        if cells:
            rows.append("\t".join(cells))
    return "\n".join(rows)


def markdown_to_text(markdown: str) -> str:
    """Readable plain text: headings without ``#``, image links dropped, HTML tables as
    tab-separated rows, inline tags (``<sup>``, ``<b>``…) and ``**bold**`` markers removed,
    LaTeX kept as written."""
    text = markdown
    if "<table" in text:
        text = _tables_to_text(text)
    if "#" in text:
        text = _HEADING.sub("", text)
    if "![" in text:
        text = _IMAGE_LINK.sub("", text)
    if "<" in text:
        text = _INLINE_TAG.sub("", text)
    if "**" in text:
        text = _EMPHASIS.sub(r"\1", text)
    if "\n\n\n" in text or "\n \n" in text or "\n\t\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()
