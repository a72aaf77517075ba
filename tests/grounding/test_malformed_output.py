"""Malformed, truncated and looping outputs parse with warnings, never exceptions or silent loss."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dsocr.grounding import parse, parse_coordinates


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("[[550, s 331, 652, 345]]", [(550, 331, 652, 345)]),  # a stray letter, as in real outputs
        ("[[117, - 325, 500, 392]]", [(117, 325, 500, 392)]),  # a stray sign, ignored
        ("[60, 400, 940, 430]", [(60, 400, 940, 430)]),  # single-bracket list
        ("[[1, 2, 3, 4, 5, 6, 7, 8]]", [(1, 2, 3, 4), (5, 6, 7, 8)]),  # flat list of two boxes
        ("[[10.5, 20, 30.9, 40]]", [(10, 20, 30, 40)]),
    ],
)
def test_malformed_coordinates_are_repaired_with_a_warning(
    literal: str, expected: list[tuple[int, ...]]
) -> None:
    boxes, warnings = parse_coordinates(literal)
    assert boxes == expected
    assert warnings and "malformed" in warnings[0]


def test_well_formed_coordinates_give_no_warning() -> None:
    assert parse_coordinates("[[1, 2, 3, 4], [5,6,7,8]]") == ([(1, 2, 3, 4), (5, 6, 7, 8)], [])


@pytest.mark.parametrize("literal", ["[[12, 3", "[[1, 2, 3, 4], [5, 6", "", "[[a, b, c, d]]", "[[1, 2, 3]]"])
def test_incomplete_groups_are_dropped_not_guessed(literal: str) -> None:
    boxes, warnings = parse_coordinates(literal)
    assert all(len(b) == 4 for b in boxes) and len(boxes) <= 1
    assert warnings


def test_malformed_fixture_keeps_every_block_and_fixes_boxes(raw_fixture: Callable[[str], str]) -> None:
    parsed = parse(raw_fixture("malformed_coords.txt"), width=1000, height=1000)
    assert [b.text for b in parsed.blocks] == [
        "first line",
        "second line",
        "third line",
        "degenerate box line",
        "reversed and out-of-range line",
    ]
    assert [b.boxes for b in parsed.blocks] == [
        ((550, 331, 652, 345),),
        ((117, 325, 500, 392),),
        ((60, 400, 940, 430),),
        (),  # zero width: dropped
        ((60, 480, 940, 999),),  # clamped to 999, corners ordered
    ]
    joined = "\n".join(parsed.warnings)
    assert "degenerate box" in joined and "clamped" in joined and "malformed" in joined


def test_output_cut_inside_a_coordinate_list_keeps_earlier_blocks(raw_fixture: Callable[[str], str]) -> None:
    parsed = parse(raw_fixture("truncated.txt"), width=800, height=1000)
    assert [b.label for b in parsed.blocks] == ["title", "text", "text"]
    assert parsed.blocks[1].text.endswith("asked for")
    assert parsed.blocks[2].boxes == ()
    assert any("truncated" in w for w in parsed.warnings)
    assert parsed.markdown.endswith("asked for")


@pytest.mark.parametrize(
    ("raw", "labels_texts", "warning"),
    [
        ("<|ref|>title<|det|>[[1, 1, 9, 9]]<|/det|>\n# T", [("title", "# T")], "missing <|/ref|>"),
        ("<|ref|>title<|/ref|><|det|>[[1, 1, 9, 9]]\n# T", [("title", "# T")], "missing <|/det|>"),
        ("<|ref|>tit", [("tit", "")], "ends inside a <|ref|>"),
        ("<|det|>[[1, 1, 9, 9]]<|/det|>\norphan", [("", "orphan")], "without a <|ref|>"),
        ("<|ref|>text<|/ref|><|det|>[[1, 1, 9, 9]]<|/det|>\na<|/det|>b", [("text", "ab")], "stray <|/det|>"),
        ("<|ref|>text<|/ref|>\nno boxes", [("text", "no boxes")], None),
    ],
)
def test_broken_tags_keep_the_text_and_warn(
    raw: str, labels_texts: list[tuple[str, str]], warning: str | None
) -> None:
    parsed = parse(
        raw, width=100, height=100, prompt="<image>\n<|grounding|>Convert the document to markdown."
    )
    assert [(b.label, b.text) for b in parsed.blocks] == labels_texts
    if warning is not None:
        assert any(warning in w for w in parsed.warnings), parsed.warnings


def test_repetition_loop_parses_and_keeps_the_repeated_text(raw_fixture: Callable[[str], str]) -> None:
    raw = raw_fixture("repetition_loop.txt")
    parsed = parse(raw, width=1200, height=1600)
    assert [b.label for b in parsed.blocks] == ["title", "text"]
    assert parsed.blocks[1].text.count("The meeting was adjourned.") == 600
    assert parsed.warnings == ()


def test_warnings_are_capped_for_garbage_output() -> None:
    parsed = parse("<|/ref|>" * 1000, width=10, height=10)
    assert len(parsed.warnings) == 101
    assert parsed.warnings[-1] == "900 more warnings not shown"


def test_non_positive_image_size_is_a_warning() -> None:
    parsed = parse("<|ref|>text<|/ref|><|det|>[[1, 1, 9, 9]]<|/det|>\nx", width=0, height=-3)
    assert parsed.blocks[0].boxes_px == ((0, 0, 0, 0),)
    assert any("not positive" in w for w in parsed.warnings)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("[[-5, 10, 1200, 400]]", [(0, 10, 999, 400)]),
        ("[[10, -3, 200, 300], [-40, -1, 5, 5]]", [(10, 0, 200, 300), (0, 0, 5, 5)]),
        ("[[-5,10,-1,400]]", []),  # both x clamp to 0: zero width, dropped
        ("[[-5, s 10, 1200, 400]]", [(0, 10, 999, 400)]),  # malformed and negative
        ("[-7, 10, 20, 30]", [(0, 10, 20, 30)]),  # single-bracket list
    ],
)
def test_negative_coordinates_clamp_to_zero(literal: str, expected: list[tuple[int, ...]]) -> None:
    boxes, warnings = parse_coordinates(literal)
    assert boxes == expected
    assert any("clamped" in w for w in warnings), warnings


def test_a_negative_box_in_model_output_starts_at_the_page_edge() -> None:
    raw = "<|ref|>title<|/ref|><|det|>[[-5, 10, 1200, 400]]<|/det|>\n# Heading"
    parsed = parse(
        raw, width=999, height=999, prompt="<image>\n<|grounding|>Convert the document to markdown."
    )
    assert parsed.blocks[0].boxes == ((0, 10, 999, 400),)
    assert parsed.blocks[0].boxes_px == ((0, 10, 999, 400),)
