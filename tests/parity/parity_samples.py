"""The inputs the parity suite sends through every door, and what the fake engine must answer.

``expected_reading`` runs the fake engine itself, in process, on the image with the preset's
full prompt (``dsocr.prompts.PRESETS``): whatever door a preset name came through, the engine
must have been asked exactly that, so the reading and the token counts must be these.
"""

from __future__ import annotations

import asyncio
import io
import random
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from dsocr import grounding
from dsocr.engine.base import EngineRequest
from dsocr.engine.fake import FakeEngine
from dsocr.prompts import PRESETS
from pdf_bomb import pdf_with_pages

__all__ = [
    "BODY_OVER_LIMIT",
    "ENDLESS",
    "GARBAGE",
    "MAX_IMAGE_PIXELS",
    "MAX_UPLOAD_BYTES",
    "MIXED_PDF",
    "OVER_PIXELS",
    "OVER_UPLOAD",
    "PAGE",
    "PLAIN_PDF",
    "Expected",
    "Sample",
    "expected_reading",
    "reading_of",
    "without_link_targets",
]

# The limits of the default server configuration (parity_deployments.DEFAULT).
MAX_IMAGE_PIXELS = 1_000_000
MAX_UPLOAD_BYTES = 200_000
# The server's body limit for that upload limit: base64's 4/3 plus 64 KiB of framing.
_BODY_LIMIT = MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024
ENDLESS = 40  # 2**40 nested draws (tests/pdf_bomb.py): hours of pdfium time


@dataclass(frozen=True)
class Sample:
    """A file as a user has it: bytes, a name and a media type; ``size`` for images."""

    data: bytes
    name: str
    media_type: str
    size: tuple[int, int] | None = None

    @property
    def stem(self) -> str:
        """The name without its suffix (the folder ``dsocr batch`` writes it to)."""
        return self.name.rsplit(".", 1)[0]


def _png(image: Image.Image, name: str) -> Sample:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Sample(buffer.getvalue(), name, "image/png", image.size)


def _page(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 40), "A parity test page", fill="black")
    for row in range(6):
        draw.line((40, 120 + 60 * row, width - 40, 120 + 60 * row), fill="black", width=3)
    return image


def _noise(side: int, seed: int) -> Image.Image:
    # Random pixels do not compress: the PNG is about 3 bytes a pixel.
    rng = random.Random(seed)
    return Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))


PAGE = _png(_page(600, 800), "page.png")
# Over the pixel limit, a few KB on the wire.
OVER_PIXELS = _png(_page(1200, 1000), "wide.png")
# Over the upload limit but inside the body limit even as base64 in JSON, so that the source
# field's own check (not the server's body limit) answers, naming the field.
OVER_UPLOAD = _png(_noise(270, seed=1), "noise.png")
# Over the body limit itself: refused at the server's edge, before any field is read.
BODY_OVER_LIMIT = _png(_noise(500, seed=2), "big.png")
# A PNG cut after its header: the size reads, the pixels do not decode.
GARBAGE = Sample(PAGE.data[: len(PAGE.data) // 3], "broken.png", "image/png", PAGE.size)
# One ordinary page.
PLAIN_PDF = Sample(pdf_with_pages(None), "plain.pdf", "application/pdf")
# Three pages, the second a render bomb that only the render budget stops.
MIXED_PDF = Sample(pdf_with_pages(None, ENDLESS, None), "mixed.pdf", "application/pdf")

assert len(OVER_UPLOAD.data) > MAX_UPLOAD_BYTES and len(OVER_UPLOAD.data) * 4 // 3 + 4096 < _BODY_LIMIT
assert len(BODY_OVER_LIMIT.data) * 4 // 3 > _BODY_LIMIT
assert OVER_PIXELS.size is not None and OVER_PIXELS.size[0] * OVER_PIXELS.size[1] > MAX_IMAGE_PIXELS


Block = tuple[str, str, tuple[tuple[int, ...], ...]]


def reading_of(blocks: list[dict[str, Any]]) -> tuple[Block, ...]:
    """Blocks as comparable values: label, text and grid boxes, in reading order."""
    return tuple(
        (str(block["label"]), str(block["text"]), tuple(tuple(box) for box in block["boxes"]))
        for block in blocks
    )


_LINK = re.compile(r"(!\[[^\]]*\])\([^)]*\)")


def without_link_targets(markdown: str) -> str:
    """Markdown with image link targets dropped: where crops are linked is each door's own layout
    (``images/0.png`` in an answer, ``images/1_0.png`` in a batch folder)."""
    return _LINK.sub(r"\1()", markdown).strip()


@dataclass(frozen=True)
class Expected:
    """What the fake engine answers for one image, prompt and mode."""

    prompt: str
    raw: str
    blocks: tuple[Block, ...]
    markdown: str
    prompt_tokens: int
    vision_tokens: int
    completion_tokens: int


def expected_reading(sample: Sample, preset: str, mode: str = "gundam") -> Expected:
    """The fake engine's answer for ``sample`` read with ``preset`` in ``mode``."""
    assert sample.size is not None
    prompt = PRESETS[preset]
    with Image.open(io.BytesIO(sample.data)) as opened:
        image = opened.convert("RGB")

    async def run() -> Any:
        engine = FakeEngine()
        await engine.start()
        try:
            return await engine.generate(
                EngineRequest(request_id="expected", prompt=prompt, image=image, mode=mode)
            )
        finally:
            await engine.close()

    output = asyncio.run(run())
    width, height = sample.size
    parsed = grounding.parse(output.text, width=width, height=height, prompt=prompt)
    return Expected(
        prompt=prompt,
        raw=output.text,
        blocks=reading_of(grounding.blocks_to_json(parsed)),
        markdown=without_link_targets(parsed.markdown),
        prompt_tokens=output.prompt_tokens,
        vision_tokens=output.vision_tokens,
        completion_tokens=output.completion_tokens,
    )
