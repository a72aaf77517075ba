"""Token accounting for engines that do not run DeepSeek-OCR's tokenizer (the CPU engine, the fake).

Usage figures must mean the same on every engine, so vision tokens are what the request's model
itself would spend on the image (``dsocr.modes``, exact, by the model's profile: DeepSeek-OCR or
DeepSeek-OCR 2), and text tokens are an estimate: about four characters per token, the usual rule
of thumb for English with a BPE tokenizer.
"""

from __future__ import annotations

import math

from dsocr import modes
from dsocr.modes import V1, ModelProfile
from dsocr.prompts import IMAGE_TAG

__all__ = ["estimate_tokens", "prompt_tokens", "request_profile", "vision_tokens"]

CHARS_PER_TOKEN = 4


def request_profile(model: str | None, default: ModelProfile) -> ModelProfile:
    """The profile of the model an engine request goes to: ``default`` (the default model's) for
    ``model=None``, else the named extra model's, as :func:`dsocr.request.model_profile` picks it."""
    return default if model is None else modes.served_profile(model)


def vision_tokens(width: int, height: int, mode: str = "gundam", profile: ModelProfile = V1) -> int:
    """Image placeholder tokens ``profile``'s model uses for a ``width`` × ``height`` image in ``mode``."""
    return modes.vision_tokens(width, height, mode, profile)


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: characters / 4, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(prompt: str, vision: int) -> int:
    """Prompt tokens as DeepSeek-OCR counts them: BOS + image placeholders + the (estimated) text."""
    return 1 + vision + estimate_tokens(prompt.replace(IMAGE_TAG, ""))
