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
