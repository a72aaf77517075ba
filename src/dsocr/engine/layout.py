"""Recognised text lines → reading order → blocks → output in the shape DeepSeek-OCR uses (§5.1).

Pure functions shared by the engines that do not run the real model (the CPU engine and the fake):
they produce the same grammar the model does, so the parser, markdown, crops and overlays downstream
work unchanged.

* ``reading_order`` sorts line boxes per column with a recursive XY-cut: a full-height vertical gap
  splits columns (left to right); otherwise the lines are cut into horizontal strips (top to bottom)
  and consecutive strips that share a column gutter are regrouped before recursing, so a 2-column
  body under a full-width title reads column 1 entirely before column 2.
* ``group_blocks`` joins consecutive lines of one column into paragraph blocks, and marks short
  lines much taller than the page's median line as ``title`` (``# ``) or ``sub_title`` (``## ``).
* ``render_pieces`` writes the output for a prompt preset, one piece per block (the unit a stream
  yields). Boxes go on the model's 0–999 grid: ``round(px / W * 999)``, the inverse of the parser's
  ``int(v / 999 * W)``.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dsocr.types import Box

__all__ = [
    "LayoutBlock",
    "Line",
    "PixelBox",
    "det_tag",
    "group_blocks",
    "reading_order",
    "render_pieces",
    "to_grid",
]

# Heading detection: a block this much taller than the median line, and short, is a heading.
TITLE_HEIGHT_RATIO = 1.8
SUB_TITLE_HEIGHT_RATIO = 1.35
MAX_HEADING_CHARS = 120
# A column gutter must be at least this many median line heights wide (word gaps are narrower).
GUTTER_LINE_HEIGHTS = 0.8
# Lines of one paragraph are at most this many median line heights apart.
PARAGRAPH_GAP_LINE_HEIGHTS = 0.9
# ... and of similar height: detected boxes of one font vary by ~1.4× with ascenders and descenders.
PARAGRAPH_HEIGHT_RATIO = 1.5

PixelBox = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Line:
    """One recognised text line: its text, axis-aligned pixel box ``(x1, y1, x2, y2)`` and confidence."""

    text: str
    box: PixelBox
    score: float = 1.0

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


@dataclass(frozen=True, slots=True)
class LayoutBlock:
    """A paragraph or heading: consecutive lines of one column, with a DeepSeek-OCR label."""

    label: str  # "title", "sub_title" or "text"
    lines: tuple[Line, ...]

    @property
    def box(self) -> PixelBox:
        return _union(line.box for line in self.lines)

    @property
    def content(self) -> str:
        """The block's text as the model writes it: a markdown heading for titles, else one paragraph."""
        body = _join_lines([line.text for line in self.lines])
        if self.label == "title":
            return f"# {body}"
        if self.label == "sub_title":
            return f"## {body}"
        return body


def to_grid(box: PixelBox, size: tuple[int, int]) -> Box:
    """A pixel box on the model's 0–999 grid of an image of ``size`` (W, H), clamped and ordered."""
    width, height = size

    def scale(value: float, extent: int) -> int:
        return min(999, max(0, round(value / max(extent, 1) * 999)))

    x1, x2 = sorted((scale(box[0], width), scale(box[2], width)))
    y1, y2 = sorted((scale(box[1], height), scale(box[3], height)))
    return (x1, y1, x2, y2)


def det_tag(label: str, boxes: Sequence[Box]) -> str:
    """``<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>`` exactly as the model writes it."""
    coords = ", ".join(f"[{b[0]}, {b[1]}, {b[2]}, {b[3]}]" for b in boxes)
    return f"<|ref|>{label}<|/ref|><|det|>[{coords}]<|/det|>"


def reading_order(lines: Sequence[Line]) -> list[Line]:
    """The lines in reading order: columns left to right, top to bottom within each (XY-cut)."""
    if len(lines) <= 1:
        return list(lines)
    min_gutter = GUTTER_LINE_HEIGHTS * _median_height(lines)
    return _xy_cut(list(lines), min_gutter)


def group_blocks(ordered: Sequence[Line]) -> list[LayoutBlock]:
    """Group lines already in reading order into paragraph and heading blocks."""
    if not ordered:
        return []
    median = _median_height(ordered)
    groups: list[list[Line]] = [[ordered[0]]]
    for line in ordered[1:]:
        previous = groups[-1][-1]
        if _same_paragraph(previous, line, median):
            groups[-1].append(line)
        else:
            groups.append([line])
    return [LayoutBlock(label=_label_of(group, median), lines=tuple(group)) for group in groups]


def render_pieces(
    preset: str | None,
    lines: Sequence[Line],
    size: tuple[int, int],
    *,
    grounded: bool = False,
    target: str | None = None,
    to_output: Callable[[PixelBox], PixelBox] | None = None,
) -> list[str]:
    """The output for ``preset`` (a ``dsocr.prompts`` preset name), one piece per block or line.

    ``"".join(pieces)`` is the full text. ``document`` gives labelled paragraph/heading blocks,
    ``ocr`` one ``<|ref|>text<|/ref|>`` tag per line, ``locate`` one tag with the boxes of the lines
    containing ``target`` (case-insensitive; nothing when none does), and every other preset plain
    text in reading order, paragraphs separated by a blank line. A free prompt (``preset`` None)
    gets the ``ocr`` shape when ``grounded`` (it asked for ``<|grounding|>``), else plain text.

    ``lines`` are in the frame of an upright page; ``to_output`` maps their boxes onto the image
    the user sent (of ``size``) when that was turned before reading.
    """
    ordered = reading_order(lines)

    def grid(box: PixelBox) -> Box:
        return to_grid(to_output(box) if to_output is not None else box, size)

    if preset == "document":
        return [f"{det_tag(b.label, [grid(b.box)])}\n{b.content}\n\n" for b in group_blocks(ordered)]
    if preset == "ocr" or (preset is None and grounded):
        return [f"{det_tag(_clean(line.text), [grid(line.box)])}\n" for line in ordered]
    if preset == "locate":
        if target is None:
            return []
        wanted = _normalise(target)
        boxes = [grid(line.box) for line in ordered if wanted in _normalise(line.text)]
        return [det_tag(target, boxes)] if boxes else []
    blocks = group_blocks(ordered)
    return [
        f"{_join_lines([line.text for line in b.lines])}" + ("\n\n" if i < len(blocks) - 1 else "")
        for i, b in enumerate(blocks)
    ]


def _xy_cut(lines: list[Line], min_gutter: float) -> list[Line]:
    if len(lines) <= 1:
        return lines
    columns = _split_x(lines, min_gutter)
    if len(columns) > 1:
        return [line for column in columns for line in _xy_cut(column, min_gutter)]
    strips = _split_y(lines)
    if len(strips) == 1:
        # Lines overlapping both ways (no gap to cut): top-to-bottom, then left-to-right.
        return sorted(lines, key=lambda line: (line.box[1], line.box[0]))
    # Regroup consecutive strips while together they still have a column gutter: the rows of a
    # 2-column body then stay one group, which the next level splits into columns.
    groups: list[list[Line]] = [strips[0]]
    for strip in strips[1:]:
        candidate = groups[-1] + strip
        if len(_split_x(candidate, min_gutter)) > 1:
            groups[-1] = candidate
        else:
            groups.append(strip)
    return [line for group in groups for line in _xy_cut(group, min_gutter)]


def _split_x(lines: list[Line], min_gap: float) -> list[list[Line]]:
    """Split at vertical gaps at least ``min_gap`` wide that no line crosses, left to right."""
    ordered = sorted(lines, key=lambda line: line.box[0])
    groups: list[list[Line]] = [[ordered[0]]]
    right = ordered[0].box[2]
    for line in ordered[1:]:
        if line.box[0] - right >= min_gap:
            groups.append([line])
        else:
            groups[-1].append(line)
        right = max(right, line.box[2])
    return groups


def _split_y(lines: list[Line]) -> list[list[Line]]:
    """Split at horizontal gaps, top to bottom. Boxes are shrunk by a quarter of their height on each
    side first: detected line boxes are padded and neighbouring lines often overlap a little."""

    def core(line: Line) -> tuple[float, float]:
        pad = line.height / 4
        return line.box[1] + pad, line.box[3] - pad

    ordered = sorted(lines, key=lambda line: core(line)[0])
    groups: list[list[Line]] = [[ordered[0]]]
    bottom = core(ordered[0])[1]
    for line in ordered[1:]:
        top, low = core(line)
        if top > bottom:
            groups.append([line])
        else:
            groups[-1].append(line)
        bottom = max(bottom, low)
    return groups


def _same_paragraph(previous: Line, line: Line, median: float) -> bool:
    gap = line.box[1] - previous.box[3]
    overlap = min(previous.box[2], line.box[2]) - max(previous.box[0], line.box[0])
    heights = sorted((max(previous.height, 1.0), max(line.height, 1.0)))
    return (
        line.box[1] > previous.box[1]
        and gap < PARAGRAPH_GAP_LINE_HEIGHTS * median
        and overlap > 0
        and heights[1] / heights[0] < PARAGRAPH_HEIGHT_RATIO
    )


def _label_of(group: Sequence[Line], median: float) -> str:
    ratio = statistics.fmean(line.height for line in group) / max(median, 1.0)
    if len(group) > 2 or sum(len(line.text) for line in group) > MAX_HEADING_CHARS:
        return "text"
    if ratio >= TITLE_HEIGHT_RATIO:
        return "title"
    if ratio >= SUB_TITLE_HEIGHT_RATIO:
        return "sub_title"
    return "text"


def _join_lines(texts: Sequence[str]) -> str:
    """Join a paragraph's lines with spaces, mending words hyphenated across a line break."""
    out = ""
    for raw in texts:
        text = raw.strip()
        if not out:
            out = text
        elif out.endswith("-") and text[:1].islower():
            out = out[:-1] + text
        else:
            out = f"{out} {text}"
    return out


def _clean(text: str) -> str:
    # Recognised text goes inside <|ref|>…<|/ref|>: keep it from closing the tag early.
    return text.replace("<|", "< |").replace("|>", "| >").strip()


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def _median_height(lines: Sequence[Line]) -> float:
    return max(statistics.median(line.height for line in lines), 1.0)


def _union(boxes: Iterable[PixelBox]) -> PixelBox:
    items = list(boxes)
    return (
        min(b[0] for b in items),
        min(b[1] for b in items),
        max(b[2] for b in items),
        max(b[3] for b in items),
    )
