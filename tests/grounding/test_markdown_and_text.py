"""Clean markdown and plain text rendering of parsed pages."""

from __future__ import annotations

from dsocr.grounding import markdown_to_text, parse

DOC_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def _md(raw: str) -> str:
    return parse(raw, width=100, height=100, prompt=DOC_PROMPT).markdown


def test_tags_are_removed_and_blocks_separated_by_one_blank_line() -> None:
    raw = (
        "<|ref|>title<|/ref|><|det|>[[1, 1, 90, 9]]<|/det|>\n# Title\n\n\n\n\n"
        "<|ref|>text<|/ref|><|det|>[[1, 10, 90, 20]]<|/det|>\nFirst.\n\n\n\nStill first.\n"
        "<|ref|>text<|/ref|><|det|>[[1, 30, 90, 40]]<|/det|>\nSecond."
    )
    assert _md(raw) == "# Title\n\nFirst.\n\nStill first.\n\nSecond."


def test_latex_colon_macros_are_rewritten_like_the_official_scripts() -> None:
    raw = "<|ref|>equation<|/ref|><|det|>[[1, 1, 90, 9]]<|/det|>\n\\[ f \\coloneqq g, \\; h \\eqqcolon k \\]"
    assert _md(raw) == "\\[ f := g, \\; h =: k \\]"


def test_center_wrappers_are_dropped_and_their_text_kept() -> None:
    raw = "<|ref|>image_caption<|/ref|><|det|>[[1, 1, 90, 9]]<|/det|>\n<center>Figure 3: Results</center>"
    assert _md(raw) == "Figure 3: Results"


def test_image_block_without_boxes_gets_no_link_and_no_crop() -> None:
    parsed = parse(
        "<|ref|>image<|/ref|><|det|>[[5, 5, 5, 9]]<|/det|>\n", width=100, height=100, prompt=DOC_PROMPT
    )
    assert parsed.markdown == ""
    assert parsed.blocks[0].crop_index is None and parsed.crop_boxes_px == ()


def test_duplicate_identical_image_tags_get_distinct_links() -> None:
    tag = "<|ref|>image<|/ref|><|det|>[[10, 10, 50, 50]]<|/det|>\n\n"
    parsed = parse(tag + tag, width=100, height=100, prompt=DOC_PROMPT)
    assert parsed.markdown == "![](images/0.png)\n\n![](images/1.png)"
    assert [b.crop_index for b in parsed.blocks] == [0, 1]


def test_plain_text_of_tables_is_tab_separated_with_entities_decoded() -> None:
    md = "<table><tr><th>A &amp; B</th><td><b>2</b></td></tr><tr><td>x &lt; y</td><td></td></tr></table>"
    # The empty last cell keeps its tab, so columns stay aligned for tools like `cut`.
    assert markdown_to_text(md + "\n\nAfter.") == "A & B\t2\nx < y\t\n\nAfter."


def test_plain_text_strips_headings_links_and_bold_but_keeps_latex() -> None:
    md = "## 2 Method\n\n![](images/0.png)\n\n**Note.** We set \\(x_{i}__{j}\\) and # is not a heading here."
    assert markdown_to_text(md) == "2 Method\n\nNote. We set \\(x_{i}__{j}\\) and # is not a heading here."


def test_ocr_shape_markdown_is_one_line_per_box() -> None:
    raw = (
        "<|ref|>Hello<|/ref|><|det|>[[1, 1, 9, 9]]<|/det|>\n"
        "<|ref|>world<|/ref|><|det|>[[1, 11, 9, 19]]<|/det|>\n"
    )
    parsed = parse(raw, width=100, height=100, prompt="<image>\n<|grounding|>OCR this image.")
    assert parsed.markdown == "Hello\nworld" and parsed.text == "Hello\nworld"


def test_plain_text_drops_inline_html_but_not_latex_comparisons() -> None:
    md = "x<sup>2</sup> and H<sub>2</sub>O, <b>bold</b><br/> \\(a<b\\) and \\(c>d\\)"
    assert markdown_to_text(md) == "x2 and H2O, bold \\(a<b\\) and \\(c>d\\)"
