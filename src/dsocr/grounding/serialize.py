"""Blocks → wire JSON (one shape for every front end) and blocks → raw model text.

``to_raw`` is the inverse of :func:`dsocr.grounding.parse` on blocks: for any text ``raw``,
``parse(to_raw(parse(raw).blocks, ref_is_text=...)).blocks`` equals ``parse(raw).blocks``.
The fake engine uses it to script realistic answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from dsocr.types import Block, Box, ParsedOutput

__all__ = ["block_to_json", "blocks_to_json", "parsed_to_json", "to_raw"]


def _box_list(boxes: Iterable[Box]) -> list[list[int]]:
    return [list(box) for box in boxes]


def block_to_json(block: Block) -> dict[str, Any]:
    """One block's wire shape: ``index``, ``label``, ``text``, ``boxes`` ([x1, y1, x2, y2] on the
    0–999 grid) and ``boxes_px`` (pixels of the original image), plus ``crop_index`` for image blocks."""
    item: dict[str, Any] = {
        "index": block.index,
        "label": block.label,
        "text": block.text,
        "boxes": _box_list(block.boxes),
        "boxes_px": _box_list(block.boxes_px),
    }
    if block.crop_index is not None:
        item["crop_index"] = block.crop_index
    return item


def blocks_to_json(parsed: ParsedOutput) -> list[dict[str, Any]]:
    """The page's blocks in their wire shape (:func:`block_to_json`)."""
    return [block_to_json(block) for block in parsed.blocks]


def parsed_to_json(parsed: ParsedOutput) -> dict[str, Any]:
    """One page as JSON: ``blocks`` (see :func:`blocks_to_json`), ``markdown``, ``text``,
    ``warnings``, ``image_size``, ``ref_is_text`` and ``geometry`` (``null`` unless present)."""
    geometry = parsed.geometry
    return {
        "blocks": blocks_to_json(parsed),
        "markdown": parsed.markdown,
        "text": parsed.text,
        "warnings": list(parsed.warnings),
        "image_size": list(parsed.image_size),
        "ref_is_text": parsed.ref_is_text,
        "geometry": dataclasses.asdict(geometry)
        if dataclasses.is_dataclass(geometry) and not isinstance(geometry, type)
        else None,
    }


def _tags(block: Block) -> str:
    tags = f"<|ref|>{block.label}<|/ref|>"
    if block.boxes:
        coords = ", ".join(f"[{x1}, {y1}, {x2}, {y2}]" for x1, y1, x2, y2 in block.boxes)
        tags += f"<|det|>[{coords}]<|/det|>"
    return tags


def to_raw(blocks: Sequence[Block], *, ref_is_text: bool = False) -> str:
    """Write blocks back in the model's grammar.

    ``ref_is_text`` selects the OCR shape (ref = recognised text, nothing after the tags), as in
    ``ParsedOutput.ref_is_text``. Boxless ``text`` blocks are written as loose text where the
    parser would read them back as such (before the first tag in document shape; anywhere in the
    OCR shape); every other block gets its tags.
    """
    pieces: list[str] = []
    for position, block in enumerate(blocks):
        loose = block.label == "text" and not block.boxes and block.text.strip() and block.text != "text"
        if ref_is_text:
            if loose:
                pieces.append(f"{block.text}\n")
            else:
                pieces.append(f"{_tags(block)}\n")
        elif loose and position == 0:
            pieces.append(f"{block.text}\n\n")
        else:
            pieces.append(f"{_tags(block)}\n{block.text}\n\n")
    return "".join(pieces)
