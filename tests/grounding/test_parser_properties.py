"""Property tests: the parser is total, boxes are always valid, and to_raw inverts parse."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dsocr.grounding import parse, parse_coordinates, to_raw
from dsocr.grounding.parser import EOS

PROMPTS = [
    None,
    "<image>\n<|grounding|>Convert the document to markdown.",
    "<image>\n<|grounding|>OCR this image.",
    "<image>\nLocate <|ref|>the red sign<|/ref|> in the image.",
    "<image>\nFree OCR.",
]

# Pieces the model really emits, so random mixes hit the parser's edge cases often.
PIECES = [
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "[[",
    "]]",
    "[",
    "]",
    ", ",
    ",",
    " ",
    "\n",
    "\n\n",
    "-",
    "s ",
    ".5",
    "image",
    "title",
    "text",
    "表格",
    "<center>",
    "</center>",
    "<table><tr><td>",
    "</td></tr></table>",
    "# ",
    "\\coloneqq",
    "line_type",
    "{'Line': {'line': ['(0,0) -- (1,1)']}}",
    EOS,
]
token_soup = st.lists(
    st.one_of(
        st.sampled_from(PIECES), st.integers(min_value=0, max_value=1200).map(str), st.text(max_size=4)
    ),
    max_size=40,
).map("".join)
sizes = st.integers(min_value=-5, max_value=5000)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.one_of(st.text(), token_soup),
    width=sizes,
    height=sizes,
    prompt=st.one_of(st.sampled_from(PROMPTS), st.text(), token_soup),
)
def test_parse_never_raises_and_boxes_are_valid(
    raw: str, width: int, height: int, prompt: str | None
) -> None:
    parsed = parse(raw, width=width, height=height, prompt=prompt)
    assert parsed.raw == raw
    for block in parsed.blocks:
        assert len(block.boxes) == len(block.boxes_px)
        for x1, y1, x2, y2 in block.boxes:
            assert 0 <= x1 < x2 <= 999 and 0 <= y1 < y2 <= 999
        for x1, y1, x2, y2 in block.boxes_px:
            assert 0 <= x1 <= x2 <= max(width, 0) and 0 <= y1 <= y2 <= max(height, 0)
        assert "<|ref|>" not in block.text and "<|det|>" not in block.text
    assert "<|ref|>" not in parsed.markdown and "<|/det|>" not in parsed.markdown
    assert [b.index for b in parsed.blocks] == list(range(len(parsed.blocks)))


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.text(), token_soup), prompt=st.sampled_from(PROMPTS))
def test_parse_to_raw_parse_round_trips_blocks(raw: str, prompt: str | None) -> None:
    first = parse(raw, width=800, height=600, prompt=prompt)
    again = parse(to_raw(first.blocks, ref_is_text=first.ref_is_text), width=800, height=600, prompt=prompt)
    assert again.blocks == first.blocks
    assert again.ref_is_text == first.ref_is_text
    assert again.markdown == first.markdown


@given(raw=st.text().filter(lambda s: "<|" not in s and "<｜" not in s and s.strip()))
def test_untagged_answer_is_one_text_block_holding_everything(raw: str) -> None:
    parsed = parse(raw, width=10, height=10, prompt="<image>\nFree OCR.")
    assert [(b.label, b.text) for b in parsed.blocks] == [("text", raw.strip())]
    assert not parsed.has_grounding


labels = st.text(alphabet=st.characters(blacklist_characters="<>|\n"), min_size=1, max_size=12).map(str.strip)
labels = labels.filter(bool)


@st.composite
def grid_box(draw: st.DrawFn) -> tuple[int, int, int, int]:
    x1, y1 = draw(st.integers(0, 998)), draw(st.integers(0, 998))
    return (x1, y1, draw(st.integers(x1 + 1, 999)), draw(st.integers(y1 + 1, 999)))


boxes = st.lists(grid_box(), min_size=1, max_size=3)
contents = st.text(alphabet=st.characters(blacklist_characters="<|"), max_size=30).map(str.strip)


@given(st.lists(st.tuples(labels, boxes, contents), min_size=1, max_size=8))
def test_blocks_written_with_to_raw_parse_back_identically(
    spec: list[tuple[str, list[tuple[int, ...]], str]],
) -> None:
    raw = "".join(
        f"<|ref|>{label}<|/ref|><|det|>{[list(b) for b in bs]}<|/det|>\n{content}\n\n"
        for label, bs, content in spec
    )
    prompt = PROMPTS[1]
    first = parse(raw, width=1000, height=1000, prompt=prompt)
    assert [(b.label, list(b.boxes), b.text) for b in first.blocks] == [
        (label, [tuple(b) for b in bs], content) for label, bs, content in spec
    ]
    assert parse(to_raw(first.blocks), width=1000, height=1000, prompt=prompt).blocks == first.blocks


@given(st.lists(st.integers(-2000, 2000), min_size=4, max_size=4), st.sampled_from(["{}", "{} ", " {}"]))
def test_each_coordinate_is_clamped_to_the_grid_keeping_its_sign(values: list[int], spacing: str) -> None:
    literal = "[[" + ",".join(spacing.format(v) for v in values) + "]]"
    x1, y1, x2, y2 = (min(999, max(0, v)) for v in values)
    box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    expected = [box] if box[0] < box[2] and box[1] < box[3] else []
    assert parse_coordinates(literal)[0] == expected
