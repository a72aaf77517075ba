"""Token accounting for engines that do not run DeepSeek-OCR's tokenizer (the CPU engine, the fake).

Usage figures must mean the same on every engine, so vision tokens are what DeepSeek-OCR itself
would spend on the image (reference §2.2, exact), and text tokens are an estimate: about four
characters per token, the usual rule of thumb for English with a BPE tokenizer.
"""

from __future__ import annotations

import math

from dsocr.errors import InvalidInput
from dsocr.prompts import IMAGE_TAG

__all__ = ["MODES", "estimate_tokens", "prompt_tokens", "vision_tokens"]

# (base_size, image_size, crop_mode) of each resolution mode (§2.1).
MODES: dict[str, tuple[int, int, bool]] = {
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}
MIN_CROPS = 2
MAX_CROPS = 6
CHARS_PER_TOKEN = 4


def vision_tokens(width: int, height: int, mode: str = "gundam") -> int:
    """Image placeholder tokens DeepSeek-OCR uses for a ``width`` × ``height`` image in ``mode``."""
    if mode not in MODES:
        raise InvalidInput(f"unknown resolution mode {mode!r}; known modes: {', '.join(MODES)}", field="mode")
    base_size, image_size, crop_mode = MODES[mode]
    q_base = math.ceil((base_size // 16) / 4)
    q_tile = math.ceil((image_size // 16) / 4)
    tokens = q_base * (q_base + 1) + 1
    if crop_mode and (width > image_size or height > image_size):
        nw, nh = _tile_grid(width, height, image_size)
        if nw > 1 or nh > 1:
            tokens += (q_tile * nh) * (q_tile * nw + 1)
    return tokens


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: characters / 4, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(prompt: str, vision: int) -> int:
    """Prompt tokens as DeepSeek-OCR counts them: BOS + image placeholders + the (estimated) text."""
    return 1 + vision + estimate_tokens(prompt.replace(IMAGE_TAG, ""))


def _tile_grid(width: int, height: int, image_size: int) -> tuple[int, int]:
    # The official dynamic_preprocess: candidates sorted by tile count, closest aspect ratio wins,
    # an exact tie goes to the later (larger) grid when the image is big enough (§2.4).
    candidates = sorted(
        {
            (i, j)
            for n in range(MIN_CROPS, MAX_CROPS + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if MIN_CROPS <= i * j <= MAX_CROPS
        },
        key=lambda grid: grid[0] * grid[1],
    )
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for i, j in candidates:
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * i * j:
            best = (i, j)
    return best
