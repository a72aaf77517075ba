"""OCR-style prompts: the ref text is the recognised text, detected from the prompt or guessed."""

from __future__ import annotations

from collections.abc import Callable

from dsocr.grounding import parse, ref_is_text_for_prompt

OCR_PROMPT = "<image>\n<|grounding|>OCR this image."


def test_official_sample_from_the_readme_gives_text_and_box() -> None:
    parsed = parse("<|ref|>越过高峰<|/ref|><|det|>[[547, 703, 604, 730]]<|/det|>", width=999, height=1998)
    assert parsed.ref_is_text
    (block,) = parsed.blocks
    assert (block.label, block.text, block.boxes) == ("越过高峰", "越过高峰", ((547, 703, 604, 730),))
    assert block.boxes_px == ((547, 1406, 604, 1460),)
    assert parsed.markdown == "越过高峰" and parsed.text == "越过高峰"


def test_ocr_prompt_keeps_every_line_as_text_in_order(raw_fixture: Callable[[str], str]) -> None:
    parsed = parse(raw_fixture("ocr_photo.txt"), width=640, height=480, prompt=OCR_PROMPT)
    assert [b.text for b in parsed.blocks] == ["越过高峰", "另一种人生", "OPEN 24 HOURS", "Cafe & Bakery"]
    assert all(len(b.boxes) == 1 for b in parsed.blocks)
    assert parsed.markdown == "越过高峰\n另一种人生\nOPEN 24 HOURS\nCafe & Bakery"
    assert parsed.warnings == ()


def test_ocr_shape_is_guessed_without_a_prompt(raw_fixture: Callable[[str], str]) -> None:
    parsed = parse(raw_fixture("ocr_photo.txt"), width=640, height=480)
    assert parsed.ref_is_text
    assert parsed.markdown.splitlines()[2] == "OPEN 24 HOURS"


def test_layout_labels_without_content_stay_document_shape() -> None:
    # An image-only page: known labels and no content is a document, not four lines reading "image".
    raw = "<|ref|>image<|/ref|><|det|>[[0, 0, 500, 500]]<|/det|>\n\n"
    parsed = parse(raw, width=100, height=100)
    assert not parsed.ref_is_text
    assert parsed.markdown == "![](images/0.png)"


def test_a_word_that_is_also_a_label_is_text_under_the_ocr_prompt() -> None:
    raw = (
        "<|ref|>image<|/ref|><|det|>[[10, 10, 200, 60]]<|/det|>\n"
        "<|ref|>title<|/ref|><|det|>[[10, 70, 200, 120]]<|/det|>"
    )
    parsed = parse(raw, width=100, height=100, prompt=OCR_PROMPT)
    assert parsed.markdown == "image\ntitle"
    assert parsed.crop_boxes_px == ()


def test_locate_prompt_returns_every_box_of_the_target() -> None:
    prompt = "<image>\nLocate <|ref|>先天下之忧而忧<|/ref|> in the image."
    raw = "<|ref|>先天下之忧而忧<|/ref|><|det|>[[100, 200, 300, 240], [100, 600, 300, 640]]<|/det|>"
    (block,) = parse(raw, width=1000, height=1000, prompt=prompt).blocks
    assert block.text == "先天下之忧而忧" and len(block.boxes) == 2


def test_text_after_an_ocr_box_is_kept_with_a_warning() -> None:
    raw = "<|ref|>STOP<|/ref|><|det|>[[1, 1, 50, 50]]<|/det|>\nunexpected trailing words"
    parsed = parse(raw, width=100, height=100, prompt=OCR_PROMPT)
    assert [(b.label, b.text) for b in parsed.blocks] == [
        ("STOP", "STOP"),
        ("text", "unexpected trailing words"),
    ]
    assert any("kept as its own block" in w for w in parsed.warnings)


def test_prompt_shapes() -> None:
    assert ref_is_text_for_prompt(OCR_PROMPT) is True
    assert ref_is_text_for_prompt("<image>\n<|grounding|>Convert the document to markdown.") is False
    assert ref_is_text_for_prompt("<image>\nFree OCR.") is None
    assert ref_is_text_for_prompt(None) is None
