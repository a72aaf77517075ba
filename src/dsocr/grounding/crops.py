"""Figure crops: the boxes of ``image`` blocks cut from the original image."""

from __future__ import annotations

from PIL import Image

from dsocr.grounding.boxes import to_pixels
from dsocr.types import ParsedOutput

__all__ = ["crops"]


def crops(image: Image.Image, parsed: ParsedOutput) -> list[Image.Image]:
    """One crop per box of every ``image`` block, in ``images/{i}.png`` link order.

    Boxes are scaled from the 0–999 grid to ``image``'s own size, so a downscaled copy of the
    original gives the same figures at its resolution. Empty when the page has no figures.
    """
    if parsed.ref_is_text:
        return []
    width, height = image.size
    return [
        image.crop(to_pixels(box, width, height))
        for block in parsed.blocks
        if block.label == "image"
        for box in block.boxes
    ]
