"""Per-page CPU steps of the front process, alone and on several threads at once.

What a page costs between its upload and vLLM's engine core, on the benchmark's synthetic A4
page (the one `gpu_throughput.py` sends): PNG decoding (Pillow), the copy vLLM's parser makes
for ``ImageOps.exif_transpose`` when it gets a Pillow image, ``np.asarray`` of the page (Pillow's
``tobytes``) and the one copy of ``flat_pixels``. Each step runs on 1 and on more threads at
once; a step that holds the GIL gains nothing from more threads.

    python bench/bench_page_steps.py [--threads 1,2,8,16] [--pages 64]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageOps, features

from gpu_throughput import page  # the GPU benchmark's synthetic A4 page


def per_page_ms(step: Callable[[Any], object], items: list[Any], threads: int, reps: int = 3) -> float:
    """Wall milliseconds per page with ``threads`` threads working through ``items``."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(step, items[: threads * 2]))  # warm
        start = time.perf_counter()
        for _ in range(reps):
            list(pool.map(step, items))
        return (time.perf_counter() - start) / (reps * len(items)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2,8,16", help="thread counts, comma-separated")
    ap.add_argument("--pages", type=int, default=64)
    a = ap.parse_args()
    buf = io.BytesIO()
    page(1).save(buf, format="PNG")
    png = buf.getvalue()

    def decoded() -> Image.Image:
        im = Image.open(io.BytesIO(png))
        im.load()
        return im

    images = [decoded() for _ in range(a.pages)]
    arrays = [np.asarray(im) for im in images]
    steps: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
        "png_decode": (lambda _: decoded(), images),
        "exif_transpose_copy": (ImageOps.exif_transpose, images),
        "np_asarray": (np.asarray, images),
        "flat_pixels_concat": (lambda arr: np.concatenate([arr.reshape(-1)]), arrays),
    }
    threads = [int(t) for t in a.threads.split(",")]
    print(
        "PAGE_STEPS",
        json.dumps({"pillow": PIL.__version__, "zlib": features.version("zlib"), "png_bytes": len(png)}),
    )
    for name, (step, items) in steps.items():
        ms = {t: round(per_page_ms(step, items, t), 2) for t in threads}
        speedup = round(ms[threads[0]] / ms[threads[-1]], 2)
        print("STEP", json.dumps({"step": name, "ms_per_page_by_threads": ms, "speedup": speedup}))


if __name__ == "__main__":
    main()
