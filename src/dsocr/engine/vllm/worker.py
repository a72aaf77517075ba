"""dsocr's extension of vLLM's GPU worker (``worker_extension_cls``): start-up calls that need the
worker's model runner, made once by dsocr.engine.vllm.engine through ``collective_rpc`` before
serving."""

from __future__ import annotations

from typing import Any

from dsocr.engine.vllm.start_events import instrument_workers

__all__ = ["WorkerExtension"]


class WorkerExtension:
    """Mixed into vLLM's worker class, so its methods run in the worker with ``self.model_runner``."""

    model_runner: Any

    def dsocr_enable_device_ngram_history(self) -> int:
        """The n-gram processor reads last step's tokens on the device (dsocr.engine.vllm.ngram);
        returns how many processors were switched (0: this runner lacks what it needs)."""
        from dsocr.engine.vllm.ngram import enable_device_history

        return enable_device_history(self.model_runner)

    def dsocr_set_torch_threads(self, threads: int) -> int:
        """torch's CPU threads (intra-op pools) in this worker set to ``threads``; returns the
        number torch then reports. On a GPU the worker runs only small CPU ops, and by default a
        pool of one thread per core waits beside it (dsocr.settings.VllmSettings.engine_core_threads)."""
        import torch

        torch.set_num_threads(threads)
        return int(torch.get_num_threads())


# Imported in vLLM's worker process just after its worker class and before the worker's first
# start-up call: the place to time those calls (dsocr.engine.vllm.start_events).
instrument_workers()
