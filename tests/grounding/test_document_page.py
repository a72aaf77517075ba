"""A full document page (Convert the document to markdown.) parsed into blocks and markdown."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from dsocr.grounding import blocks_to_json, parse, parsed_to_json
from dsocr.types import ParsedOutput

DOC_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
RAW_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "raw"


@pytest.fixture
def page(raw_fixture: Callable[[str], str]) -> ParsedOutput:
    return parse(raw_fixture("document_page.txt"), width=1654, height=2339, prompt=DOC_PROMPT)


def test_blocks_come_in_reading_order_with_labels(page: ParsedOutput) -> None:
    assert [b.label for b in page.blocks] == [
        "title",
        "text",
        "sub_title",
        "text",
        "equation",
        "table_caption",
        "table",
        "image",
        "image_caption",
        "image",
        "image_caption",
        "text",
        "footnote",
    ]
    assert [b.index for b in page.blocks] == list(range(13))
    assert page.warnings == ()
    assert page.has_grounding and not page.ref_is_text


def test_block_text_is_the_content_after_the_tags(page: ParsedOutput) -> None:
    title, authors = page.blocks[0], page.blocks[1]
    assert title.text == "# Attention Is Not All You Need for Document OCR"
    assert authors.text == "Ada Lovelace, Charles Babbage"
    table = page.blocks[6]
    assert table.text.startswith("<table><tr><td>Ratio</td>") and table.text.endswith("</table>")
    # Image blocks have no content of their own.
    assert page.blocks[7].text == ""


def test_boxes_are_on_the_grid_and_scaled_to_pixels(page: ParsedOutput) -> None:
    title = page.blocks[0]
    assert title.boxes == ((143, 62, 856, 101),)
    assert title.boxes_px == (
        (int(143 / 999 * 1654), int(62 / 999 * 2339), int(856 / 999 * 1654), int(101 / 999 * 2339)),
    )


def test_multi_box_image_block_keeps_every_box_and_gets_one_crop_each(page: ParsedOutput) -> None:
    first_image, second_image = page.blocks[7], page.blocks[9]
    assert first_image.crop_index == 0
    assert second_image.boxes == ((520, 478, 880, 610), (520, 620, 880, 760))
    assert second_image.crop_index == 1
    assert len(page.crop_boxes_px) == 3
    assert page.crop_boxes_px[1:] == second_image.boxes_px


def test_markdown_links_every_crop_once_in_crop_order(page: ParsedOutput) -> None:
    md = page.markdown
    assert "<|ref|>" not in md and "<|det|>" not in md
    links = [line for line in md.splitlines() if line.startswith("![](")]
    assert links == ["![](images/0.png)", "![](images/1.png)", "![](images/2.png)"]


def test_markdown_keeps_content_and_rewrites_coloneqq_and_center(page: ParsedOutput) -> None:
    md = page.markdown
    assert md.startswith("# Attention Is Not All You Need for Document OCR\n\nAda Lovelace")
    assert r"\rho := \frac" in md and r"\coloneqq" not in md
    assert "Figure 1: The encoder." in md and "<center>" not in md
    assert "\n\n\n" not in md
    assert "<table><tr><td>Ratio</td>" in md


def test_plain_text_drops_markup_but_keeps_latex(page: ParsedOutput) -> None:
    text = page.text
    assert text.startswith("Attention Is Not All You Need for Document OCR\n\nAda Lovelace")
    assert "## 1 Introduction" not in text and "1 Introduction" in text
    assert "Ratio\tTokens\tPrecision\n<10x\t64\t97.3%" in text
    assert "![](" not in text
    assert r"\frac{N_{\text{text}}}{N_{\text{vision}}}" in text
    assert "Results. Accuracy degrades" in text


def test_blocks_to_json_is_the_wire_shape(page: ParsedOutput) -> None:
    wire = blocks_to_json(page)
    assert wire[0] == {
        "index": 0,
        "label": "title",
        "text": "# Attention Is Not All You Need for Document OCR",
        "boxes": [[143, 62, 856, 101]],
        "boxes_px": [list(page.blocks[0].boxes_px[0])],
    }
    assert wire[9]["crop_index"] == 1 and "crop_index" not in wire[8]


def test_text_before_the_first_tag_is_kept_as_a_text_block() -> None:
    raw = "Page 3\n<|ref|>title<|/ref|><|det|>[[1, 2, 300, 40]]<|/det|>\n# Methods"
    parsed = parse(raw, width=100, height=100)
    assert [(b.label, b.text, b.boxes) for b in parsed.blocks] == [
        ("text", "Page 3", ()),
        ("title", "# Methods", ((1, 2, 300, 40),)),
    ]
    assert parsed.markdown == "Page 3\n\n# Methods"


def test_trailing_end_of_sentence_token_is_not_content() -> None:
    parsed = parse(
        "<|ref|>text<|/ref|><|det|>[[1, 2, 300, 40]]<|/det|>\nDone.<｜end▁of▁sentence｜>", width=10, height=10
    )
    assert parsed.blocks[0].text == "Done."
    assert parsed.markdown == "Done."


def test_page_matches_its_reviewed_golden_json(page: ParsedOutput) -> None:
    # document_page.json was written by `dsocr parse` and checked by hand (pixel maths, links,
    # table text); any change to the parser's output on this page must be deliberate.
    golden = json.loads((RAW_DIR / "document_page.json").read_text(encoding="utf-8"))
    assert parsed_to_json(page) == golden
