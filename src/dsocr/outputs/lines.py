"""Lines and words inside the model's blocks: estimated, never measured.

DeepSeek-OCR gives one box per block (a paragraph, a title, a table, a figure) and the block's
text. The formats that place text on the page (hOCR, ALTO, the searchable PDF) need lines and
words, so this module estimates them, one way for all three:

* a block's plain text is wrapped into as many lines as make its characters about half as wide
  as a line is tall (the shape of printed text), never fewer than the text's own line breaks;
* the lines share the box's height evenly, top to bottom, in reading order; the longest line
  spans the box's width and the others are as long as their share of characters;
* a word's box is its share of its line's characters.

Block boxes are the model's; every line and word box here is an estimate, and the formats say so
in their metadata. A block without a box (text of an ungrounded prompt) is placed over the whole
page. A block with several boxes spreads its lines over them in proportion to their areas.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dsocr.grounding.markdown import clean_markdown_text, markdown_to_text
from dsocr.types import Block, Box, ParsedOutput

__all__ = [
    "ESTIMATED_NOTE",
    "Line",
    "Region",
    "RegionKind",
    "Word",
    "block_text",
    "fill_box",
    "page_regions",
    "xml_safe",
]

# Printed characters are about half as wide as a line is tall (measured on serif and sans body
# text: 0.45-0.55 em); the estimate only needs the line count to come out plausible.
_CHAR_ASPECT = 0.5

ESTIMATED_NOTE = (
    "Block boxes are the model's layout boxes. Line and word boxes are estimated by dividing each "
    "block's box evenly among its lines and characters; they are not measured."
)

RegionKind = Literal["text", "table", "figure"]

# Characters XML 1.0 cannot hold (control characters, lone surrogates, U+FFFE/U+FFFF): model text
# may carry them, and no format placing text wants them.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class Word:
    """A word and its estimated box (pixels)."""

    text: str
    box: Box


@dataclass(frozen=True, slots=True)
class Line:
    """A line of a block, its estimated box (pixels) and its words, in reading order."""

    text: str
    box: Box
    words: tuple[Word, ...]


@dataclass(frozen=True, slots=True)
class Region:
    """One box of a block on the page: the model's box, what it holds, its estimated lines."""

    block: Block
    box: Box
    kind: RegionKind
    lines: tuple[Line, ...]
    # False when the block had no box and the region is the whole page (an estimate too).
    measured: bool = True


def xml_safe(text: str) -> str:
    """``text`` without the characters an XML document cannot hold."""
    return _NOT_TEXT.sub("", text)


def block_text(block: Block, *, ref_is_text: bool) -> str:
    """A block's plain text: markdown markers, HTML tables and image links turned into text."""
    text = block.text.strip() if ref_is_text else markdown_to_text(clean_markdown_text(block.text))
    return xml_safe(text)


def _kind(label: str) -> RegionKind:
    if label == "image":
        return "figure"
    if label == "table":
        return "table"
    return "text"


def _segments(text: str) -> list[str]:
    # Tabs separate table cells: on a line they read as word gaps.
    return [" ".join(part.split()) for part in text.splitlines() if part.strip()]


def _wrap(segment: str, width: int) -> list[str]:
    # Text without spaces (Chinese, Japanese) is wrapped anywhere; text with spaces at spaces only,
    # so no word is cut in two (a search for it must still find it).
    return textwrap.wrap(segment, width, break_long_words=" " not in segment, break_on_hyphens=False) or [
        segment
    ]


def _wrap_into(segments: Sequence[str], target: int) -> list[str]:
    """The segments wrapped at the narrowest width that gives at most ``target`` lines."""
    if len(segments) >= target:
        return list(segments)
    low, high = 1, max(len(segment) for segment in segments)
    while low < high:
        middle = (low + high) // 2
        if sum(len(_wrap(segment, middle)) for segment in segments) <= target:
            high = middle
        else:
            low = middle + 1
    return [line for segment in segments for line in _wrap(segment, low)]


def fill_box(text: str, box: Box) -> tuple[Line, ...]:
    """``text`` split into lines that fill ``box`` (pixels), with estimated line and word boxes."""
    segments = _segments(text)
    if not segments:
        return ()
    x1, y1, x2, y2 = box
    width, height = max(1, x2 - x1), max(1, y2 - y1)
    chars = sum(len(segment) for segment in segments)
    target = round(math.sqrt(_CHAR_ASPECT * chars * height / width))
    # At least the text's own lines; at most a line per pixel row.
    target = max(len(segments), min(max(1, target), height))
    wrapped = _wrap_into(segments, target)
    longest = max(len(line) for line in wrapped)
    pitch = height / len(wrapped)
    lines: list[Line] = []
    for row, line in enumerate(wrapped):
        top = y1 + round(row * pitch)
        bottom = max(top + 1, y1 + round((row + 1) * pitch))
        advance = width / longest
        words: list[Word] = []
        offset = 0
        for word in line.split(" "):
            left = x1 + round(offset * advance)
            right = max(left + 1, x1 + round((offset + len(word)) * advance))
            words.append(Word(word, (left, top, right, bottom)))
            offset += len(word) + 1
        right_edge = max(x1 + 1, x1 + round(len(line) * advance))
        lines.append(Line(line, (x1, top, right_edge, bottom), tuple(words)))
    return tuple(lines)


def _share(text: str, boxes: Sequence[Box]) -> list[str]:
    """The text's lines spread over ``boxes`` in order, in proportion to each box's area."""
    if len(boxes) == 1:
        return [text]
    segments = _segments(text)
    words = " ".join(segments).split(" ") if len(segments) <= 1 else segments
    areas = [max(1, (x2 - x1) * (y2 - y1)) for x1, y1, x2, y2 in boxes]
    total = sum(areas)
    joiner = " " if len(segments) <= 1 else "\n"
    parts: list[str] = []
    start = 0
    for index, area in enumerate(areas):
        end = len(words) if index == len(areas) - 1 else start + round(len(words) * area / total)
        parts.append(joiner.join(words[start:end]))
        start = end
    return parts


def page_regions(parsed: ParsedOutput) -> list[Region]:
    """The page's blocks, in reading order, as regions with estimated lines."""
    width, height = parsed.image_size
    page_box: Box = (0, 0, max(1, width), max(1, height))
    regions: list[Region] = []
    for block in parsed.blocks:
        text = block_text(block, ref_is_text=parsed.ref_is_text)
        kind = _kind(block.label)
        boxes = [box for box in block.boxes_px if box[2] > box[0] and box[3] > box[1]]
        if not boxes:
            if text:
                regions.append(Region(block, page_box, kind, fill_box(text, page_box), measured=False))
            continue
        for box, part in zip(boxes, _share(text, boxes), strict=True):
            regions.append(Region(block, box, kind, fill_box(part, box)))
    return regions
