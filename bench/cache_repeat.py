"""The result cache on a repeated document: one 20-page PDF sent twice to `dsocr serve` (CPU engine).

    .venv/bin/python bench/cache_repeat.py [--engine cpu|fake] [--dpi 144] [--runs 2]

Input: 20 pages cut from real scans: the top and the bottom half of the 6 pages of pypdf's
Vicksburg scan and of the 4 pages of ocrmypdf's cardinal.pdf (one scan at 0/90/180/270°),
rendered at ``--dpi`` and written as one image PDF (PyPI sdists, tests/docs.py; cached in
tests/.data/). Every page has its own pixels, so the first run misses on each.

`dsocr serve` runs in its own process with a fresh cache folder (``DSOCR_CACHE__DIR``) and the
PDF rendered at the same dpi (``DSOCR_LIMITS__PDF_DPI``). Each run is one ``POST /v1/ocr``
(multipart, markdown + blocks); printed per run: wall seconds (client side, upload to answer),
pages/s, the ``X-Dsocr-Cache`` header, pages answered from the cache, and whether the markdown is
the same as the first run's. Also printed: the CPU time of the key's pixel hash
(``dsocr.cache.pixel_hash``) per page of this document and per A4 page at 144 dpi (1190×1684), the
work every lookup adds before the engine.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pypdfium2 as pdfium
from PIL import Image

from dsocr.cache import pixel_hash

# The document fetcher and the loopback-server helpers shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import docs
from server_support import dsocr_serve_with_env

SCANS = (("Seige_of_Vicksburg_Sample_OCR.pdf", 6), ("cardinal.pdf", 4))


def scanned_pages(dpi: int) -> list[Image.Image]:
    """The top and bottom halves of every page of the scans, in order."""
    halves: list[Image.Image] = []
    for name, count in SCANS:
        pdf = pdfium.PdfDocument(docs.fetch(name))
        try:
            assert len(pdf) == count, f"{name} has {len(pdf)} pages, expected {count}"
            for index in range(count):
                page = pdf[index].render(scale=dpi / 72).to_pil().convert("RGB")
                width, height = page.size
                halves.append(page.crop((0, 0, width, height // 2)))
                halves.append(page.crop((0, height // 2, width, height)))
        finally:
            pdf.close()
    return halves


def build_pdf(pages: list[Image.Image], dpi: int) -> bytes:
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=dpi)
    return buffer.getvalue()


def hash_ms(image: Image.Image, repeats: int = 5) -> float:
    """Least CPU milliseconds of ``repeats`` pixel hashes of ``image``."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        pixel_hash(image)
        times.append(time.process_time() - started)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", default="cpu", choices=["cpu", "fake"])
    parser.add_argument("--dpi", type=int, default=144)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    pages = scanned_pages(args.dpi)
    document, page_count = build_pdf(pages, args.dpi), len(pages)
    print(
        f"document: {page_count} pages, {len(document) / 1e6:.1f} MB, {args.dpi} dpi; engine {args.engine}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    per_page = sorted(hash_ms(page) for page in pages)
    a4 = hash_ms(Image.effect_noise((1190, 1684), 64).convert("RGB"))
    print(
        f"pixel hash: median {per_page[len(per_page) // 2]:.1f} ms of CPU per page of this document, "
        f"{a4:.1f} ms per A4 page at 144 dpi"
    )
    with tempfile.TemporaryDirectory(prefix="dsocr-cache-bench-") as work:
        env = {
            "DSOCR_ENGINE__KIND": args.engine,
            "DSOCR_CACHE__DIR": str(Path(work) / "cache"),
            "DSOCR_LIMITS__PDF_DPI": str(args.dpi),
            "DSOCR_LIMITS__REQUEST_TIMEOUT_S": "3600",
        }
        with (
            dsocr_serve_with_env(env, log=Path(work) / "serve.log", timeout_s=300) as (base, _),
            httpx.Client(base_url=base, timeout=3600) as http,
        ):
            first_markdown = None
            for run in range(1, args.runs + 1):
                started = time.perf_counter()
                response = http.post(
                    "/v1/ocr",
                    files={"file": ("scans.pdf", document, "application/pdf")},
                    data={"outputs": "markdown,blocks"},
                )
                wall = time.perf_counter() - started
                response.raise_for_status()
                body = response.json()
                cached = sum(page["cached"] for page in body["pages"])
                first_markdown = first_markdown if first_markdown is not None else body["markdown"]
                print(
                    f"run {run}: {wall:7.2f} s  {page_count / wall:7.2f} pages/s  "
                    f"X-Dsocr-Cache: {response.headers.get('x-dsocr-cache')}  "
                    f"from the cache: {cached}/{page_count}  failed: {len(body['failed_pages'])}  "
                    f"same markdown as run 1: {body['markdown'] == first_markdown}"
                )
        size = sum(path.stat().st_size for path in (Path(work) / "cache").iterdir())
        print(f"cache folder after the runs: {size / 1024:.0f} KiB; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
