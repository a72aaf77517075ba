"""Boxes drawn on page images: colours, widths, label placement, every box of a block."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

from dsocr.render.overlay import draw_blocks, label_colour, scale_box
from dsocr.types import Block, Box

WHITE = (255, 255, 255)


def block(label: str, *boxes: Box, index: int = 0) -> Block:
    return Block(index=index, label=label, text=label, boxes=boxes, boxes_px=boxes)


def page(width: int = 1000, height: int = 1000) -> Image.Image:
    return Image.new("RGB", (width, height), WHITE)


def run_length(image: Image.Image, x: int, y: int, dx: int, dy: int, colour: tuple[int, int, int]) -> int:
    """How many consecutive pixels from (x, y) in direction (dx, dy) have exactly ``colour``."""
    n = 0
    while 0 <= x < image.width and 0 <= y < image.height and image.getpixel((x, y)) == colour:
        n += 1
        x += dx
        y += dy
    return n


def colour_count(image: Image.Image, x: int, y: int, length: int, colour: tuple[int, int, int]) -> int:
    """How many of the ``length`` pixels right of (x, y) have exactly ``colour``."""
    return sum(1 for i in range(length) if image.getpixel((x + i, y)) == colour)


def test_box_outline_pixels_have_the_label_colour() -> None:
    image = page()
    out = draw_blocks(image, [block("text", (200, 300, 600, 700))])
    x1, y1, x2, y2 = scale_box((200, 300, 600, 700), out.size)
    colour = label_colour("text")
    mid_y = (y1 + y2) // 2
    assert out.getpixel((x1, mid_y)) == colour
    assert out.getpixel((x2, mid_y)) == colour
    assert out.getpixel(((x1 + x2) // 2, y2)) == colour
    # Outside the box the page is untouched.
    assert out.getpixel((x1 - 20, mid_y)) == WHITE
    assert out.getpixel((x2 + 20, mid_y)) == WHITE


def test_box_interior_is_tinted_translucently_not_painted_over() -> None:
    image = page()
    ImageDraw.Draw(image).rectangle((450, 450, 460, 460), fill=(0, 0, 0))  # "ink" inside the box
    out = draw_blocks(image, [block("table", (200, 200, 800, 800))])
    colour = label_colour("table")
    tint = out.getpixel((500, 600))
    assert isinstance(tint, tuple)
    assert tint not in (WHITE, colour)
    # Tinted towards the label colour on every channel.
    assert all(min(c, 255) <= t <= 255 for t, c in zip(tint, colour, strict=True))
    # Ink under the fill is still dark: the text stays readable.
    ink = out.getpixel((455, 455))
    assert isinstance(ink, tuple)
    assert max(ink) < 80


def test_same_label_gets_same_colour_across_calls_and_processes() -> None:
    first = draw_blocks(page(), [block("sub_title", (100, 100, 500, 500))])
    second = draw_blocks(page(), [block("sub_title", (100, 100, 500, 500))])
    assert first.tobytes() == second.tobytes()
    # Free-form labels (OCR mode labels are the recognised text) must not use the salted hash().
    code = "from dsocr.render.overlay import label_colour; print(label_colour('Chapter III'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str(label_colour("Chapter III"))


def test_known_labels_have_distinct_colours() -> None:
    labels = ["title", "sub_title", "text", "image", "image_caption", "table", "equation"]
    assert len({label_colour(label) for label in labels}) == len(labels)


def test_title_outline_is_thicker_than_text_outline() -> None:
    out = draw_blocks(page(), [block("title", (100, 100, 400, 400)), block("text", (500, 500, 900, 900))])
    tx1, ty1, _, ty2 = scale_box((100, 100, 400, 400), out.size)
    bx1, by1, _, by2 = scale_box((500, 500, 900, 900), out.size)
    title_width = run_length(out, tx1, (ty1 + ty2) // 2, 1, 0, label_colour("title"))
    text_width = run_length(out, bx1, (by1 + by2) // 2, 1, 0, label_colour("text"))
    assert title_width > text_width >= 1


def test_every_box_of_a_multi_box_block_is_drawn() -> None:
    out = draw_blocks(page(), [block("text", (50, 100, 300, 200), (600, 700, 950, 800))])
    colour = label_colour("text")
    for grid_box in [(50, 100, 300, 200), (600, 700, 950, 800)]:
        x1, y1, _, y2 = scale_box(grid_box, out.size)
        assert out.getpixel((x1, (y1 + y2) // 2)) == colour


def test_label_at_image_top_flips_inside_the_box() -> None:
    out = draw_blocks(page(), [block("image", (100, 0, 500, 400))])
    colour = label_colour("image")
    x1, y1, _, _ = scale_box((100, 0, 500, 400), out.size)
    # The tag (solid label colour) sits just under the box top, inside the box.
    row = y1 + 6
    assert run_length(out, x1, row, 1, 0, colour) > 20


def test_label_at_right_edge_is_shifted_left_to_stay_in_the_image() -> None:
    out = draw_blocks(page(), [block("table_caption", (980, 500, 999, 600))])
    colour = label_colour("table_caption")
    x1, y1, _, _ = scale_box((980, 500, 999, 600), out.size)
    tag_row = y1 - 6  # above the box
    # The tag ends at the image's right edge and starts well left of the box.
    assert out.getpixel((out.width - 1, tag_row)) == colour
    assert out.getpixel((x1 - 15, tag_row)) == colour


def test_label_tag_shows_white_text_on_label_colour() -> None:
    out = draw_blocks(page(), [block("text", (200, 500, 800, 900))])
    x1, y1, x2, _ = scale_box((200, 500, 800, 900), out.size)
    tag = out.crop((x1, y1 - 30, x2, y1 - 1))
    colours = {c for _, c in tag.getcolors(maxcolors=100000) or []}
    assert label_colour("text") in colours
    assert WHITE in colours


def test_highlighted_block_gets_a_thicker_outline() -> None:
    blocks = [block("text", (100, 100, 400, 400), index=0), block("text", (500, 500, 900, 900), index=1)]
    out = draw_blocks(page(), blocks, highlight={1})
    colour = label_colour("text")
    ax1, ay1, _, ay2 = scale_box((100, 100, 400, 400), out.size)
    bx1, by1, _, by2 = scale_box((500, 500, 900, 900), out.size)
    assert run_length(out, bx1, (by1 + by2) // 2, 1, 0, colour) > run_length(
        out, ax1, (ay1 + ay2) // 2, 1, 0, colour
    )


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1"])
def test_any_image_mode_gives_an_rgb_copy_of_the_same_size(mode: str) -> None:
    image = Image.new(mode, (321, 123))
    before = image.tobytes()
    out = draw_blocks(image, [block("text", (100, 100, 900, 900))])
    assert out.mode == "RGB"
    assert out.size == (321, 123)
    assert image.tobytes() == before  # the caller's image is not modified


def test_transparent_background_becomes_white() -> None:
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    out = draw_blocks(image, [block("text", (500, 500, 900, 900))])
    assert out.getpixel((5, 5)) == WHITE


def test_tiny_image_draws_boxes_and_skips_labels_that_cannot_fit() -> None:
    out = draw_blocks(Image.new("RGB", (12, 12), WHITE), [block("a long label", (0, 0, 999, 999))])
    assert out.getpixel((0, 6)) == label_colour("a long label")


def test_no_blocks_returns_an_unchanged_copy() -> None:
    image = page(50, 40)
    out = draw_blocks(image, [])
    assert out is not image
    assert out.tobytes() == image.tobytes()


def test_label_moves_inside_its_box_rather_than_hide_the_text_above() -> None:
    image = page()
    # A line of "text" just above the box (the previous block's last line).
    ImageDraw.Draw(image).rectangle((200, 470, 800, 498), fill=(0, 0, 0))
    out = draw_blocks(image, [block("text", (200, 500, 800, 800))])
    x1, y1, _, _ = scale_box((200, 500, 800, 800), out.size)
    colour = label_colour("text")
    assert colour_count(out, x1, y1 + 8, 40, colour) > 20  # tag inside, under the top edge
    assert out.getpixel((x1 + 10, y1 - 6)) == (0, 0, 0)  # the text above is still visible


def test_label_goes_above_its_box_when_that_hides_nothing() -> None:
    out = draw_blocks(page(), [block("text", (200, 500, 800, 800))])
    x1, y1, _, _ = scale_box((200, 500, 800, 800), out.size)
    assert colour_count(out, x1, y1 - 8, 40, label_colour("text")) > 20
    assert colour_count(out, x1 + 4, y1 + 8, 40, label_colour("text")) == 0
