"""A page's encoder views (global view and tiles) built from its raw pixels with torch ops.

Upstream's DeepSeek-OCR processor builds the views with Pillow in vLLM's front process: a bicubic
resize to the tile grid, a crop per tile, a bicubic contain-resize padded onto the global view's
square, then ToTensor/Normalize. That is 53 ms of CPU per A4 page on a 2-core dev box and
124–143 ms on the H100's host (bench/README.md), and 21 MB of bf16 per page crossing
to the engine core. Here the front process only plans the geometry (``plan_views``,
integers) and sends the page's uint8 pixels; the model builds the views on its own device
(``render_views``).

The pixels are bit-identical to Pillow's: ``resize_bicubic`` runs Pillow's own algorithm for 8-bit
images (``Resample.c``): the same double-precision bicubic coefficients (a = -0.5, support 2
scaled by the downscale factor), the same 22-bit fixed-point rounding, two passes (columns and
rows, in the order this Pillow picks, found once by probing it) with a uint8 image between them.
Integer arithmetic makes the result independent of the order of the sums, so it is the same on a
GPU; tests compare it with Pillow itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

__all__ = ["PLAN_LENGTH", "ViewPlan", "pillow_order_known", "plan_views", "render_views", "resize_bicubic"]

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images
_BICUBIC_A = -0.5  # Pillow's bicubic filter constant
_BICUBIC_SUPPORT = 2.0
# Integers in ``ViewPlan.as_row``.
PLAN_LENGTH = 15


class ViewPlan(NamedTuple):
    """Where a page's views come from, as upstream's processor would build them.

    ``stretch``: the size the page is first resized to (non-crop modes stretch it to
    ``image_size²``; the page's own size otherwise). ``fit``: the contain-resized size pasted at
    ``offset`` onto a ``base``² canvas of ``fill`` (the global view). ``grid`` (across, down): the
    page is resized to ``grid · tile`` and cut row-major into tiles; no tiles when 1×1.
    """

    height: int
    width: int
    stretch: tuple[int, int]
    fit: tuple[int, int]
    offset: tuple[int, int]
    base: int
    fill: tuple[int, int, int]
    grid: tuple[int, int]
    tile: int

    @property
    def tiles(self) -> int:
        across, down = self.grid
        return across * down if across > 1 or down > 1 else 0

    def as_row(self) -> list[int]:
        """The plan as one row of integers, for a tensor that crosses process boundaries."""
        return [
            self.height,
            self.width,
            *self.stretch,
            *self.fit,
            *self.offset,
            self.base,
            *self.fill,
            *self.grid,
            self.tile,
        ]

    @classmethod
    def from_row(cls, row: list[int]) -> ViewPlan:
        h, w, sw, sh, fw, fh, ox, oy, base, r, g, b, across, down, tile = (int(v) for v in row)
        return cls(h, w, (sw, sh), (fw, fh), (ox, oy), base, (r, g, b), (across, down), tile)


def plan_views(
    width: int,
    height: int,
    *,
    base_size: int,
    image_size: int,
    crop_mode: bool,
    grid: tuple[int, int],
    fill: tuple[int, int, int],
) -> ViewPlan:
    """The plan for one ``width × height`` page, following upstream's ``tokenize_with_images``.

    ``grid`` is the tile grid upstream's processor picks for this page (``(1, 1)`` when it does not
    tile). The global view's geometry is Pillow's ``ImageOps.pad`` (``contain``, then a paste at
    the centre, rounding as Python's ``round`` does).
    """
    stretch = (width, height) if crop_mode else (image_size, image_size)
    sw, sh = stretch
    fw, fh = base_size, base_size
    if sw / sh != base_size / base_size:  # ImageOps.contain
        if sw / sh > 1:
            new_height = round(sh / sw * base_size)
            fh = new_height if new_height != base_size else fh
        else:
            new_width = round(sw / sh * base_size)
            fw = new_width if new_width != base_size else fw
    offset = (round((base_size - fw) * 0.5), 0) if fw != base_size else (0, round((base_size - fh) * 0.5))
    return ViewPlan(height, width, stretch, (fw, fh), offset, base_size, fill, grid, image_size)


def render_views(pixels: torch.Tensor, plan: ViewPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """A page's global view ``[3, base, base]`` and tiles ``[n, 3, tile, tile]``, uint8.

    ``pixels``: the page as ``[height, width, 3]`` uint8 (on any device; the views are built there).
    """
    image = pixels.view(plan.height, plan.width, 3).permute(2, 0, 1)
    stretched = resize_bicubic(image, *plan.stretch)
    fitted = resize_bicubic(stretched, *plan.fit)
    view = pixels.new_empty((3, plan.base, plan.base))
    for channel, value in zip(view, plan.fill, strict=True):
        channel.fill_(value)
    (x, y), (fw, fh) = plan.offset, plan.fit
    view[:, y : y + fh, x : x + fw] = fitted
    if not plan.tiles:
        return view, image.new_empty((0, 3, plan.tile, plan.tile))
    across, down = plan.grid
    side = plan.tile
    grid = resize_bicubic(image, across * side, down * side)
    tiles = grid.view(3, down, side, across, side).permute(1, 3, 0, 2, 4).reshape(-1, 3, side, side)
    return view, tiles


def resize_bicubic(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``image`` (``[channels, height, width]`` uint8) resized as Pillow's BICUBIC resize does."""
    rule = _pass_order_rule()
    if rule is None:
        raise RuntimeError("this Pillow resizes in an order dsocr does not reproduce")
    return _resize_in_order(image, width, height, rule)


def pillow_order_known() -> bool:
    """Whether the installed Pillow orders its two passes as ``resize_bicubic`` can (checked once)."""
    return _pass_order_rule() is not None


def _columns_first(in_width: int, in_height: int, width: int, height: int) -> bool:
    return True


def _rows_first_when_height_shrinks_more(in_width: int, in_height: int, width: int, height: int) -> bool:
    # Newer Pillow (12.3 and 13.0 do; Resample.c): rows first when the height shrinks by more
    # than twice as many pixels as the width.
    shrink = in_height - height
    return not (shrink > 0 and shrink > (in_width - width) * 2)


_PassOrder = Callable[[int, int, int, int], bool]


@lru_cache(maxsize=1)
def _pass_order_rule() -> _PassOrder | None:
    """The order rule the installed Pillow follows, found by resizing small probe images.

    Pillow changed it between releases; the probes are size pairs on which the known rules
    disagree. ``None`` if Pillow matches none of them: the caller then keeps Pillow in charge.
    """
    rng = np.random.default_rng(0)
    probes = [((16, 24), (20, 5)), ((24, 16), (5, 20)), ((30, 31), (12, 9)), ((9, 40), (11, 13))]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for (w, h), _ in probes]
    for rule in (_rows_first_when_height_shrinks_more, _columns_first):
        if all(
            np.array_equal(
                np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)),
                _resize_in_order(torch.from_numpy(pixels).permute(2, 0, 1), *size, rule)
                .permute(1, 2, 0)
                .numpy(),
            )
            for pixels, (_, size) in zip(images, probes, strict=True)
        ):
            return rule
    return None


def _resize_in_order(image: torch.Tensor, width: int, height: int, rule: _PassOrder) -> torch.Tensor:
    passes = [(width, 2), (height, 1)]  # columns, then rows, unless the rule says otherwise
    if not rule(image.shape[2], image.shape[1], width, height):
        passes.reverse()
    out = image
    for size, dim in passes:
        if size != image.shape[dim]:
            out = _resample(out, size, dim)
    return out


def _resample(image: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """One pass of Pillow's resample along ``dim`` (1: rows, 2: columns), uint8 in and out.

    Accumulates tap by tap in int32, as Pillow does per pixel: the working memory is one int32
    copy of the output, and the coefficients stay on the device between pages.
    """
    index, weights = _device_coefficients(image.shape[dim], size, image.device)
    shape = list(image.shape)
    shape[dim] = size
    weight_shape = [1, 1, 1]
    weight_shape[dim] = size
    acc = torch.full(shape, 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=image.device)
    for tap_index, tap_weights in zip(index, weights, strict=True):
        acc += image.index_select(dim, tap_index) * tap_weights.view(weight_shape)
    return (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


@lru_cache(maxsize=256)
def _device_coefficients(
    in_size: int, out_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_coefficients`` tap-major (``[taps, out]``) on ``device``, kept for the next page."""
    index, weights = _coefficients(in_size, out_size)
    return (
        torch.from_numpy(np.ascontiguousarray(index.T)).to(device),
        torch.from_numpy(np.ascontiguousarray(weights.T)).to(device),
    )


@lru_cache(maxsize=128)
def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for BICUBIC, vectorised.

    Returns each output pixel's input indices ``[out, taps]`` (int64) and fixed-point weights
    (int32; zero past the pixel's window, whose index is then a valid repeat of its first).
    Every double operation is Pillow's, in its order (the weight sum left to right), so the
    rounded weights are Pillow's.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    taps = math.ceil(support) * 2 + 1
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(centers + support + 0.5), in_size).astype(np.int64) - xmin
    offsets = np.arange(taps, dtype=np.int64)
    inside = offsets[None, :] < xmax[:, None]
    positions = (offsets[None, :] + xmin[:, None]).astype(np.float64)
    weights = np.where(inside, _bicubic((positions - centers[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    totals = np.cumsum(weights, axis=1)[:, -1:]  # sequential, as Pillow's loop adds them
    weights = np.divide(weights, totals, out=weights.copy(), where=totals != 0.0)
    scaled = weights * float(1 << _PRECISION_BITS)
    fixed = np.trunc(np.where(weights < 0, scaled - 0.5, scaled + 0.5)).astype(np.int32)
    index = np.where(inside, offsets[None, :] + xmin[:, None], xmin[:, None])
    used = int(xmax.max())  # Pillow's buffer is wider than any window; the rest is zeros
    return index[:, :used], np.where(inside, fixed, 0).astype(np.int32)[:, :used]


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's ``bicubic_filter`` (a = -0.5), element-wise, with its operation order."""
    a = _BICUBIC_A
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
