"""A synthetic 2-column A4 page with known text, rendered with Pillow and DejaVu fonts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
WORDS = [
    "river",
    "harbour",
    "lantern",
    "meadow",
    "copper",
    "window",
    "garden",
    "silver",
    "morning",
    "orchard",
    "village",
    "bridge",
    "planet",
    "marble",
    "thunder",
    "candle",
    "forest",
    "winter",
    "summer",
    "valley",
    "island",
    "mirror",
    "letter",
    "pocket",
    "ladder",
    "basket",
    "feather",
    "shadow",
    "rocket",
    "engine",
    "pepper",
    "violet",
]
TITLE = "Quarterly Field Report"
SUB_TITLES = ("Northern Survey", "Southern Survey")


@dataclass(frozen=True)
class SyntheticPage:
    image: Image.Image
    title: str
    column_texts: tuple[str, str]  # text of column 1 and column 2 (without sub-titles)

    @property
    def all_text(self) -> str:
        return " ".join(
            (self.title, SUB_TITLES[0], self.column_texts[0], SUB_TITLES[1], self.column_texts[1])
        )


def _font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONT_DIR / name
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def two_column_page(seed: int = 7, lines_per_column: int = 22) -> SyntheticPage:
    """An A4 page at 150 DPI (1240×1754): a title across both columns, then two columns of text.

    Column 1 uses words from the first half of ``WORDS`` and column 2 from the second half, so a
    reader can tell from any word which column it came from.
    """
    rng = random.Random(seed)
    image = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(image)
    draw.text((100, 90), TITLE, font=_font("DejaVuSerif-Bold.ttf", 52), fill="black")
    body = _font("DejaVuSerif.ttf", 24)
    heading = _font("DejaVuSans-Bold.ttf", 32)
    halves = (WORDS[: len(WORDS) // 2], WORDS[len(WORDS) // 2 :])
    texts = []
    for column, x0 in enumerate((100, 660)):
        draw.text((x0, 220), SUB_TITLES[column], font=heading, fill="black")
        y = 290
        words: list[str] = []
        for i in range(lines_per_column):
            line = [rng.choice(halves[column]) for _ in range(4)]
            words.extend(line)
            draw.text((x0, y), " ".join(line), font=body, fill="black")
            # A blank line every 8 lines separates paragraphs.
            y += 40 if (i + 1) % 8 else 80
        texts.append(" ".join(words))
    return SyntheticPage(image=image, title=TITLE, column_texts=(texts[0], texts[1]))
