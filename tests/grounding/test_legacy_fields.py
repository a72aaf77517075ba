"""legacy_fields reproduces the seed Truss server's response for old clients."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from dsocr.grounding import legacy_fields, parse
from predict_contract import SEED_LONG_KEYS, SEED_SHORT_KEYS


def test_grounded_output_gets_the_long_form(raw_fixture: Callable[[str], str]) -> None:
    raw = raw_fixture("document_page.txt")
    fields = legacy_fields(parse(raw, width=1654, height=2339), prompt="P <image>", model_name="m")
    assert list(fields) == SEED_LONG_KEYS
    assert fields["raw_output"] == raw
    assert fields["image_size"] == [1654, 2339]
    assert fields["prompt_used"] == "P <image>" and fields["model_name"] == "m"
    assert fields["has_bounding_boxes"] is True
    assert len(fields["references"]) == 13
    assert fields["references"][0] == [
        "<|ref|>title<|/ref|><|det|>[[143, 62, 856, 101]]<|/det|>",
        "title",
        "[[143, 62, 856, 101]]",
    ]
    assert len(fields["image_references"]) == 2 and len(fields["other_references"]) == 11
    # Seed link format: one link per image *block*, image_{k}.jpg, followed by a newline.
    assert (
        "![](image_0.jpg)\n" in fields["extracted_text"] and "![](image_1.jpg)\n" in fields["extracted_text"]
    )
    assert "<|ref|>" not in fields["extracted_text"]
    assert fields["extracted_text"].startswith("\n# Attention Is Not All You Need")
    json.dumps(fields)


def test_untagged_output_gets_the_short_form(raw_fixture: Callable[[str], str]) -> None:
    raw = raw_fixture("free_ocr.txt")
    fields = legacy_fields(parse(raw, width=10, height=20), prompt="Free OCR.", model_name="m")
    assert list(fields) == SEED_SHORT_KEYS
    assert fields == {
        "extracted_text": raw,
        "image_size": [10, 20],
        "prompt_used": "Free OCR.",
        "model_name": "m",
    }


def test_ref_without_complete_match_is_long_form_without_boxes() -> None:
    raw = "<|ref|>title<|/ref|><|det|>[[12, 3"
    fields = legacy_fields(parse(raw, width=10, height=10), prompt="p", model_name="m")
    assert fields["has_bounding_boxes"] is False
    assert fields["references"] == [] and fields["extracted_text"] == raw


def test_malformed_coordinates_are_returned_verbatim_not_evaluated() -> None:
    raw = "<|ref|>text<|/ref|><|det|>__import__('os').system('false')<|/det|>\nhi"
    fields = legacy_fields(parse(raw, width=10, height=10), prompt="p", model_name="m")
    assert fields["references"][0][2] == "__import__('os').system('false')"
    assert fields["extracted_text"] == "\nhi"


SEED_REGEX = re.compile(r"(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)", re.DOTALL)
soup = st.lists(
    st.sampled_from(
        ["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|/ref|><|det|>", "image", "a", "\n", "[[1"]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(raw=soup)
def test_references_equal_the_seed_regex_findall(raw: str) -> None:
    fields = legacy_fields(parse(raw, width=1, height=1), prompt="p", model_name="m")
    if "<|ref|>" in raw:
        assert fields["references"] == [list(m) for m in SEED_REGEX.findall(raw)]


def test_looping_output_of_unmatched_refs_has_no_references() -> None:
    # 10k unmatched refs: the seed's regex rescans to the end for each (quadratic); ours is linear.
    raw = "<|ref|>a<|/ref|>" * 10_000
    fields = legacy_fields(parse(raw, width=1, height=1), prompt="p", model_name="m")
    assert fields["references"] == [] and fields["extracted_text"] == raw


def test_ocr_shape_extracted_text_keeps_every_line_the_model_read(raw_fixture: Callable[[str], str]) -> None:
    # The OCR prompt puts each line's text inside the ref; the seed deleted those spans whole and
    # answered newlines only. The seed's shape (line order, line breaks) stays; the text comes back.
    raw = raw_fixture("ocr_photo.txt")
    prompt = "<image>\n<|grounding|>OCR this image."
    fields = legacy_fields(parse(raw, width=800, height=600, prompt=prompt), prompt=prompt, model_name="m")
    assert list(fields) == SEED_LONG_KEYS
    assert fields["extracted_text"].splitlines() == [
        "越过高峰",
        "另一种人生",
        "OPEN 24 HOURS",
        "Cafe & Bakery",
    ]
    assert fields["has_bounding_boxes"] is True and len(fields["other_references"]) == 4


def test_ocr_shape_keeps_a_line_that_reads_image_as_text() -> None:
    # In the OCR shape a ref is what was read, so the word "image" is text, not a figure to link.
    raw = (
        "<|ref|>image<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n"
        "<|ref|>caption<|/ref|><|det|>[[5, 6, 7, 8]]<|/det|>"
    )
    prompt = "<image>\n<|grounding|>OCR this image."
    fields = legacy_fields(parse(raw, width=10, height=10, prompt=prompt), prompt=prompt, model_name="m")
    assert fields["extracted_text"] == "image\ncaption"
