"""Frozen domain objects shared by every layer (no I/O, no framework types)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Block", "Box", "ParsedOutput"]

# (x1, y1, x2, y2). On the model's 0–999 grid or in pixels of the original (EXIF-corrected) image.
Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """One grounded block, in reading order.

    ``label`` is the model's ref label (``title``, ``text``, ``table``, ``image`` …) or, for the
    OCR/Locate prompt shapes, the recognised text itself (then ``text`` equals ``label``).
    ``boxes`` are on the 0–999 grid (clamped, corners ordered); ``boxes_px`` the same boxes in
    pixels of the image the user sent (``v / 999 * W``).
    """

    index: int
    label: str
    text: str
    boxes: tuple[Box, ...]
    boxes_px: tuple[Box, ...]
    # Index of this block's first crop in ``ParsedOutput.crops`` order (image blocks only).
    crop_index: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedOutput:
    """Everything derived from one page's raw model text."""

    raw: str
    blocks: tuple[Block, ...]
    markdown: str
    text: str
    warnings: tuple[str, ...] = ()
    # Width and height of the image the boxes refer to.
    image_size: tuple[int, int] = (0, 0)
    has_grounding: bool = False
    # Parsed geometry dict (``line_type`` output of "Parse the figure."), if any.
    geometry: object | None = None
    # Crops are boxes of ``image`` blocks in order; ``markdown`` links ``images/{i}.png``.
    crop_boxes_px: tuple[Box, ...] = field(default_factory=tuple)
    # True for the OCR shape (``<|grounding|>OCR this image.``, ``Locate``): each ref label is the
    # recognised text itself, not a layout category, so ``Block.text == Block.label``.
    ref_is_text: bool = False
