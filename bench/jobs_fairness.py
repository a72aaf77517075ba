"""Do interactive requests keep their latency while a long job runs?

Starts ``dsocr serve`` on the fake engine (``--delay-s`` per page, at most ``--batch`` pages
generated at once, like a real engine's batch), then measures the latency of one-image
``POST /v1/ocr`` requests sent one after another:

* alone (the baseline);
* while a ``--pages``-page PDF runs as a job (``POST /v1/jobs``), once per ``--windows`` value
  (``DSOCR_JOBS__WINDOW``: pages of a job in the engine at once; ``auto`` leaves it unset, a
  share of half the batch; 16 is what one ``/v1/ocr`` request of a document gets).

Prints one ``FAIR {json}`` line per run (latency p50/p95/max in seconds, the job's pages/s while
measured) and a table. The job is cancelled after each run. Needs no GPU::

    python bench/jobs_fairness.py                    # 500 pages, delay 0.4 s, batch 8, windows auto,4,16
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw


def _png() -> str:
    image = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(image).text((20, 20), "an interactive request", fill="black")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _pdf(pages: int) -> bytes:
    images = [Image.new("L", (150, 200), 255) for _ in range(pages)]
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:])
    return out.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(env: dict[str, str], log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "dsocr", "serve", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**clean, **env},
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return base, process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not become ready in 60 s")


def _latencies(client: httpx.Client, image: str, count: int) -> list[float]:
    seconds = []
    for _ in range(count):
        t0 = time.perf_counter()
        response = client.post("/v1/ocr", json={"image_base64": image})
        seconds.append(time.perf_counter() - t0)
        response.raise_for_status()
    return seconds


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 3),
        "max_s": round(ordered[-1], 3),
    }


def _run(args: argparse.Namespace, work: Path, window: str | None) -> dict[str, Any]:
    env = {
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__FAKE__DELAY_S": str(args.delay_s),
        "DSOCR_ENGINE__FAKE__MAX_BATCH": str(args.batch),
        "DSOCR_JOBS__DIR": str(work / f"jobs-{window}"),
        # The pages repeat: from the result cache they would never reach the engine.
        "DSOCR_CACHE__ENABLED": "false",
    }
    if window not in (None, "auto"):
        env["DSOCR_JOBS__WINDOW"] = str(window)
    base, process = _serve(env, work / f"serve-{window}.log")
    image = _png()
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            _latencies(client, image, 3)  # warm-up
            record: dict[str, Any] = {"window": window, "delay_s": args.delay_s, "batch": args.batch}
            if window is None:
                record.update(_summary(_latencies(client, image, args.requests)))
                return record
            files = {"file": ("long.pdf", _pdf(args.pages), "application/pdf")}
            job = client.post("/v1/jobs", files=files).json()
            while client.get(f"/v1/jobs/{job['id']}").json()["progress"]["pages_done"] < 2:
                time.sleep(0.05)
            before = client.get(f"/v1/jobs/{job['id']}").json()["progress"]["pages_done"]
            t0 = time.perf_counter()
            record.update(_summary(_latencies(client, image, args.requests)))
            wall = time.perf_counter() - t0
            after = client.get(f"/v1/jobs/{job['id']}").json()
            if after["status"] != "running":
                raise SystemExit(
                    f"the job ended before the measurement did ({after['status']}): use more --pages"
                )
            record["job_pages_per_s"] = round((after["progress"]["pages_done"] - before) / wall, 2)
            client.delete(f"/v1/jobs/{job['id']}")
            return record
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=500, help="pages of the job's PDF")
    ap.add_argument("--requests", type=int, default=30, help="interactive requests per run")
    ap.add_argument("--delay-s", type=float, default=0.4, help="the fake engine's seconds per page")
    ap.add_argument("--batch", type=int, default=8, help="pages the fake engine generates at once")
    ap.add_argument("--windows", default="auto,4,16", help="DSOCR_JOBS__WINDOW values to measure")
    args = ap.parse_args()
    windows: list[str | None] = [None, *args.windows.split(",")]
    records = []
    with tempfile.TemporaryDirectory(prefix="dsocr-fairness-") as tmp:
        for window in windows:
            record = _run(args, Path(tmp), window)
            print("FAIR " + json.dumps(record), flush=True)
            records.append(record)
    print(f"{'run':<24}{'p50 s':>8}{'p95 s':>8}{'max s':>8}{'job pages/s':>13}")
    for r in records:
        name = "alone" if r["window"] is None else f"beside a job, window {r['window']}"
        job = "-" if "job_pages_per_s" not in r else f"{r['job_pages_per_s']:.2f}"
        print(f"{name:<24}{r['p50_s']:>8.3f}{r['p95_s']:>8.3f}{r['max_s']:>8.3f}{job:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
