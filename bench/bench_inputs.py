"""Input throughput on one core: images decoded + normalised per second, PDF pages rendered per second.

Run: ``.venv/bin/python bench/bench_inputs.py [--seconds 3] [--passes 3]``

* Images: a real scan (ocrmypdf's ``linn.png``, 2550×3300 at 300 dpi) resized to A4 at 144 dpi
  (1190×1684, RGB), encoded as PNG and as JPEG q90; each pass decodes it repeatedly with
  ``dsocr.inputs.images.decode_image`` (header check, decode, EXIF, RGB).
* PDFs: every page of a real scanned book (pypdf's Vicksburg sample, 6 pages) and of born-digital
  PDFs (pypdf's ``example.pdf`` table, ``crazyones.pdf``), rendered at 144 dpi with
  ``dsocr.inputs.open_document(...).iter_pages()`` (page-size checks included).

The process is pinned to one CPU; pages per CPU-second is the per-core figure (wall-clock rates are
printed too but depend on how busy the machine is). Each figure is the median of the passes.
Target: at least 25 A4 pages per second per core for decode and for render.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import docs
from dsocr.inputs import open_document
from dsocr.inputs.images import decode_image
from dsocr.settings import LimitSettings

A4_144DPI = (1190, 1684)
TARGET = 25.0


def _rates(work: Callable[[], int], seconds: float, passes: int) -> tuple[float, float]:
    """Median (pages per CPU-second, pages per wall-second) over ``passes`` runs of ≥ ``seconds``.

    CPU time (``time.thread_time``) is what one core costs per page; on a shared, busy machine
    wall time also counts the time other processes held the core.
    """
    work()  # warm up (imports, caches)
    cpu_rates, wall_rates = [], []
    for _ in range(passes):
        done, wall0, cpu0 = 0, time.perf_counter(), time.thread_time()
        while (wall := time.perf_counter() - wall0) < seconds:
            done += work()
        cpu_rates.append(done / (time.thread_time() - cpu0))
        wall_rates.append(done / wall)
    return statistics.median(cpu_rates), statistics.median(wall_rates)


def _a4_scan() -> Image.Image:
    scan = Image.open(docs.fetch("linn.png")).convert("RGB")
    return scan.resize(A4_144DPI, Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum seconds per pass")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    limits = LimitSettings()

    page = _a4_scan()
    encoded: dict[str, bytes] = {}
    for fmt, params in (("PNG", {}), ("JPEG", {"quality": 90})):
        buffer = io.BytesIO()
        page.save(buffer, fmt, **params)
        encoded[fmt] = buffer.getvalue()

    print(f"one core, median of {args.passes} passes of ≥{args.seconds:g} s; target ≥ {TARGET:g} pages/s")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'input':<66} {'pages/CPU-s':>11} {'CPU ms/page':>11} {'pages/wall-s':>12}  target")
    rows: list[tuple[str, tuple[float, float]]] = []
    for fmt, data in encoded.items():

        def decode(data: bytes = data) -> int:
            decode_image(data, max_pixels=limits.max_image_pixels)
            return 1

        label = f"decode A4 {fmt} 1190×1684 ({len(data) // 1024} KiB, real scan)"
        rows.append((label, _rates(decode, args.seconds, args.passes)))

    for name, kind in (
        ("Seige_of_Vicksburg_Sample_OCR.pdf", "scanned book, 6 pages"),
        ("cardinal.pdf", "300-dpi bilevel scans, 4 letter pages"),
        ("example.pdf", "born-digital table, 1 A4 page"),
        ("crazyones.pdf", "born-digital text, 1 page"),
    ):
        pdf = docs.fetch(name).read_bytes()

        def render(pdf: bytes = pdf) -> int:
            with open_document(pdf, limits=limits, dpi=144) as doc:
                return sum(1 for _ in doc.iter_pages())

        label = f"render 144 dpi {name[:20]} ({kind})"
        rows.append((label, _rates(render, args.seconds, args.passes)))

    for label, (cpu_rate, wall_rate) in rows:
        verdict = "ok" if cpu_rate >= TARGET else "MISS"
        print(f"{label:<66} {cpu_rate:11.1f} {1000 / cpu_rate:11.1f} {wall_rate:12.1f}  {verdict}")


if __name__ == "__main__":
    main()
