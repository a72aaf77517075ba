# ruff: noqa  # a standalone helper, kept as first written (not linted)
"""Worker extension that brings the test-only vision-tower shrink into vLLM's engine core.

vLLM's CPU platform starts the engine core with the ``spawn`` method, so a patch applied in
the test process never reaches the model (serve_tiny.py gets there only because spawn re-runs
the main script). vLLM imports ``worker_extension_cls`` in the engine core before it builds the
model: importing this module there applies tiny_vision_patch first. The class keeps dsocr's own
worker calls and adds a probe of the served v2 encoder.

Use: engine.vllm.args {"worker_extension_cls": "tiny_worker.TinyVisionWorker"}, with this folder
on sys.path (spawn hands the parent's sys.path to the child).
"""

import tiny_vision_patch

tiny_vision_patch.apply()

from dsocr.engine.vllm.worker import WorkerExtension


class TinyVisionWorker(WorkerExtension):
    def dsocr_probe_v2_tower(self):
        """The served DeepSeek-OCR 2 encoder's depth and its tokens per 1024² and 768² view."""
        import torch

        model = self.model_runner.get_model()
        dtype = next(model.sam_model.parameters()).dtype
        tokens = {}
        with torch.inference_mode():
            for side in (1024, 768):
                out = model.qwen2_model(model.sam_model(torch.zeros(1, 3, side, side, dtype=dtype)))
                tokens[str(side)] = list(out.shape)
        return {
            "sam_blocks": len(model.sam_model.blocks),
            "qwen2_layers": len(model.qwen2_model.model.model.layers),
            "tokens": tokens,
        }

    def dsocr_probe_v2_encoder(self, seed):
        """dsocr's batched v2 encoder against upstream's page-by-page one on one step of three
        pages (3×2 tiles, untiled, 2×1 tiles, as vLLM batches them): shapes and max |difference|."""
        import torch
        from vllm.model_executor.models.deepseek_ocr2 import DeepseekOCR2ForCausalLM

        model = self.model_runner.get_model()
        dtype = next(model.sam_model.parameters()).dtype
        g = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(3, 3, 1024, 1024, generator=g).to(dtype)
        images_crop = torch.randn(8, 3, 768, 768, generator=g).to(dtype)
        grids = torch.tensor([[3, 2], [1, 1], [2, 1]])
        with torch.inference_mode():
            ours = model._pixel_values_to_embedding(pixel_values, images_crop, grids)
            upstream = DeepseekOCR2ForCausalLM._pixel_values_to_embedding(
                model, pixel_values, images_crop, grids
            )
        return {
            "type": type(model).__name__,
            "shapes": [list(t.shape) for t in ours],
            "upstream_shapes": [list(t.shape) for t in upstream],
            "max_abs_diff": [float((a.float() - b.float()).abs().max()) for a, b in zip(ours, upstream)],
            "scale": [float(b.float().abs().max()) for b in upstream],
        }
