"""Throughput and memory of the embedded CPU engine on real pages.

    .venv/bin/python bench/bench_cpu_engine.py [--threads N] [--prompt document|free|ocr]

Reads 4 real pages (Huckleberry Finn c03-29 scan, the linn 2-column datasheet at 300 DPI, pypdf's
crazyones and the first Vicksburg scan page, PDFs rendered at 144 DPI) once to warm up, then once
more timed, one page at a time as the server would. Prints seconds per page, pages/s and the peak
RSS of this process. Documents come from PyPI sdists (tests/docs.py), cached in tests/.data/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import docs
from dsocr.engine.base import EngineRequest
from dsocr.engine.cpu import CpuEngine
from dsocr.prompts import PRESETS
from dsocr.settings import EngineSettings


def _pdf_page(name: str, index: int = 0) -> Image.Image:
    pdf = pdfium.PdfDocument(docs.fetch(name))
    try:
        return pdf[index].render(scale=144 / 72).to_pil().convert("RGB")
    finally:
        pdf.close()


def pages() -> dict[str, Image.Image]:
    return {
        "huckfinn c03-29": _pdf_page("c03-29.pdf"),
        "linn.png 300dpi": Image.open(docs.fetch("linn.png")).convert("RGB"),
        "crazyones": _pdf_page("crazyones.pdf"),
        "vicksburg p0": _pdf_page("Seige_of_Vicksburg_Sample_OCR.pdf"),
    }


async def main(threads: int | None, prompt: str) -> None:
    images = pages()
    engine = CpuEngine(EngineSettings(kind="cpu"), threads=threads)
    started = time.perf_counter()
    await engine.start()
    threads_used = engine.info.details["onnxruntime_threads"]
    print(
        f"start (load + warm-up): {time.perf_counter() - started:.2f} s; onnxruntime threads={threads_used}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (figures are only comparable on an idle machine)")
    for name, image in images.items():  # warm-up pass: first calls per input shape are slower
        await engine.generate(EngineRequest(request_id=f"warm-{name}", prompt=PRESETS[prompt], image=image))
    total = cpu_total = 0.0
    for name, image in images.items():
        t0, c0 = time.perf_counter(), time.process_time()
        out = await engine.generate(EngineRequest(request_id=name, prompt=PRESETS[prompt], image=image))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        total += dt
        cpu_total += cpu
        print(
            f"{name:18s} {image.width}x{image.height:<5d} {dt:6.2f} s wall {cpu:6.2f} CPU-s "
            f"{out.completion_tokens:5d} est. tokens"
        )
    await engine.close()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"pages/s: {len(images) / total:.3f}  ({total / len(images):.2f} s wall, "
        f"{cpu_total / len(images):.2f} CPU-s per page, prompt={prompt})"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"peak RSS: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)"
    )
    parser.add_argument("--prompt", default="document", choices=["document", "free", "ocr"])
    args = parser.parse_args()
    asyncio.run(main(args.threads, args.prompt))
