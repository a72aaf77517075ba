"""Coordinate lists between ``<|det|>`` tags → boxes on the 0–999 grid, and grid → pixels.

The model writes ``[[x1, y1, x2, y2], ...]``; real outputs also hold stray letters and signs
(``[[550, s 331, 652, 345]]``, ``[[117, - 325, 500, 392]]``, reported upstream:
https://github.com/deepseek-ai/DeepSeek-OCR/issues/278), single-bracket lists and lists cut off
by ``max_tokens``. A minus sign against its digits (``-5``) makes the number negative, so it
clamps to 0; one standing apart (``- 325``) is a stray sign and ignored. Nothing
here evaluates model text: numbers are read with a regex and the shape is checked by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dsocr.types import Box

__all__ = ["GRID_MAX", "parse_coordinates", "to_pixels"]

# Coordinates are "normalised into 1000 bins": 0..999 on each axis, scaled by /999 (official code).
GRID_MAX = 999

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# The well-formed shape, checked first so the common case costs one regex and one findall.
# Negative integers are well formed too: out of range like 1200, and clamped the same way.
_WELL_FORMED = re.compile(
    r"\s*\[\s*\[\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*\]"
    r"(?:\s*,\s*\[\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*,\s*-?\d+\s*\])*\s*\]\s*"
)
_INT = re.compile(r"-?\d+")
_SINGLE = re.compile(r"\[\[(\d{1,3}), ?(\d{1,3}), ?(\d{1,3}), ?(\d{1,3})\]\]")
# One innermost bracket group: ``[...]`` without nested brackets.
_GROUP = re.compile(r"\[([^\[\]]*)\]")


def _clamp(value: float) -> int:
    return min(GRID_MAX, max(0, int(value)))


def _box(numbers: Sequence[float], literal: str, warnings: list[str]) -> Box | None:
    """Clamp, order corners, drop degenerate boxes (zero width or height)."""
    x1, y1, x2, y2 = (_clamp(v) for v in numbers)
    if any(v > GRID_MAX or v < 0 for v in numbers):
        warnings.append(f"coordinates outside 0-{GRID_MAX} clamped in {literal!r}")
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    if x1 == x2 or y1 == y2:
        warnings.append(f"degenerate box {[x1, y1, x2, y2]} dropped (zero width or height)")
        return None
    return (x1, y1, x2, y2)


def _short(literal: str) -> str:
    return literal if len(literal) <= 80 else literal[:77] + "..."


def parse_coordinates(literal: str) -> tuple[list[Box], list[str]]:
    """Read boxes from a ``<|det|>`` literal. Returns ``(boxes, warnings)``; never raises.

    Boxes are clamped to 0–999 with corners ordered; degenerate ones are dropped. A group that
    does not hold exactly four numbers is dropped with a warning (a number cut off by truncation
    could be wrong, so partial groups are never completed by guessing).
    """
    # Fast path, most boxes on a page: one box, three-digit values, corners in order.
    single = _SINGLE.fullmatch(literal)
    if single is not None:
        x1, y1, x2, y2 = map(int, single.groups())
        if x1 < x2 and y1 < y2:
            return [(x1, y1, x2, y2)], []
    warnings: list[str] = []
    boxes: list[Box] = []
    if _WELL_FORMED.fullmatch(literal):
        values = [int(v) for v in _INT.findall(literal)]
        for i in range(0, len(values), 4):
            box = _box(values[i : i + 4], _short(literal), warnings)
            if box is not None:
                boxes.append(box)
        return boxes, warnings

    shown = _short(literal)
    groups = _GROUP.findall(literal)
    # Text after the last closed group that still holds digits: an unclosed, cut-off group.
    tail = literal[literal.rfind("]") + 1 :] if "]" in literal else literal
    if not groups:
        if _NUMBER.search(tail):
            warnings.append(f"unterminated coordinate list {shown!r} (truncated output?); boxes dropped")
        else:
            warnings.append(f"no coordinates in {shown!r}")
        return boxes, warnings

    repaired = False
    for group in groups:
        numbers = [float(v) for v in _NUMBER.findall(group)]
        if not numbers or len(numbers) % 4:
            warnings.append(f"coordinate group [{_short(group)}] does not hold 4 numbers; dropped")
            continue
        if len(numbers) > 4:
            repaired = True  # a flat list of several boxes: [x1, y1, x2, y2, x1, y1, ...]
        for i in range(0, len(numbers), 4):
            box = _box(numbers[i : i + 4], shown, warnings)
            if box is not None:
                boxes.append(box)
        if re.search(r"[^\d\s,-]|-(?!\d)", group):  # a minus against its digits is a sign, not noise
            repaired = True
    if repaired or not literal.strip().startswith("[["):
        warnings.append(f"malformed coordinate list {shown!r} read as {[list(b) for b in boxes]}")
    if _NUMBER.search(tail):
        warnings.append(f"unterminated coordinate group at the end of {shown!r} (truncated?); dropped")
    return boxes, warnings


def to_pixels(box: Box, width: int, height: int) -> Box:
    """Grid box → pixel box of a ``width`` × ``height`` image: ``int(v / 999 * W)`` (official)."""
    x1, y1, x2, y2 = box
    return (
        int(x1 / GRID_MAX * width),
        int(y1 / GRID_MAX * height),
        int(x2 / GRID_MAX * width),
        int(y2 / GRID_MAX * height),
    )
