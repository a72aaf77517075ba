"""Page views built with torch (dsocr.engine.vllm.page_views) against Pillow itself.

The vLLM engine on a GPU builds the encoder's views from a page's pixels on the GPU; they must be
the pixels upstream's processor builds with Pillow, bit for bit, or the model would see other
inputs than it was trained and tested with. (tests/vllm compare whole processor outputs.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dsocr.engine.vllm.page_views import PLAN_LENGTH, ViewPlan, plan_views, render_views, resize_bicubic
from dsocr.modes import PAD_COLOR, V1, gundam_grid

RNG_SEED = 11


def random_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def torch_resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    out = resize_bicubic(torch.from_numpy(pixels).permute(2, 0, 1), width, height)
    return out.permute(1, 2, 0).numpy()


def pillow_resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC))


def test_resize_is_pillows_bicubic_bit_for_bit_on_random_sizes() -> None:
    # Up, down, mixed, one axis only, 1-pixel edges; both of Pillow's pass orders (rows first when
    # the height shrinks by more than twice the width) come up among these.
    rng = np.random.default_rng(RNG_SEED)
    cases = [
        (
            int(rng.integers(1, 200)),
            int(rng.integers(1, 200)),
            int(rng.integers(1, 260)),
            int(rng.integers(1, 260)),
        )
        for _ in range(120)
    ]
    cases += [(1, 1, 7, 3), (9, 40, 9, 5), (40, 9, 3, 9), (300, 7, 17, 7), (5, 300, 5, 2)]
    for width, height, out_w, out_h in cases:
        pixels = random_image(rng, width, height)
        expected = pillow_resize(pixels, out_w, out_h)
        assert np.array_equal(torch_resize(pixels, out_w, out_h), expected), (width, height, out_w, out_h)


def test_a_4_page_to_gundam_tiles_and_global_view_is_pillows() -> None:
    # The benchmark's A4 page (1190×1684) at its two Gundam sizes, and a large downscale whose
    # filter spans 15 taps (4000 → 640), chunked by the pass.
    rng = np.random.default_rng(RNG_SEED + 1)
    for (width, height), (out_w, out_h) in (
        ((1190, 1684), (1280, 1920)),
        ((1190, 1684), (724, 1024)),
        ((4000, 300), (640, 300)),
    ):
        pixels = random_image(rng, width, height)
        assert np.array_equal(torch_resize(pixels, out_w, out_h), pillow_resize(pixels, out_w, out_h))


def pillow_views(image: Image.Image, mode_name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Upstream's processor's view-building steps, with Pillow (tokenize_with_images)."""
    mode = V1.mode(mode_name)
    grid = gundam_grid(*image.size, image_size=mode.image_size) if mode.crop_mode else (1, 1)
    tiles = []
    if grid != (1, 1):
        across, down = grid
        side = mode.image_size
        resized = image.resize((across * side, down * side))
        tiles = [
            np.asarray(resized.crop((c * side, r * side, (c + 1) * side, (r + 1) * side)))
            for r in range(down)
            for c in range(across)
        ]
    if not mode.crop_mode:
        image = image.resize((mode.image_size, mode.image_size))
    view = ImageOps.pad(image, (mode.base_size, mode.base_size), color=PAD_COLOR)
    return np.asarray(view), tiles


@pytest.mark.parametrize("mode_name", ["gundam", "tiny", "small", "base", "large"])
def test_views_from_a_plan_are_upstreams_pillow_views(mode_name: str) -> None:
    rng = np.random.default_rng(RNG_SEED + 2)
    mode = V1.mode(mode_name)
    # Portrait, landscape, square, smaller than a tile, one side just over a tile, very wide.
    for width, height in ((1190, 1684), (800, 600), (640, 640), (300, 500), (641, 200), (2000, 333)):
        pixels = random_image(rng, width, height)
        grid = gundam_grid(width, height, image_size=mode.image_size) if mode.crop_mode else (1, 1)
        plan = plan_views(
            width,
            height,
            base_size=mode.base_size,
            image_size=mode.image_size,
            crop_mode=mode.crop_mode,
            grid=grid,
            fill=PAD_COLOR,
        )
        assert ViewPlan.from_row(plan.as_row()) == plan and len(plan.as_row()) == PLAN_LENGTH
        view, tiles = render_views(torch.from_numpy(pixels).reshape(-1), plan)
        expected_view, expected_tiles = pillow_views(Image.fromarray(pixels), mode_name)
        assert np.array_equal(view.permute(1, 2, 0).numpy(), expected_view), (width, height)
        assert tiles.shape[0] == len(expected_tiles) == plan.tiles
        for tile, expected in zip(tiles, expected_tiles, strict=True):
            assert np.array_equal(tile.permute(1, 2, 0).numpy(), expected), (width, height)
