"""The vLLM engine: the only part of dsocr that imports vllm (tests/core/test_import_boundaries.py).

- ``engine``: ``VLLMEngine``, vLLM's ``AsyncLLM`` in the server process, and the recipe's engine
  arguments;
- ``model``: dsocr's DeepSeek-OCR model class for vLLM (per-request modes, a batched vision
  encoder), registered through the ``vllm.general_plugins`` entry point;
- ``ngram``: the batched no-repeat n-gram logits processors;
- ``worker``: the start-up calls dsocr makes in vLLM's worker (``worker_extension_cls``);
- ``page_views`` and ``rel_pos_attention``: pure torch, used by the model class (a page's views
  built on the GPU, SAM's attention on the fused kernel).

Importing this package imports nothing of vLLM; ``engine`` imports it when the engine starts,
``model`` and ``ngram`` at their top.
"""
