"""Figure crops are cut from the original image in the order of the markdown links."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageDraw

from dsocr.grounding import crops, parse

DOC_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def _page_with_coloured_figures() -> Image.Image:
    """A white page with a red and a blue rectangle where the model said the figures are."""
    page = Image.new("RGB", (1000, 1000), "white")
    draw = ImageDraw.Draw(page)
    draw.rectangle((100, 100, 399, 299), fill="red")
    draw.rectangle((600, 500, 899, 799), fill="blue")
    return page


def test_each_image_box_becomes_one_crop_in_link_order() -> None:
    raw = (
        "<|ref|>image<|/ref|><|det|>[[100, 100, 400, 300]]<|/det|>\n\n"
        "<|ref|>text<|/ref|><|det|>[[100, 320, 900, 360]]<|/det|>\nBetween the figures.\n\n"
        "<|ref|>image<|/ref|><|det|>[[600, 500, 900, 800]]<|/det|>\n\n"
    )
    image = _page_with_coloured_figures()
    parsed = parse(raw, width=1000, height=1000, prompt=DOC_PROMPT)
    red, blue = crops(image, parsed)
    assert red.size == (300, 200) and blue.size == (300, 300)
    assert red.getpixel((150, 100)) == (255, 0, 0)
    assert blue.getpixel((150, 150)) == (0, 0, 255)
    assert "![](images/0.png)" in parsed.markdown.split("Between")[0]
    assert "![](images/1.png)" in parsed.markdown.split("Between")[1]


def test_crops_of_a_downscaled_copy_cover_the_same_region() -> None:
    raw = "<|ref|>image<|/ref|><|det|>[[100, 100, 400, 300]]<|/det|>\n"
    parsed = parse(raw, width=1000, height=1000, prompt=DOC_PROMPT)
    (small,) = crops(_page_with_coloured_figures().resize((500, 500)), parsed)
    assert small.size == (150, 100)
    assert small.getpixel((75, 50)) == (255, 0, 0)


def test_multi_box_image_block_gives_one_crop_per_box(raw_fixture: Callable[[str], str]) -> None:
    parsed = parse(raw_fixture("document_page.txt"), width=1654, height=2339, prompt=DOC_PROMPT)
    cut = crops(Image.new("RGB", (1654, 2339), "white"), parsed)
    assert [c.size for c in cut] == [(x2 - x1, y2 - y1) for x1, y1, x2, y2 in parsed.crop_boxes_px]
    assert len(cut) == 3


def test_no_image_blocks_means_no_crops(raw_fixture: Callable[[str], str]) -> None:
    image = Image.new("RGB", (640, 480))
    assert crops(image, parse(raw_fixture("ocr_photo.txt"), width=640, height=480)) == []
    assert crops(image, parse(raw_fixture("free_ocr.txt"), width=640, height=480)) == []
