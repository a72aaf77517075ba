"""Page views built on the device (dsocr.engine.vllm.page_views) against upstream's Pillow processor.

For the GPU benchmark's synthetic A4 page (and random pages in every mode), checks that the views
the model builds from the page's pixels are upstream's bit for bit on this machine's Pillow and
device, then times per page: upstream's processor (Pillow views, what vLLM's front process runs
without device views), dsocr's ``DeviceViewsProcessor`` (the front process's share with device
views) and ``device_views`` on the device (CUDA time, synchronised). Needs vLLM and a tokenizer
directory with DeepSeek-OCR's special tokens (the dummy model, or the tiny test model):

    python3 bench/bench_device_views.py /root/dsocr-dummy --pages 16
    .venv-vllm/bin/python bench/bench_device_views.py /tmp/tinyocr --pages 2 --device cpu
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer
from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

from dsocr.engine.vllm import model as vllm_modes
from dsocr.modes import V1
from gpu_throughput import PROMPT, page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer_dir", type=Path)
    ap.add_argument("--pages", type=int, default=16)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    device = torch.device(a.device)
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer_dir)
    import PIL

    print(f"Pillow {PIL.__version__}, torch {torch.__version__}, device {device}")

    # 1. Exactness: every mode, the A4 page and random sizes, bf16 as served.
    rng = np.random.default_rng(0)
    randoms = [(int(rng.integers(100, 2500)), int(rng.integers(100, 2500))) for _ in range(6)]
    checked = 0
    for name, mode in V1.modes.items():
        sizes = {"base_size": mode.base_size, "image_size": mode.image_size}
        upstream = DeepseekOCRProcessor(tokenizer, **sizes)
        ours = vllm_modes.DeviceViewsProcessor(tokenizer, **sizes)
        images = [page(0)] + [
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in randoms
        ]
        for image in images:
            if not mode.crop_mode:
                image, _ = vllm_modes.request_inputs(image, name)
            want = upstream(prompt=PROMPT, images=[image], crop_mode=mode.crop_mode)
            sent = ours(prompt=PROMPT, images=[image], crop_mode=mode.crop_mode)
            views, tiles = vllm_modes.device_views(
                sent["page_pixels"], sent["view_plan"], torch.bfloat16, device
            )
            same = torch.equal(sent["input_ids"], want["input_ids"]) and torch.equal(
                views[0].cpu(), want["pixel_values"][0].to(torch.bfloat16)
            )
            want_tiles = want["images_crop"].to(torch.bfloat16) if mode.crop_mode else []
            same = same and len(tiles) == len(want_tiles)
            if tiles:
                same = same and torch.equal(torch.stack(tiles).cpu(), want_tiles)
            if not same:
                raise SystemExit(f"MISMATCH mode {name} page {image.size}")
            checked += 1
    print(f"EXACT {checked} pages over {len(V1.modes)} modes: device views == upstream's Pillow views (bf16)")

    # 2. Time per A4 Gundam page.
    pages = [page(i) for i in range(a.pages)]
    upstream = DeepseekOCRProcessor(tokenizer)
    ours = vllm_modes.DeviceViewsProcessor(tokenizer)
    for label, processor in (("upstream processor (Pillow views)", upstream), ("DeviceViewsProcessor", ours)):
        processor(prompt=PROMPT, images=[pages[0]])
        t0 = time.perf_counter()
        sent = [processor(prompt=PROMPT, images=[image]) for image in pages]
        per_page = (time.perf_counter() - t0) / len(pages) * 1000
        print(f"FRONT {label}: {per_page:.1f} ms/page CPU (one thread)")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    vllm_modes.device_views(sent[0]["page_pixels"], sent[0]["view_plan"], torch.bfloat16, device)
    pixels = [s["page_pixels"].to(device) for s in sent]
    sync()
    t0 = time.perf_counter()
    for s, p in zip(sent, pixels, strict=True):
        vllm_modes.device_views(p, s["view_plan"], torch.bfloat16, device)
    sync()
    per_page = (time.perf_counter() - t0) / len(pages) * 1000
    megabytes = sent[0]["page_pixels"].numel() / 1e6
    print(f"DEVICE device_views: {per_page:.2f} ms/page on {device} ({megabytes:.1f} MB of pixels per page)")


if __name__ == "__main__":
    main()
