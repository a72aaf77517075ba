"""Visualiser cost: ms per annotated page and the memory a layout PDF needs.

Page: linn.png from tests/docs.py (2550 x 3300, a 300 dpi scan) with 16 layout blocks, and the
same page with 600 word-sized OCR-mode boxes (every box labelled). Prints:

- draw_blocks ms per page (median of --repeat runs) for both block counts;
- layout_pdf for --pages copies of the page: ms per page, PDF KB per page, and how much the
  process peak RSS grew while building it (resource.getrusage): it should stay near one page's
  pixels, not grow with --pages.

Run: ``.venv/bin/python bench/bench_visualize.py [--repeat R] [--pages N]``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import docs
from dsocr.render.overlay import draw_blocks, layout_pdf, scale_box
from dsocr.types import Block, Box, ParsedOutput

LAYOUT: list[tuple[str, Box]] = [
    ("title", (225, 36, 775, 95)),
    ("text", (133, 112, 860, 143)),
    ("text", (133, 144, 860, 378)),
    ("sub_title", (133, 387, 296, 404)),
    ("text", (133, 404, 490, 597)),
    ("sub_title", (133, 602, 190, 620)),
    ("text", (133, 620, 485, 682)),
    ("text", (505, 387, 851, 485)),
    ("sub_title", (505, 493, 625, 511)),
    ("text", (505, 511, 870, 596)),
    ("sub_title", (505, 603, 766, 620)),
    ("text", (505, 620, 857, 680)),
    ("sub_title", (133, 691, 307, 706)),
    ("text", (133, 707, 853, 893)),
    ("image", (600, 897, 708, 937)),
    ("footer", (606, 939, 860, 979)),
]


def blocks(spec: list[tuple[str, Box]], size: tuple[int, int]) -> tuple[Block, ...]:
    return tuple(
        Block(index=i, label=label, text=label, boxes=(box,), boxes_px=(scale_box(box, size),))
        for i, (label, box) in enumerate(spec)
    )


def word_boxes(n: int) -> list[tuple[str, Box]]:
    """n word-sized boxes in rows, labelled with made-up words (OCR-mode output)."""
    out: list[tuple[str, Box]] = []
    per_row = 12
    for i in range(n):
        row, col = divmod(i, per_row)
        x = 60 + col * 74
        y = 40 + row * 18
        out.append((f"word{i % 97}", (x, y, x + 60, y + 12)))
    return out


def time_ms(fn: object, repeat: int) -> float:
    assert callable(fn)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pages", type=int, default=20)
    args = parser.parse_args()

    with Image.open(docs.fetch("linn.png")) as image:
        page = image.convert("RGB")
    layout = blocks(LAYOUT, page.size)
    words = blocks(word_boxes(600), page.size)
    print(f"page {page.width}x{page.height}")

    # The PDF first: ru_maxrss is a high-water mark, and draw_blocks at full size would set it.
    parsed = ParsedOutput(raw="", blocks=layout, markdown="", text="", image_size=page.size)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    pdf = layout_pdf((page, parsed) for _ in range(args.pages))
    per_page_ms = (time.perf_counter() - start) * 1000 / args.pages
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(
        f"layout_pdf, {args.pages} pages (max_side 2000, JPEG q85): {per_page_ms:.0f} ms/page, "
        f"{len(pdf) / args.pages / 1024:.0f} KB/page, peak RSS growth {growth_mb:.0f} MB"
    )

    for name, page_blocks in (("layout blocks", layout), ("OCR word boxes", words)):
        ms = time_ms(lambda b=page_blocks: draw_blocks(page, b), args.repeat)
        print(f"draw_blocks, {len(page_blocks)} {name}: {ms:.0f} ms")


if __name__ == "__main__":
    main()
