"""Resolution modes, Gundam tiling, token counts and preprocessing (reference §2 and §9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from dsocr.errors import InvalidInput, ModelNotFound
from dsocr.modes import (
    PAD_COLOR,
    V1,
    V2,
    candidate_grids,
    gundam_grid,
    pixel_values,
    preprocess,
    profile_for,
    vision_tokens,
)

# §2.2: every admissible Gundam grid (across, down) with max 6 crops and its exact token count.
GUNDAM_TABLE = {
    (2, 1): 483,
    (1, 2): 493,
    (3, 1): 583,
    (1, 3): 603,
    (4, 1): 683,
    (2, 2): 693,
    (1, 4): 713,
    (5, 1): 783,
    (1, 5): 823,
    (6, 1): 883,
    (3, 2): 893,
    (2, 3): 903,
    (1, 6): 933,
}


def test_candidate_order_is_the_official_one() -> None:
    assert candidate_grids(2, 6) == [
        (1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2),
        (1, 5), (5, 1), (6, 1), (2, 3), (1, 6), (3, 2),
    ]  # fmt: skip


@pytest.mark.parametrize(("grid", "tokens"), GUNDAM_TABLE.items())
def test_gundam_token_table(grid: tuple[int, int], tokens: int) -> None:
    # An image with exactly the grid's aspect ratio, larger than one tile, gets that grid.
    across, down = grid
    width, height = 700 * across, 700 * down
    assert gundam_grid(width, height) == grid
    assert vision_tokens(width, height, "gundam") == tokens


@pytest.mark.parametrize(
    ("size", "grid", "tokens"),
    [
        ((1190, 1684), (2, 3), 903),  # A4 at 144 DPI
        ((1224, 1584), (2, 3), 903),  # US Letter at 144 DPI
        ((1684, 1190), (3, 2), 893),  # A4 landscape
        ((800, 600), (3, 2), 893),
        ((641, 600), (2, 2), 693),  # just above 640: upscaled to 1280×1280
        ((3000, 1000), (3, 1), 583),
        ((640, 640), (1, 1), 273),  # fits one tile: global view only ("degrades to Base")
        ((200, 640), (1, 1), 273),
        ((1, 1), (1, 1), 273),
    ],
)
def test_gundam_worked_examples(size: tuple[int, int], grid: tuple[int, int], tokens: int) -> None:
    assert gundam_grid(*size) == grid
    assert vision_tokens(*size) == tokens


@pytest.mark.parametrize(("mode", "tokens"), [("tiny", 73), ("small", 111), ("base", 273), ("large", 421)])
def test_fixed_modes_cost_the_same_for_any_size(mode: str, tokens: int) -> None:
    for size in [(1, 1), (640, 480), (1190, 1684), (5000, 300)]:
        assert vision_tokens(*size, mode) == tokens


def test_mode_names_are_case_insensitive() -> None:
    assert vision_tokens(1190, 1684, "Gundam") == 903


def test_exact_tie_prefers_the_larger_grid_only_for_large_images() -> None:
    # aspect 1.75 lies exactly between (3,2)=1.5 and (2,1)=2.0 … but (2,1) comes first in the
    # candidate list; (3,2) ties it and replaces it only when W·H > 0.5·640²·6.
    small = (700, 400)  # area 280 000 < 1 228 800: keep (2,1)
    large = (1750, 1000)  # area 1 750 000 > 1 228 800: take (3,2)
    assert abs(small[0] / small[1] - 2.0) == abs(small[0] / small[1] - 1.5)
    assert gundam_grid(*small) == (2, 1)
    assert gundam_grid(*large) == (3, 2)


def test_max_crops_nine_allows_three_by_three() -> None:
    assert gundam_grid(2000, 2000, max_crops=9) == (3, 3)
    assert gundam_grid(2000, 2000) == (2, 2)


@given(st.integers(1, 8000), st.integers(1, 8000))
def test_gundam_grid_stays_within_crop_limits(width: int, height: int) -> None:
    across, down = gundam_grid(width, height)
    if width <= 640 and height <= 640:
        assert (across, down) == (1, 1)
    else:
        assert 2 <= across * down <= 6
        assert vision_tokens(width, height) == GUNDAM_TABLE[(across, down)]


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((768, 500), 257), ((1190, 1684), 257 + 6 * 144), ((1536, 768), 545), ((3000, 1000), 689)],
)
def test_v2_counts(size: tuple[int, int], tokens: int) -> None:
    assert vision_tokens(*size, profile=V2) == tokens


def test_v2_possible_counts_are_the_paper_set() -> None:
    seen = {vision_tokens(w, h, profile=V2) for w in range(100, 5000, 97) for h in range(100, 5000, 89)}
    assert seen == {257, 545, 689, 833, 977, 1121}


def test_v2_rejects_v1_only_modes() -> None:
    with pytest.raises(InvalidInput) as info:
        vision_tokens(100, 100, "tiny", V2)
    assert info.value.field == "mode"
    assert "gundam" in info.value.message


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-5, 5)])
def test_empty_sizes_are_rejected(size: tuple[int, int]) -> None:
    with pytest.raises(InvalidInput) as info:
        vision_tokens(*size)
    assert info.value.field == "image"


def test_bad_crop_limits_are_rejected() -> None:
    with pytest.raises(InvalidInput):
        gundam_grid(2000, 1000, min_crops=4, max_crops=3)


def test_profiles_by_id_alias_and_directory() -> None:
    assert profile_for("deepseek-ai/DeepSeek-OCR") is V1
    assert profile_for("deepseek-ocr-2") is V2
    assert profile_for("/models/DeepSeek-OCR-2/") is V2
    assert profile_for("DEEPSEEK-AI/deepseek-ocr") is V1
    assert (V1.ngram_size, V1.ngram_window, V2.ngram_size, V2.ngram_window) == (30, 90, 20, 90)
    assert V1.architecture == "DeepseekOCRForCausalLM"
    assert V2.architecture == "DeepseekOCR2ForCausalLM"


def test_unknown_model_is_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as info:
        profile_for("Qwen/Qwen2-VL-7B")
    assert info.value.field == "model"


def _page(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width - 1, height // 10), fill=(200, 0, 0))
    draw.text((10, height // 2), "Hello DeepSeek-OCR", fill="black")
    return image


def _tokens_from_views(global_side: int, tile_side: int, grid: tuple[int, int], newlines: bool) -> int:
    q_global = math.ceil(global_side // 16 / 4)
    q_tile = math.ceil(tile_side // 16 / 4)
    across, down = grid
    tiled = grid != (1, 1)
    if newlines:
        return q_global * (q_global + 1) + 1 + (q_tile * down * (q_tile * across + 1) if tiled else 0)
    return q_global**2 + 1 + (across * down * q_tile**2 if tiled else 0)


PAGE_SIZES = [(1190, 1684), (1684, 1190), (800, 600), (641, 600), (500, 300), (3000, 1000)]


@pytest.mark.parametrize("size", PAGE_SIZES)
def test_gundam_preprocess_matches_token_count(size: tuple[int, int]) -> None:
    out = preprocess(_page(*size), "gundam")
    assert out.global_view.size == (1024, 1024)
    assert len(out.tiles) == (0 if out.grid == (1, 1) else out.grid[0] * out.grid[1])
    assert all(tile.size == (640, 640) for tile in out.tiles)
    assert out.grid == gundam_grid(*size)
    tile_side = out.tiles[0].width if out.tiles else 640
    assert _tokens_from_views(out.global_view.width, tile_side, out.grid, True) == vision_tokens(*size)


def test_global_view_keeps_aspect_with_gray_padding() -> None:
    out = preprocess(_page(1000, 500), "gundam")
    view = out.global_view
    # 1000×500 contained in 1024² → 1024×512 centred: 256 gray rows above and below.
    assert view.getpixel((512, 10)) == PAD_COLOR
    assert view.getpixel((512, 1013)) == PAD_COLOR
    assert view.getpixel((512, 300)) != PAD_COLOR


def test_tiles_are_row_major_pieces_of_the_stretched_image() -> None:
    image = Image.new("RGB", (1280, 640), "white")
    ImageDraw.Draw(image).rectangle((640, 0, 1279, 639), fill=(0, 0, 255))
    out = preprocess(image, "gundam")
    assert out.grid == (2, 1)
    left, right = out.tiles
    assert left.getpixel((320, 320)) == (255, 255, 255)
    assert right.getpixel((320, 320)) == (0, 0, 255)


@pytest.mark.parametrize(("mode", "side"), [("tiny", 512), ("small", 640)])
def test_tiny_and_small_stretch_without_padding(mode: str, side: int) -> None:
    out = preprocess(_page(1000, 400), mode)
    assert out.global_view.size == (side, side)
    assert out.tiles == [] and out.grid == (1, 1)
    # Stretched, so no gray border: the red band fills the top of the square.
    assert out.global_view.getpixel((side // 2, 2)) == (200, 0, 0)
    assert _tokens_from_views(side, side, (1, 1), True) == vision_tokens(1000, 400, mode)


@pytest.mark.parametrize(("mode", "side"), [("base", 1024), ("large", 1280)])
def test_base_and_large_pad_keeping_aspect(mode: str, side: int) -> None:
    out = preprocess(_page(1000, 400), mode)
    assert out.global_view.size == (side, side)
    assert out.global_view.getpixel((side // 2, 2)) == PAD_COLOR
    assert _tokens_from_views(side, side, (1, 1), True) == vision_tokens(1000, 400, mode)


def test_v2_preprocess_uses_768_tiles() -> None:
    out = preprocess(_page(1190, 1684), profile=V2)
    assert out.global_view.size == (1024, 1024)
    assert [tile.size for tile in out.tiles] == [(768, 768)] * 6
    assert _tokens_from_views(1024, 768, out.grid, False) == vision_tokens(1190, 1684, profile=V2)


def test_non_rgb_input_is_converted() -> None:
    out = preprocess(Image.new("L", (700, 700), 30), "gundam")
    assert out.global_view.mode == "RGB"
    assert all(tile.mode == "RGB" for tile in out.tiles)


def test_pixel_values_are_chw_in_minus_one_to_one() -> None:
    image = Image.new("RGB", (3, 2), (255, 0, 0))
    image.putpixel((0, 0), PAD_COLOR)
    values = pixel_values(image)
    assert values.shape == (3, 2, 3) and values.dtype == np.float32
    assert values[0, 1, 1] == 1.0 and values[1, 1, 1] == -1.0  # red: R = 1, G = -1
    assert values[:, 0, 0] == pytest.approx([127 / 255 * 2 - 1] * 3)  # pad gray ≈ -0.004
