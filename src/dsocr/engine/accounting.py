"""Token accounting for engines that do not run DeepSeek-OCR's tokenizer (the CPU engine, the fake).

Usage figures must mean the same on every engine, so vision tokens are what DeepSeek-OCR itself
would spend on the image (``dsocr.modes``, exact), and text tokens are an estimate: about four
characters per token, the usual rule of thumb for English with a BPE tokenizer.
"""

from __future__ import annotations

import math

from dsocr import modes
from dsocr.prompts import IMAGE_TAG

__all__ = ["estimate_tokens", "prompt_tokens", "vision_tokens"]

CHARS_PER_TOKEN = 4


def vision_tokens(width: int, height: int, mode: str = "gundam") -> int:
    """Image placeholder tokens DeepSeek-OCR (v1) uses for a ``width`` × ``height`` image in ``mode``."""
    return modes.vision_tokens(width, height, mode)


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: characters / 4, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(prompt: str, vision: int) -> int:
    """Prompt tokens as DeepSeek-OCR counts them: BOS + image placeholders + the (estimated) text."""
    return 1 + vision + estimate_tokens(prompt.replace(IMAGE_TAG, ""))
