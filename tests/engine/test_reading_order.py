"""Reading order, paragraph blocks and grid boxes of the layout helpers, on hand-placed line boxes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dsocr.engine.layout import Line, group_blocks, reading_order, render_pieces, to_grid
from dsocr.grounding import parse
from dsocr.prompts import PRESETS


def _two_column_lines() -> list[Line]:
    lines = [Line("Big Title", (100, 50, 900, 110))]
    for i in range(6):
        y = 200 + i * 40
        lines.append(Line(f"left {i}", (100, y, 480, y + 28)))
        lines.append(Line(f"right {i}", (540, y, 920, y + 28)))
    lines.append(Line("full width footer", (100, 520, 920, 548)))
    return lines


def test_two_columns_under_a_title_read_column_by_column() -> None:
    order = [line.text for line in reading_order(_two_column_lines()[::-1])]
    assert order == [
        "Big Title",
        *(f"left {i}" for i in range(6)),
        *(f"right {i}" for i in range(6)),
        "full width footer",
    ]


def test_paragraphs_group_and_tall_short_lines_become_titles() -> None:
    blocks = group_blocks(reading_order(_two_column_lines()))
    assert [b.label for b in blocks] == ["title", "text", "text", "text"]
    assert blocks[0].content == "# Big Title"
    assert blocks[1].content == " ".join(f"left {i}" for i in range(6))


def test_hyphenated_line_ends_are_mended() -> None:
    lines = [Line("an exam-", (0, 0, 100, 20)), Line("ple of text", (0, 24, 100, 44))]
    assert group_blocks(lines)[0].content == "an example of text"


def test_document_pieces_parse_back_to_the_same_blocks_and_pixels() -> None:
    size = (1000, 600)
    text = "".join(render_pieces("document", _two_column_lines(), size))
    parsed = parse(text, width=size[0], height=size[1], prompt=PRESETS["document"])
    assert [b.label for b in parsed.blocks] == ["title", "text", "text", "text"]
    x1, y1, x2, y2 = parsed.blocks[0].boxes_px[0]
    assert abs(x1 - 100) <= 2 and abs(y1 - 50) <= 2 and abs(x2 - 900) <= 2 and abs(y2 - 110) <= 2


def test_ocr_and_free_shapes() -> None:
    lines = _two_column_lines()
    ocr = "".join(render_pieces("ocr", lines, (1000, 600)))
    assert ocr.count("<|ref|>") == len(lines)
    assert ocr.startswith("<|ref|>Big Title<|/ref|><|det|>[[100, 83, 899, 183]]<|/det|>\n")
    free = "".join(render_pieces("free", lines, (1000, 600)))
    assert "<|" not in free and free.startswith("Big Title\n\nleft 0 left 1")
    assert render_pieces("locate", lines, (1000, 600), target="absent") == []


@given(
    width=st.integers(min_value=1, max_value=20000),
    frac=st.floats(min_value=0, max_value=1),
)
def test_grid_boxes_map_back_within_one_grid_cell(width: int, frac: float) -> None:
    px = frac * width
    grid = to_grid((px, 0, px, 0), (width, 1))[0]
    # The parser maps back with int(v / 999 * W): the round trip is off by at most one grid step.
    assert 0 <= grid <= 999
    assert abs(int(grid / 999 * width) - px) <= width / 999 + 1
