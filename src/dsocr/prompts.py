"""Prompt presets and prompt normalisation (reference §1).

Every prompt the engine sees has the official shape: the ``<image>`` tag first, exactly once, then
the instruction, with no trailing whitespace. ``build_prompt`` produces that shape from a preset name
or from a free prompt:

* ``build_prompt("document")`` → ``"<image>\\n<|grounding|>Convert the document to markdown."``
* ``build_prompt("locate", target="x")`` → ``"<image>\\nLocate <|ref|>x<|/ref|> in the image."``
* ``build_prompt(prompt="Free OCR.")`` → ``"<image>\\nFree OCR."`` (``<image>\\n`` prepended)
* ``build_prompt(prompt="Extract all text from this image. <image>")`` →
  ``"<image>\\nExtract all text from this image."``: a tag placed elsewhere is **moved to the front**,
  because every official prompt starts with it and the model was trained that way (§1.1). The text
  around the removed tag is joined with one space.
* ``prompt_from_text("document")`` → the document preset; ``prompt_from_text("Read it.")`` →
  ``"<image>\\nRead it."``: one text field that takes a preset name or a free prompt (``/predict``'s
  ``prompt``, a chat message's text part), so a preset name means the same on every route

One image per request is the supported contract (all official usage is single-image, and
multi-image prompts are reported not to work: https://github.com/deepseek-ai/DeepSeek-OCR/issues/190),
so a prompt with more than one ``<image>`` is rejected rather than silently sent with a single image.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Final

from dsocr.errors import InvalidInput

__all__ = [
    "DEFAULT_PRESET",
    "IMAGE_TAG",
    "PRESETS",
    "build_prompt",
    "is_grounded",
    "locate_target",
    "normalize_prompt",
    "preset_of",
    "prompt_from_text",
]

IMAGE_TAG: Final = "<image>"
GROUNDING_TAG: Final = "<|grounding|>"
REF_OPEN: Final = "<|ref|>"

# The six official prompts (config.py and README of deepseek-ai/DeepSeek-OCR). ``locate`` is a
# template with one ``{target}`` slot; the others are complete prompts.
PRESETS: Final = MappingProxyType(
    {
        "document": "<image>\n<|grounding|>Convert the document to markdown.",
        "ocr": "<image>\n<|grounding|>OCR this image.",
        "free": "<image>\nFree OCR.",
        "figure": "<image>\nParse the figure.",
        "describe": "<image>\nDescribe this image in detail.",
        "locate": "<image>\nLocate <|ref|>{target}<|/ref|> in the image.",
    }
)
# The official scripts' default PROMPT.
DEFAULT_PRESET: Final = "document"

_LOCATE_RE: Final = re.compile(
    r"<image>\nLocate <\|ref\|>(?P<target>.+?)<\|/ref\|> in the image\.", re.DOTALL
)
# Special-token syntax a locate target must not contain: it would change the prompt's structure.
_TAG_FRAGMENTS: Final = ("<|", "|>", IMAGE_TAG)


def build_prompt(preset: str | None = None, *, prompt: str | None = None, target: str | None = None) -> str:
    """Return the full prompt for a preset name or a free prompt, normalised.

    Give ``preset`` (one of ``PRESETS``; ``locate`` also needs ``target``) or ``prompt``, not both.
    With neither, the official default preset ``document`` is used. Raises ``InvalidInput`` naming
    the field at fault: ``prompt`` for an unknown preset or a bad free prompt, ``target`` for a
    missing or malformed locate target.
    """
    if preset is not None and prompt is not None:
        raise InvalidInput("give either a preset name or a free prompt, not both", field="prompt")
    if prompt is not None:
        if target is not None:
            raise InvalidInput("target is only used with the 'locate' preset", field="target")
        return normalize_prompt(prompt)

    name = (preset if preset is not None else DEFAULT_PRESET).strip().lower()
    if name not in PRESETS:
        known = ", ".join(PRESETS)
        raise InvalidInput(f"unknown prompt preset {preset!r}; known presets: {known}", field="prompt")
    if name != "locate":
        if target is not None:
            raise InvalidInput(f"target is only used with the 'locate' preset, not {name!r}", field="target")
        return PRESETS[name]
    return PRESETS["locate"].format(target=_check_target(target))


def prompt_from_text(text: str) -> str:
    """The full prompt for a text that is a preset name (any case, outer spaces ignored) or else a
    free prompt, normalised.

    ``locate`` alone is refused rather than sent to the model as the word: it needs a target, which
    a single text carries as the whole prompt. Raises ``InvalidInput(field="prompt")``; callers
    whose field has another name re-raise with theirs.
    """
    name = text.strip().lower()
    if name == "locate":
        raise InvalidInput(
            "the 'locate' preset needs a target; write the prompt in full, e.g. "
            "'Locate <|ref|>the title<|/ref|> in the image.'",
            field="prompt",
        )
    if name in PRESETS:
        return PRESETS[name]
    return normalize_prompt(text)


def normalize_prompt(prompt: str) -> str:
    """Bring a free prompt to the official shape: ``<image>`` first, exactly once, no outer whitespace.

    A prompt already starting with ``<image>`` keeps its text verbatim (only outer whitespace is
    stripped, as the HF path does). Raises ``InvalidInput(field="prompt")`` for a prompt with more
    than one ``<image>`` or without any instruction text.
    """
    text = prompt.strip()
    count = text.count(IMAGE_TAG)
    if count > 1:
        raise InvalidInput(
            f"prompt contains {count} {IMAGE_TAG} tags; one image per request is supported "
            "(send one request per image or page)",
            field="prompt",
        )
    if count == 1 and text.startswith(IMAGE_TAG):
        body = text[len(IMAGE_TAG) :]
        if not body.strip():
            raise InvalidInput("prompt has no instruction after <image>", field="prompt")
        return text
    if count == 1:
        before, _, after = text.partition(IMAGE_TAG)
        text = " ".join(part for part in (before.strip(), after.strip()) if part)
    if not text:
        raise InvalidInput("prompt is empty; give an instruction such as 'Free OCR.'", field="prompt")
    return f"{IMAGE_TAG}\n{text}"


def preset_of(prompt: str) -> str | None:
    """Name of the preset a full prompt is (``locate`` for any locate target), else ``None``.

    The prompt is normalised first, so ``"Free OCR. "`` and ``"<image>\\nFree OCR."`` are both
    ``free``. Engines and the grounding parser use this to know which output shape to expect.
    """
    try:
        text = normalize_prompt(prompt)
    except InvalidInput:
        return None
    for name, template in PRESETS.items():
        if name != "locate" and text == template:
            return name
    return "locate" if locate_target(text) is not None else None


def locate_target(prompt: str) -> str | None:
    """The referring expression of a locate prompt, or ``None`` when the prompt is not one."""
    match = _LOCATE_RE.fullmatch(prompt.strip())
    if match is None:
        return None
    target = match.group("target")
    if not target.strip() or any(fragment in target for fragment in _TAG_FRAGMENTS):
        return None
    return target


def is_grounded(prompt: str) -> bool:
    """Whether the model answers with ``<|ref|>…<|det|>`` boxes for this prompt.

    True for prompts containing ``<|grounding|>`` (``document``, ``ocr``) and for referring prompts,
    which contain ``<|ref|>`` (``locate`` and free prompts built the same way).
    """
    return GROUNDING_TAG in prompt or REF_OPEN in prompt


def _check_target(target: str | None) -> str:
    if target is None or not target.strip():
        raise InvalidInput("the 'locate' preset needs a non-empty target to find", field="target")
    for fragment in _TAG_FRAGMENTS:
        if fragment in target:
            raise InvalidInput(f"target must not contain special-token syntax {fragment!r}", field="target")
    return target.strip()
