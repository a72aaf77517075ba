"""Resolution modes, model profiles, Gundam tiling, vision-token counts and preprocessing (§2, §9).

Everything here is an exact port of the official DeepSeek-OCR code (``process/image_process.py``),
not of upstream vLLM's processor, which only supports Gundam and stretches Base/Large (§2.6):

* ``gundam_grid`` reproduces the candidate-grid construction and tie rule bit for bit (§2.4);
* ``vision_tokens`` counts the ``<image>`` placeholder tokens the LM sees, for admission control
  and ``usage`` accounting (§2.2 for v1, §9.1 for DeepSeek-OCR 2);
* ``preprocess`` returns the padded global view and the tiles the encoder consumes.

Model profiles describe each served model (v1 ``deepseek-ai/DeepSeek-OCR`` with five modes, v2
``deepseek-ai/DeepSeek-OCR-2`` with one) so one API can serve both (§9.3).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from dsocr.errors import InvalidInput, ModelNotFound

__all__ = [
    "MODELS",
    "PAD_COLOR",
    "V1",
    "V2",
    "Mode",
    "ModelProfile",
    "Preprocessed",
    "candidate_grids",
    "gundam_grid",
    "pixel_values",
    "preprocess",
    "profile_for",
    "served_profile",
    "vision_tokens",
]

# ImageOps.pad colour: ``tuple(int(x * 255) for x in mean)`` with mean 0.5 (§2.5).
PAD_COLOR: Final = (127, 127, 127)
# SAM patch 16, then two stride-2 convolutions: one token per 64×64 pixels (§2.1).
_PATCH_SIZE: Final = 16
_DOWNSAMPLE: Final = 4
# Tiny and Small are stretched to a square; larger non-crop modes are only padded (§2.6).
_STRETCH_MAX_SIZE: Final = 640


@dataclass(frozen=True, slots=True, kw_only=True)
class Mode:
    """One resolution mode: global view side ``base_size``, tile side ``image_size``, tiling on/off."""

    name: str
    base_size: int
    image_size: int
    crop_mode: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelProfile:
    """What dsocr needs to know about one served model (§9.3)."""

    model_id: str  # Hugging Face id
    served_name: str  # the OpenAI ``model`` name
    architecture: str  # vLLM architecture class
    modes: Mapping[str, Mode]
    default_mode: str
    # Whether each row of the token grid ends in an ``image_newline`` token (v1 yes, v2 no).
    newline_tokens: bool
    min_crops: int
    max_crops: int
    # Official no-repeat n-gram parameters for single images (§4.1, §9.1).
    ngram_size: int
    ngram_window: int
    # Prompt presets the model card lists (v2 dropped four of the six).
    presets: tuple[str, ...]
    aliases: tuple[str, ...] = field(default=())

    def mode(self, name: str | None = None) -> Mode:
        """The named mode (case-insensitive; ``None`` = the default), else ``InvalidInput(field="mode")``."""
        key = (name or self.default_mode).strip().lower()
        try:
            return self.modes[key]
        except KeyError:
            known = ", ".join(self.modes)
            raise InvalidInput(
                f"mode {name!r} is not available for {self.model_id}; available: {known}", field="mode"
            ) from None


def _modes(*modes: Mode) -> Mapping[str, Mode]:
    return MappingProxyType({mode.name: mode for mode in modes})


V1: Final = ModelProfile(
    model_id="deepseek-ai/DeepSeek-OCR",
    served_name="deepseek-ocr",
    architecture="DeepseekOCRForCausalLM",
    modes=_modes(
        Mode(name="tiny", base_size=512, image_size=512, crop_mode=False),
        Mode(name="small", base_size=640, image_size=640, crop_mode=False),
        Mode(name="base", base_size=1024, image_size=1024, crop_mode=False),
        Mode(name="large", base_size=1280, image_size=1280, crop_mode=False),
        Mode(name="gundam", base_size=1024, image_size=640, crop_mode=True),
    ),
    default_mode="gundam",
    newline_tokens=True,
    min_crops=2,
    max_crops=6,
    ngram_size=30,
    ngram_window=90,
    presets=("document", "ocr", "free", "figure", "describe", "locate"),
)

V2: Final = ModelProfile(
    model_id="deepseek-ai/DeepSeek-OCR-2",
    served_name="deepseek-ocr-2",
    architecture="DeepseekOCR2ForCausalLM",
    # v2 has one mode: (0 or 2–6) × 768² tiles + one 1024² global view. It is named ``gundam`` so
    # that requests using the default mode name work with either model.
    modes=_modes(Mode(name="gundam", base_size=1024, image_size=768, crop_mode=True)),
    default_mode="gundam",
    newline_tokens=False,
    min_crops=2,
    max_crops=6,
    ngram_size=20,
    ngram_window=90,
    presets=("document", "free"),
)

MODELS: Final = (V1, V2)


def profile_for(model_id: str) -> ModelProfile:
    """The profile of a model given by HF id, served name or local directory (case-insensitive).

    A local directory is known by the ``architectures`` its ``config.json`` names
    (``DeepseekOCR2ForCausalLM`` is v2 whatever the directory is called), else by its last path
    component (``/models/DeepSeek-OCR-2``). Raises ``ModelNotFound(field="model")`` for anything
    else. The answer is kept per name, so a directory's ``config.json`` is read once.
    """
    profile = _known_profile(model_id)
    if profile is None:
        known = ", ".join(f"{p.model_id} ({p.served_name})" for p in MODELS)
        raise ModelNotFound(f"unknown model {model_id!r}; served models: {known}", field="model")
    return profile


def served_profile(*names: str | None) -> ModelProfile:
    """The profile of the first of ``names`` a profile knows (see :func:`profile_for`), else v1's.

    A model no profile knows (a fine-tune in a directory of its own, say) is served as
    DeepSeek-OCR v1. Empty and ``None`` names are skipped.
    """
    for name in names:
        if name:
            profile = _known_profile(name)
            if profile is not None:
                return profile
    return V1


# Bounded: the names a server meets are its default and extra models.
@functools.lru_cache(maxsize=64)
def _known_profile(model_id: str) -> ModelProfile | None:
    architectures = _config_architectures(model_id)
    for profile in MODELS:
        if profile.architecture in architectures:
            return profile
    key = model_id.strip().rstrip("/").lower()
    basename = key.rsplit("/", 1)[-1]
    for profile in MODELS:
        names = {profile.model_id.lower(), profile.served_name}
        if key in names or basename == profile.model_id.rsplit("/", 1)[-1].lower():
            return profile
    return None


# A model's config.json is a few kB; anything far bigger is not one.
_CONFIG_MAX_BYTES: Final = 1 << 20


def _config_architectures(model_id: str) -> tuple[str, ...]:
    """The ``architectures`` of ``model_id``'s ``config.json`` when it is a local model directory."""
    config = Path(model_id.strip()).expanduser() / "config.json"
    try:
        if not config.is_file() or config.stat().st_size > _CONFIG_MAX_BYTES:
            return ()
        data = json.loads(config.read_bytes())
    except (OSError, ValueError):
        # Unreadable or not JSON: the directory's name decides, as for any other name.
        return ()
    architectures = data.get("architectures") if isinstance(data, dict) else None
    if not isinstance(architectures, list):
        return ()
    return tuple(name for name in architectures if isinstance(name, str))


def candidate_grids(min_crops: int = 2, max_crops: int = 6) -> list[tuple[int, int]]:
    """Tile grids (across, down) in the official order (§2.4 step 1).

    Built exactly as the official code does (a set, then a stable sort by tile count), because the
    order among equal tile counts follows set iteration order and decides exact ties.
    """
    if min_crops < 1 or max_crops < min_crops:
        raise InvalidInput(
            f"crop limits must satisfy 1 <= min_crops <= max_crops, got {min_crops} and {max_crops}",
            field="max_crops",
        )
    grids = {
        (i, j)
        for n in range(min_crops, max_crops + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_crops <= i * j <= max_crops
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def gundam_grid(
    width: int, height: int, *, image_size: int = 640, min_crops: int = 2, max_crops: int = 6
) -> tuple[int, int]:
    """Tiles (across, down) the official Gundam preprocessing cuts an image of this size into.

    ``(1, 1)`` (no tiling, global view only) when the image fits in one tile in both dimensions.
    Otherwise the candidate whose aspect ratio is closest to ``width / height``; on an exact tie the
    later (larger) grid wins if ``width·height > 0.5·image_size²·i·j`` (§2.4 step 2).
    """
    _check_size(width, height)
    if width <= image_size and height <= image_size:
        return (1, 1)
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for i, j in candidate_grids(min_crops, max_crops):
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best_diff = diff
            best = (i, j)
        elif diff == best_diff and area > 0.5 * image_size * image_size * i * j:
            best = (i, j)
    return best


def vision_tokens(width: int, height: int, mode: str | None = None, profile: ModelProfile = V1) -> int:
    """Number of ``<image>`` placeholder tokens the LM sees for one image of this size.

    Includes the newline tokens (v1) and the view separator, i.e. exactly what the prompt length
    grows by: Tiny 73, Small 111, Base 273, Large 421, Gundam 273 to 933 (v1, max 6 crops);
    v2 257 + 144 per tile.
    """
    _check_size(width, height)
    chosen = profile.mode(mode)
    grid = _grid_for(width, height, chosen, profile)
    return _token_count(chosen, grid, profile)


class Preprocessed(NamedTuple):
    """The encoder's inputs for one image: global view, tiles (row-major) and the grid (across, down)."""

    global_view: Image.Image
    tiles: list[Image.Image]
    grid: tuple[int, int]


def preprocess(image: Image.Image, mode: str | None = None, profile: ModelProfile = V1) -> Preprocessed:
    """Cut one RGB image into the views the encoder expects (official semantics, §2.4–2.6).

    Crop modes: the whole image is stretched to ``(image_size·across, image_size·down)`` and cut
    row-major into square tiles (none when the grid is 1×1), and the global view is the image
    contain-resized onto a ``base_size`` square padded with ``PAD_COLOR``. Non-crop modes: Tiny and
    Small stretch the image to a square first; Base and Large only pad (aspect kept). Resampling is
    BICUBIC throughout. Callers convert to RGB (compositing transparency) beforehand; other modes are
    converted here with Pillow's default conversion.
    """
    _check_size(*image.size)
    chosen = profile.mode(mode)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    bicubic = Image.Resampling.BICUBIC
    if not chosen.crop_mode:
        side = chosen.image_size
        if side <= _STRETCH_MAX_SIZE:
            rgb = rgb.resize((side, side), bicubic)
        view = ImageOps.pad(rgb, (side, side), method=bicubic, color=PAD_COLOR)
        return Preprocessed(view, [], (1, 1))

    grid = _grid_for(rgb.width, rgb.height, chosen, profile)
    view = ImageOps.pad(rgb, (chosen.base_size, chosen.base_size), method=bicubic, color=PAD_COLOR)
    if grid == (1, 1):
        return Preprocessed(view, [], grid)
    across, down = grid
    tile = chosen.image_size
    resized = rgb.resize((tile * across, tile * down), bicubic)
    tiles = [
        resized.crop((col * tile, row * tile, (col + 1) * tile, (row + 1) * tile))
        for row in range(down)
        for col in range(across)
    ]
    return Preprocessed(view, tiles, grid)


def pixel_values(image: Image.Image) -> npt.NDArray[np.float32]:
    """One view as the encoder's input: CHW float32 in [-1, 1] (ToTensor, then mean/std 0.5, §2.5)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(((array - 0.5) / 0.5).transpose(2, 0, 1))


def _grid_for(width: int, height: int, mode: Mode, profile: ModelProfile) -> tuple[int, int]:
    if not mode.crop_mode:
        return (1, 1)
    return gundam_grid(
        width, height, image_size=mode.image_size, min_crops=profile.min_crops, max_crops=profile.max_crops
    )


def _queries(side: int) -> int:
    return math.ceil((side // _PATCH_SIZE) / _DOWNSAMPLE)


def _token_count(mode: Mode, grid: tuple[int, int], profile: ModelProfile) -> int:
    # Non-crop modes encode one ``image_size`` view (equal to base_size in every official mode).
    q_global = _queries(mode.base_size if mode.crop_mode else mode.image_size)
    q_tile = _queries(mode.image_size)
    across, down = grid
    tiled = across > 1 or down > 1
    if profile.newline_tokens:
        tokens = q_global * (q_global + 1) + 1
        if tiled:
            tokens += (q_tile * down) * (q_tile * across + 1)
        return tokens
    tokens = q_global * q_global + 1
    if tiled:
        tokens += across * down * q_tile * q_tile
    return tokens


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput(f"image size must be positive, got {width}x{height}", field="image")
