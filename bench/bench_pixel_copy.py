"""Threads left in the process after eight renderer-like threads copy A4 pages' pixels.

``torch``: session 13's copy (``np.array`` of the page, then ``torch.cat``); ``numpy``: dsocr's
``flat_pixels`` (one ``np.concatenate`` of Pillow's bytes). With an OpenMP build of torch, every
thread that runs a parallel torch op gets an OpenMP team of its own, which shows here as extra
threads (bench/README.md, session 14).

usage: python bench/bench_pixel_copy.py [--torch-threads 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from gpu_throughput import page  # the GPU benchmark's synthetic A4 page


def torch_copy(im: Image.Image) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.array(im)).reshape(-1)])


def numpy_copy(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([np.asarray(im).reshape(-1)]))


def one(variant: str, threads: int) -> None:
    torch.set_num_threads(threads)
    copy = torch_copy if variant == "torch" else numpy_copy
    pages = [page(i) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(copy, pages))
        print(
            f"{variant}: torch threads {torch.get_num_threads()}, threads in the process with "
            f"8 renderer threads after copying 16 pages: {len(os.listdir('/proc/self/task'))}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-threads", type=int, default=16)
    ap.add_argument("--variant", choices=("torch", "numpy"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        one(a.variant, a.torch_threads)
        return
    for variant in ("torch", "numpy"):  # each in a fresh process: teams outlive their threads' work
        cmd = [sys.executable, __file__, "--variant", variant, "--torch-threads", str(a.torch_threads)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
