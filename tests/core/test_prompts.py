"""Prompt presets, normalisation and classification (reference §1)."""

from __future__ import annotations

import pytest

from dsocr.errors import InvalidInput
from dsocr.prompts import (
    PRESETS,
    build_prompt,
    is_grounded,
    locate_target,
    normalize_prompt,
    preset_of,
    prompt_from_text,
)

OFFICIAL = {
    "document": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
}


@pytest.mark.parametrize(("name", "expected"), OFFICIAL.items())
def test_presets_are_the_official_strings(name: str, expected: str) -> None:
    assert build_prompt(name) == expected
    assert preset_of(expected) == name


def test_no_preset_and_no_prompt_gives_the_official_default() -> None:
    assert build_prompt() == OFFICIAL["document"]


def test_preset_names_ignore_case_and_outer_spaces() -> None:
    assert build_prompt(" Free ") == OFFICIAL["free"]


def test_locate_inserts_the_target_between_ref_tags() -> None:
    prompt = build_prompt("locate", target="先天下之忧而忧")
    assert prompt == "<image>\nLocate <|ref|>先天下之忧而忧<|/ref|> in the image."
    assert preset_of(prompt) == "locate"
    assert locate_target(prompt) == "先天下之忧而忧"


@pytest.mark.parametrize("target", [None, "", "   "])
def test_locate_without_target_is_rejected_naming_target(target: str | None) -> None:
    with pytest.raises(InvalidInput) as info:
        build_prompt("locate", target=target)
    assert info.value.field == "target"


@pytest.mark.parametrize("target", ["a<|/ref|>b", "<|grounding|>x", "x <image>", "tail|>"])
def test_locate_target_with_special_token_syntax_is_rejected(target: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build_prompt("locate", target=target)
    assert info.value.field == "target"


def test_target_with_a_preset_other_than_locate_is_rejected() -> None:
    with pytest.raises(InvalidInput) as info:
        build_prompt("free", target="x")
    assert info.value.field == "target"


def test_unknown_preset_is_rejected_naming_prompt_and_listing_presets() -> None:
    with pytest.raises(InvalidInput) as info:
        build_prompt("markdown")
    assert info.value.field == "prompt"
    assert "document" in info.value.message


def test_preset_and_free_prompt_together_are_rejected() -> None:
    with pytest.raises(InvalidInput) as info:
        build_prompt("free", prompt="Free OCR.")
    assert info.value.field == "prompt"


def test_free_prompt_without_image_tag_gets_it_prepended() -> None:
    assert build_prompt(prompt="Free OCR.") == "<image>\nFree OCR."


def test_free_prompt_trailing_whitespace_is_stripped() -> None:
    # The transformers README examples end with a space; the vLLM paths would keep it.
    prompt = "<image>\n<|grounding|>Convert the document to markdown. "
    assert build_prompt(prompt=prompt) == OFFICIAL["document"]


def test_free_prompt_starting_with_image_tag_keeps_its_text() -> None:
    assert build_prompt(prompt="<image>\n这是一张") == "<image>\n这是一张"


def test_image_tag_at_the_end_is_moved_to_the_front() -> None:
    assert build_prompt(prompt="Extract all text from this image. <image>") == (
        "<image>\nExtract all text from this image."
    )


def test_image_tag_in_the_middle_is_moved_and_the_text_rejoined() -> None:
    assert normalize_prompt("Read this <image> carefully.") == "<image>\nRead this carefully."


def test_more_than_one_image_tag_is_rejected() -> None:
    with pytest.raises(InvalidInput) as info:
        build_prompt(prompt="<image>\n<image>\nCompare.")
    assert info.value.field == "prompt"
    assert "one image per request" in info.value.message


@pytest.mark.parametrize("prompt", ["", "   ", "<image>", "<image>\n  \n"])
def test_prompt_without_instruction_is_rejected(prompt: str) -> None:
    with pytest.raises(InvalidInput) as info:
        build_prompt(prompt=prompt)
    assert info.value.field == "prompt"


def test_preset_of_recognises_unnormalised_preset_text() -> None:
    assert preset_of("Free OCR.  ") == "free"
    assert preset_of("<|grounding|>OCR this image.") == "ocr"


def test_preset_of_free_text_is_none() -> None:
    assert preset_of("<image>\nExtract the table.") is None
    assert preset_of("<image>\n<image>\nFree OCR.") is None
    assert preset_of("<image>\nLocate <|ref|><|/ref|> in the image.") is None


def test_grounded_prompts_are_document_ocr_and_locate() -> None:
    grounded = {name for name in PRESETS if name != "locate" and is_grounded(build_prompt(name))}
    assert grounded == {"document", "ocr"}
    assert is_grounded(build_prompt("locate", target="x"))
    assert not is_grounded(build_prompt(prompt="Extract all text."))


def test_locate_target_is_none_for_other_prompts() -> None:
    assert locate_target(OFFICIAL["free"]) is None


@pytest.mark.parametrize(("name", "expected"), OFFICIAL.items())
def test_a_text_that_is_a_preset_name_means_that_preset(name: str, expected: str) -> None:
    # One text field (/predict's prompt, a chat text part) takes preset names and free prompts.
    assert prompt_from_text(name) == expected
    assert prompt_from_text(f"  {name.upper()} ") == expected


def test_a_text_that_is_not_a_preset_name_stays_a_free_prompt() -> None:
    assert prompt_from_text("Extract all text from this image. <image>") == (
        "<image>\nExtract all text from this image."
    )
    assert prompt_from_text("document please") == "<image>\ndocument please"


def test_locate_as_a_text_asks_for_its_target_instead_of_going_to_the_model() -> None:
    with pytest.raises(InvalidInput) as info:
        prompt_from_text("locate")
    assert info.value.field == "prompt"
    assert "Locate <|ref|>" in info.value.message
