"""Peak server memory for N concurrent large uploads: what admission's pixel budget bounds.

Run: ``.venv/bin/python bench/bench_upload_memory.py [--uploads 16] [--size 6000x10000] [--engine cpu]``

Starts ``python -m dsocr serve`` in its own process (the CPU engine by default, or the fake
engine), sends one small page to warm it up, then ``--uploads`` copies of one large PNG at once
(a white page with lines of text: 60 MP in 265 KB by default) to ``/v1/ocr`` as multipart
(``--route``), and reads the server's peak resident memory from ``/proc/PID/status`` (``VmHWM``,
reset when the burst starts). A client answered 429 waits ``Retry-After`` and sends again, as a client should;
429s are counted. Every answer must be 200 in the end.

``--budget-mp``, ``--wait-s`` and ``--queue`` set ``DSOCR_LIMITS__MAX_INFLIGHT_PIXELS`` (in MP),
``__ADMISSION_WAIT_S`` and ``__MAX_QUEUE`` for the server; unset, the server's defaults apply.
Linux only (``/proc``). A benchmark, not a test: it asserts nothing about the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from dsocr.settings import LimitSettings

# The loopback-server helpers shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_support import free_port, wait_ready

# A decoded RGB page held in the server: Pillow keeps RGB in 32 bits a pixel.
BYTES_PER_DECODED_PIXEL = 4
MAX_ATTEMPTS = 100


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Set the process's peak RSS (VmHWM) to its current RSS; False where the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def large_png(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(100, height - 100, 400):
        draw.text((200, y), f"Line {y}: the quick brown fox jumps over the lazy dog.", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def send(client: httpx.AsyncClient, route: str, data: bytes, outputs: str | None) -> tuple[int, int]:
    """One upload until it is answered other than 429; (final status, 429s on the way)."""
    refused = 0
    for _ in range(MAX_ATTEMPTS):
        if route == "ocr":
            form = {"outputs": outputs} if outputs else None
            response = await client.post(
                "/v1/ocr", files={"file": ("scan.png", data, "image/png")}, data=form
            )
        elif route == "predict":
            response = await client.post("/predict", json={"image_base64": base64.b64encode(data).decode()})
        else:
            url = "data:image/png;base64," + base64.b64encode(data).decode()
            message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            response = await client.post("/v1/chat/completions", json={"model": "m", "messages": [message]})
        if response.status_code != 429:
            return response.status_code, refused
        refused += 1
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
    return 429, refused


async def burst(url: str, pid: int, args: argparse.Namespace, data: bytes, warm: bytes) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(1800)) as client:
        status, _ = await send(client, args.route, warm, None)
        if status != 200:
            raise SystemExit(f"warm-up request answered {status}")
        before = status_mb(pid, "VmRSS")
        peak_from_start = not reset_peak(pid)
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(send(client, args.route, data, args.outputs) for _ in range(args.uploads))
        )
        wall = time.perf_counter() - started
    peak = status_mb(pid, "VmHWM")
    after = status_mb(pid, "VmRSS")
    statuses = Counter(status for status, _ in answers)
    retried = sum(refused for _, refused in answers)
    print(f"RSS before the burst: {before:,.0f} MB; after: {after:,.0f} MB")
    since = "since the server started" if peak_from_start else "during the burst"
    print(f"peak RSS {since}: {peak:,.0f} MB (+{peak - before:,.0f} MB)")
    shown = ", ".join(f"{count} × {status}" for status, count in sorted(statuses.items()))
    print(f"answers: {shown}; 429s answered on the way (then retried): {retried}; wall {wall:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--uploads", type=int, default=16, help="concurrent uploads (default 16)")
    parser.add_argument("--size", default="6000x10000", help="page size WxH (default 6000x10000, 60 MP)")
    parser.add_argument("--engine", choices=("cpu", "fake"), default="cpu")
    parser.add_argument("--route", choices=("ocr", "predict", "chat"), default="ocr")
    parser.add_argument("--outputs", default=None, help="outputs for /v1/ocr, e.g. visualization")
    parser.add_argument(
        "--budget-mp", type=float, default=None, help="DSOCR_LIMITS__MAX_INFLIGHT_PIXELS in MP"
    )
    parser.add_argument("--wait-s", type=float, default=None, help="DSOCR_LIMITS__ADMISSION_WAIT_S")
    parser.add_argument("--queue", type=int, default=None, help="DSOCR_LIMITS__MAX_QUEUE")
    args = parser.parse_args()

    width, height = (int(v) for v in args.size.lower().split("x"))
    data = large_png(width, height)
    warm = large_png(400, 300)
    pixels = width * height
    print(
        f"{args.uploads} concurrent uploads of a {width}×{height} PNG ({len(data) / 1024:,.0f} KB, "
        f"{pixels / 1e6:.1f} MP, ~{pixels * BYTES_PER_DECODED_PIXEL / 2**20:,.0f} MB decoded) "
        f"to {args.route}{f' with outputs={args.outputs}' if args.outputs else ''}; {args.engine} engine"
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    env["DSOCR_ENGINE__KIND"] = args.engine
    # Every upload is the same image: the result cache would answer all but the first.
    env["DSOCR_CACHE__ENABLED"] = "false"
    if args.budget_mp is not None:
        env["DSOCR_LIMITS__MAX_INFLIGHT_PIXELS"] = str(int(args.budget_mp * 1e6))
    if args.wait_s is not None:
        env["DSOCR_LIMITS__ADMISSION_WAIT_S"] = str(args.wait_s)
    if args.queue is not None:
        env["DSOCR_LIMITS__MAX_QUEUE"] = str(args.queue)
    shown = {k: v for k, v in env.items() if k.startswith("DSOCR_")}
    print("server environment: " + " ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    defaults = LimitSettings()
    budget = getattr(defaults, "max_inflight_pixels", None)
    if args.budget_mp is None:
        print(
            f"pixel budget: the server's default, {'none' if budget is None else f'{budget / 1e6:,.0f} MP'}"
        )

    port = free_port()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "dsocr", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

        def output() -> str:
            log.seek(0)
            return log.read()

        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process=process, output=output, timeout_s=120)
            asyncio.run(burst(url, process.pid, args, data, warm))
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
