"""Pages/s of `dsocr batch` on this machine: the local runner vs. the Ray Data pipeline (local Ray).

    .venv/bin/python bench/bench_batch.py [--pages 12] [--engine cpu|fake] [--runners local,ray,writer]
                                          [--max-in-flight 8] [--ray-cpus 2]

Input: one PDF holding ``--pages`` copies of the real Huckleberry Finn scan (examples/sample.pdf,
rendered at 144 dpi) and the same page as a PNG (examples/sample-page.png). Each runner writes to a
fresh output folder, so no page is skipped. Printed per runner: pages, wall seconds of the whole
`run_batch` call (scan + engine start + OCR + writes; for Ray also actor start-up, not `ray.init`),
pages/s, and for Ray the `ray.init` time separately. ``writer`` times the driver's own work per page
(atomic files + manifest commit), the ceiling of the Ray path however many GPUs it has.
Ray runs on a local instance with
``--ray-cpus`` CPUs: one OCR actor per CPU minus one (kept for page rendering).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pypdfium2 as pdfium

from dsocr.batch import BatchJob, BatchSummary, run_batch
from dsocr.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def make_inputs(folder: Path, pages: int) -> int:
    """Write the benchmark inputs; return their page count."""
    source = pdfium.PdfDocument(EXAMPLES / "sample.pdf")
    target = pdfium.PdfDocument.new()
    try:
        target.import_pages(source, [0] * pages)
        target.save(folder / "book.pdf")
    finally:
        target.close()
        source.close()
    shutil.copy(EXAMPLES / "sample-page.png", folder / "page.png")
    return pages + 1


def report(name: str, summary: BatchSummary, seconds: float, extra: str = "") -> None:
    processed = summary.pages_done + summary.pages_failed
    print(
        f"{name:6s} engine={summary.engine} pages={processed} failed={summary.pages_failed} "
        f"wall={seconds:.2f}s pages/s={processed / seconds:.3f}{extra}",
        flush=True,
    )


def bench_writer(out: Path, *, pages: int) -> None:
    """The driver's share per page: files written atomically (fsync) + manifest commit.

    One fake-engine page result (blocks, markdown, one figure crop) is written ``pages`` times as
    pages of one document; this is what the Ray driver does for every page, whatever the cluster size.
    """
    import asyncio

    from PIL import Image

    from dsocr.batch.manifest import Manifest
    from dsocr.batch.outputs import page_artifacts
    from dsocr.batch.plan import DocumentPlan, RunPlan
    from dsocr.batch.runner import BatchSummary, BatchWriter
    from dsocr.engine.fake import FakeEngine
    from dsocr.pipeline import PageInput, Pipeline
    from dsocr.request import build_request
    from dsocr.settings import Settings

    async def one_result() -> object:
        engine = FakeEngine()
        await engine.start()
        image = Image.open(EXAMPLES / "sample-page.png").convert("RGB")
        settings = Settings(engine={"kind": "fake"})
        request = build_request(settings, source=None, request_id="bench", outputs=["crops"], deadline=False)
        pipeline = Pipeline(engine, limits=settings.limits, fetch=settings.fetch)
        async for result in pipeline.run_pages(request, [PageInput(number=1, load=lambda: image)]):
            return result
        raise AssertionError("no result")

    result = asyncio.run(one_result())
    numbers = tuple(range(1, pages + 1))
    doc = DocumentPlan(
        doc_key="k", path=Path("x.pdf"), sha256="s", out_name="doc", pages=numbers, todo=numbers
    )
    with Manifest(out / "manifest.sqlite") as manifest:
        manifest.register_document(
            doc_key="k", sha256="s", settings_key="b", path="x.pdf", out_name="doc", pages=numbers
        )
        writer = BatchWriter(
            plan=RunPlan(settings_key="b", documents=[doc]),
            manifest=manifest,
            out_dir=out,
            summary=BatchSummary(runner="local", engine="fake"),
        )
        artifacts = [page_artifacts(result, page=n) for n in numbers]  # type: ignore[arg-type]
        started = time.perf_counter()
        for item in artifacts:
            writer.write("k", item)
        seconds = time.perf_counter() - started
    print(
        f"writer pages={pages} wall={seconds:.2f}s pages/s={pages / seconds:.1f} "
        f"ms/page={1000 * seconds / pages:.2f} (files + fsync + manifest commit, assembly once)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--engine", choices=("cpu", "fake"), default="cpu")
    parser.add_argument("--runners", default="local,ray")
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--ray-cpus", type=int, default=2)
    args = parser.parse_args()
    settings = Settings(engine={"kind": args.engine})
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dsocr-bench-batch-") as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        total = make_inputs(inputs, args.pages)
        print(f"inputs: {total} pages (book.pdf x{args.pages} + page.png)", flush=True)
        for runner in args.runners.split(","):
            job = BatchJob(
                inputs=(str(inputs),),
                out_dir=Path(tmp) / f"out-{runner}",
                max_in_flight=args.max_in_flight,
                quiet=True,
            )
            if runner == "local":
                started = time.perf_counter()
                summary = run_batch(job, settings)
                report("local", summary, time.perf_counter() - started)
            elif runner == "ray":
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                import ray

                from dsocr.batch.ray_pipeline import run_batch_ray

                started = time.perf_counter()
                ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
                init_s = time.perf_counter() - started
                try:
                    started = time.perf_counter()
                    summary = run_batch_ray(job, settings)
                    report(
                        "ray",
                        summary,
                        time.perf_counter() - started,
                        f" (ray.init {init_s:.2f}s not counted)",
                    )
                finally:
                    ray.shutdown()
            elif runner == "writer":
                bench_writer(Path(tmp) / "out-writer", pages=200)
            else:
                parser.error(f"unknown runner {runner!r}")


if __name__ == "__main__":
    main()
