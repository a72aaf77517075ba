"""Worker extension for tests: runs dsocr's batched vision encoder and upstream's side by side.

Loaded into vLLM's worker with ``worker_extension_cls="encoder_probe.EncoderProbe"`` and called
through ``collective_rpc``; returns plain numbers so nothing but floats crosses back.
"""

from __future__ import annotations

from typing import Any

import torch

from dsocr.engine.vllm.worker import WorkerExtension


def _pages(seed: int, dtype: torch.dtype) -> dict[str, Any]:
    """Three Gundam pages in one step: 3×2 tiles, untiled, 2×1 tiles (as vLLM batches them)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(3, 3, 1024, 1024, generator=g).to(dtype),
        "images_crop": torch.randn(8, 3, 640, 640, generator=g).to(dtype),
        "images_spatial_crop": torch.tensor([[3, 2], [1, 1], [2, 1]]),
    }


class EncoderProbe(WorkerExtension):
    """Built on dsocr's extension, as an operator's own should be: it keeps the start's phases."""

    def dsocr_probe_batched_encoder(self, seed: int) -> dict[str, Any]:
        """Max |ours − upstream| per page for one step of Gundam pages, and for mixed view sizes."""
        from vllm.model_executor.models.deepseek_ocr import DeepseekOCRForCausalLM

        model = self.model_runner.get_model()
        dtype = next(model.sam_model.parameters()).dtype
        with torch.inference_mode():
            pages = _pages(seed, dtype)
            ours = model.embed_multimodal(**pages)
            upstream = DeepseekOCRForCausalLM.embed_multimodal(model, **pages)
            # A Tiny view (512²) and a Base view (1024²) in one step: vLLM hands these over as a
            # list; upstream takes one size per call, so it runs once per view.
            g = torch.Generator().manual_seed(seed + 1)
            views = [
                torch.randn(3, 512, 512, generator=g).to(dtype),
                torch.randn(3, 1024, 1024, generator=g).to(dtype),
            ]
            no_tiles = torch.zeros(0, 3, 640, 640, dtype=dtype)
            mixed = model.embed_multimodal(
                pixel_values=views, images_crop=no_tiles, images_spatial_crop=torch.tensor([[1, 1], [1, 1]])
            )
            alone = [
                DeepseekOCRForCausalLM.embed_multimodal(
                    model,
                    pixel_values=v[None],
                    images_crop=no_tiles,
                    images_spatial_crop=torch.tensor([[1, 1]]),
                )[0]
                for v in views
            ]
        layers = [m for m in model.sam_model.modules() if hasattr(m, "rel_pos_h")]
        return {
            "type": type(model).__name__,
            "rel_pos_layers": len(layers),
            "fused_rel_pos_layers": sum("forward" in vars(m) for m in layers),
            "shapes": [list(t.shape) for t in ours],
            "upstream_shapes": [list(t.shape) for t in upstream],
            "max_abs_diff": [
                float((a.float() - b.float()).abs().max()) for a, b in zip(ours, upstream, strict=True)
            ],
            "scale": [float(b.float().abs().max()) for b in upstream],
            "mixed_shapes": [list(t.shape) for t in mixed],
            "alone_shapes": [list(t.shape) for t in alone],
            "mixed_max_abs_diff": [
                float((a.float() - b.float()).abs().max()) for a, b in zip(mixed, alone, strict=True)
            ],
        }

    def dsocr_probe_encoder_cache(self) -> dict[str, int]:
        """The engine core's encoder cache size and its step budget, read from the scheduler.

        The worker runs in the engine core's process (one worker); the core's ``collective_rpc``
        frame, whose ``self`` owns the scheduler, is up this call's stack.
        """
        import sys

        frame = sys._getframe(1)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if hasattr(owner, "scheduler") and hasattr(owner, "model_executor"):
                scheduler = owner.scheduler
                return {
                    "cache_size": int(scheduler.encoder_cache_manager.cache_size),
                    "step_tokens": int(scheduler.scheduler_config.max_num_batched_tokens),
                }
            frame = frame.f_back
        raise RuntimeError("not called inside vLLM's engine core")
