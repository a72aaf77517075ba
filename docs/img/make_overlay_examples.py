"""Regenerate the visualiser pictures in docs/img/ from real scanned pages.

    .venv/bin/python docs/img/make_overlay_examples.py

Pages come from tests/docs.py (ocrmypdf 17.13.0 sdist: c03-29.pdf, public domain; linn.png,
GFDL-1.2+/CC-BY-SA-3.0). The raw answers are hand-written in the model's grammar with boxes
measured on the pages, then parsed by dsocr.grounding exactly as a real answer would be.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))

import docs  # noqa: E402  (tests/docs.py, the shared test-document fetcher)
from dsocr.grounding import parse  # noqa: E402
from dsocr.visualize import DeepSeekOCRVisualizer, draw_blocks, layout_pdf  # noqa: E402

CHAPTER_RAW = """<|ref|>title<|/ref|><|det|>[[171, 12, 943, 120]]<|/det|>
# Chapter III.

<|ref|>image<|/ref|><|det|>[[54, 223, 335, 668]]<|/det|>


<|ref|>image_caption<|/ref|><|det|>[[146, 670, 321, 688]]<|/det|>
<center>MISS WATSON'S LECTURE.</center>

<|ref|>text<|/ref|><|det|>[[337, 233, 978, 695], [78, 697, 642, 723]]<|/det|>
WELL, I got a good going-over in the morning, from old Miss Watson, on account of my clothes; [...]

<|ref|>text<|/ref|><|det|>[[78, 725, 978, 999]]<|/det|>
I set down, one time, back in the woods, and had a long think about it. [...]
"""

LINN_RAW = """<|ref|>title<|/ref|><|det|>[[225, 36, 775, 95]]<|/det|>
# The LinnSequencer 32 Track MIDI Sequence Recorder

<|ref|>text<|/ref|><|det|>[[133, 112, 860, 143]]<|/det|>
The LinnSequencer is a state-of-the-art composition and performance tool [...]

<|ref|>text<|/ref|><|det|>[[133, 144, 860, 378]]<|/det|>
- Operation is similar to multi track tape recorder [...]

<|ref|>sub_title<|/ref|><|det|>[[133, 387, 296, 404]]<|/det|>
## Recording a Sequence

<|ref|>text<|/ref|><|det|>[[133, 404, 490, 597]]<|/det|>
To record a sequence, simply press RECORD and PLAY [...]

<|ref|>sub_title<|/ref|><|det|>[[133, 602, 190, 620]]<|/det|>
## Editing

<|ref|>text<|/ref|><|det|>[[133, 620, 485, 682]]<|/det|>
To erase a wrong note, simply hold ERASE [...]

<|ref|>text<|/ref|><|det|>[[505, 387, 851, 485]]<|/det|>
simply use LOCATE, FAST FORWARD, or REWIND [...]

<|ref|>sub_title<|/ref|><|det|>[[505, 493, 625, 511]]<|/det|>
## Creating a Song

<|ref|>text<|/ref|><|det|>[[505, 511, 870, 596]]<|/det|>
One way to create a song is to record each track [...]

<|ref|>sub_title<|/ref|><|det|>[[505, 603, 766, 620]]<|/det|>
## Composition Without Compromise

<|ref|>text<|/ref|><|det|>[[505, 620, 857, 680]]<|/det|>
The technology you use should never be so complicated [...]

<|ref|>sub_title<|/ref|><|det|>[[133, 691, 307, 706]]<|/det|>
## Additional Features

<|ref|>text<|/ref|><|det|>[[133, 707, 853, 893]]<|/det|>
- Simple, easy to learn operation [...]

<|ref|>image<|/ref|><|det|>[[600, 897, 708, 937]]<|/det|>


<|ref|>footer<|/ref|><|det|>[[606, 939, 860, 979]]<|/det|>
Linn Electronics, Inc. [...]
"""

GEOMETRY_RAW = (
    "{'Line': {'line': ['(-6,-4) -- (6,-4)', '(6,-4) -- (0,6)', '(0,6) -- (-6,-4)', '(0,6) -- (0,-4)'], "
    "'line_type': ['-', '-', '-', '--'], "
    "'line_endpoint': ['A: (-6,-4)', 'B: (6,-4)', 'C: (0,6)', 'D: (0,-4)']}, "
    "'Circle': {'circle_center': ['O: (0,-0.6)'], 'radius': [3.4]}}"
)


def chapter_page() -> Image.Image:
    pdf = pdfium.PdfDocument(docs.fetch("c03-29.pdf"))
    try:
        return pdf[0].render(scale=110 / 72).to_pil().convert("RGB")
    finally:
        pdf.close()


def linn_page() -> Image.Image:
    with Image.open(docs.fetch("linn.png")) as image:
        page = image.convert("RGB")
    page.thumbnail((700, 900))
    return page


def main() -> None:
    chapter = chapter_page()
    chapter_parsed = parse(CHAPTER_RAW, width=chapter.width, height=chapter.height)
    # A 256-colour palette keeps these PNGs small (< 300 KB) with no visible loss on a scan.
    draw_blocks(chapter, chapter_parsed.blocks).quantize(colors=256).save(
        HERE / "overlay_c03-29.png", optimize=True
    )

    linn = linn_page()
    linn_parsed = parse(LINN_RAW, width=linn.width, height=linn.height)
    drawn = draw_blocks(linn, linn_parsed.blocks, highlight={3})
    drawn.quantize(colors=256).save(HERE / "overlay_linn.png", optimize=True)

    png = DeepSeekOCRVisualizer().create_geometric_visualization(GEOMETRY_RAW)
    assert png is not None
    import base64

    (HERE / "geometry_example.png").write_bytes(base64.b64decode(png))

    pdf_bytes = layout_pdf([(chapter, chapter_parsed), (linn, linn_parsed)])
    pdf_path = Path(tempfile.gettempdir()) / "dsocr_layouts.pdf"  # to look at, not committed
    pdf_path.write_bytes(pdf_bytes)
    for name in ("overlay_c03-29.png", "overlay_linn.png", "geometry_example.png"):
        print(f"{name}: {(HERE / name).stat().st_size // 1024} KB")
    print(f"{pdf_path}: {len(pdf_bytes) // 1024} KB, 2 pages")


if __name__ == "__main__":
    main()
