"""Server overhead: the real HTTP stack (uvicorn + dsocr app) around an engine of fixed 20 ms latency.

Run: ``.venv/bin/python bench/bench_server.py [--requests 2000] [--rate 200] [--endpoint predict|chat]``

The server runs in its own process (uvicorn on loopback, one worker) with the fake engine wrapped
so that every request takes exactly ``--latency-ms`` (20 ms) in the engine, whatever the fake's own
compute. An ``httpx.AsyncClient`` then drives it in two ways, each with a bounded number of
requests:

* closed loop at ``--concurrency`` (64) requests in flight: requests/s, p50/p99 latency;
* open loop at a fixed offered rate (``--rate``, 200 req/s; A4 pages ``--a4-rate``, 30 req/s, since
  decoding one costs ~20 ms of CPU): p50/p99 latency.

Overhead is reported twice: client-side (p50 latency − 20 ms: includes the client's own CPU on the
same machine) and server-side (p50 of the time the server spent per request, measured by an ASGI
wrapper from the first byte in to the last byte out, − 20 ms). Targets: server overhead ≤ 2 ms at
200 req/s with a tiny image. Images: a tiny 64×64 PNG and an A4 page at 150 dpi (1240×1754 PNG of
rendered text), sent as ``image_base64``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw
from starlette.requests import Request

# The loopback-server helpers shared with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_support import free_port, wait_ready

SERVER_TIME_HEADER = "x-bench-server-ms"
# Requests sent before each measured run (connections opened, code paths warm); their CPU time is
# in the server's CPU figure, so it is divided by samples + warm-up.
WARMUP = 32


# ---------------------------------------------------------------- server side (child process)


def use_async_dependencies() -> None:
    """Experiment (--async-deps): swap dsocr.server.deps' sync dependencies for async twins.

    FastAPI runs every plain ``def`` dependency in a worker thread; ``app_state``,
    ``require_api_key`` and ``ready_engine`` do no blocking work, so the hops are pure overhead.
    Must run before the route modules are imported (they bind the functions at import).
    """
    from fastapi import Depends

    from dsocr.server import deps

    sync_app_state, sync_ready_engine = deps.app_state, deps.ready_engine

    async def app_state(request: Request) -> Any:
        return sync_app_state(request)

    async def require_api_key(request: Request, state: Any = Depends(app_state)) -> None:  # noqa: B008
        deps.check_api_key(state.settings, deps._presented_key(request))

    async def ready_engine(state: Any = Depends(app_state)) -> Any:  # noqa: B008
        return sync_ready_engine(state)

    deps.app_state = app_state  # type: ignore[assignment]
    deps.require_api_key = require_api_key
    deps.ready_engine = ready_engine  # type: ignore[assignment]


def serve(port: int, latency_s: float, *, async_deps: bool) -> None:
    """Run uvicorn with the dsocr app around a fixed-latency fake engine (blocks)."""
    if async_deps:
        use_async_dependencies()
    import uvicorn
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from dsocr.engine.base import EngineOutput, EngineRequest
    from dsocr.engine.fake import FakeEngine
    from dsocr.server.app import create_app
    from dsocr.settings import Settings

    class FixedLatencyEngine(FakeEngine):
        """The fake engine, taking exactly ``latency_s`` per request (at least its own compute)."""

        async def generate(self, request: EngineRequest) -> EngineOutput:
            started = time.perf_counter()
            output = await super().generate(request)
            self.requests.clear()  # the fake records requests; keep memory flat
            await asyncio.sleep(max(0.0, latency_s - (time.perf_counter() - started)))
            return output

    class ServerTime:
        """Adds the time the server spent on a request (first receive → response start) as a header."""

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            started = time.perf_counter()

            async def timed_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    headers = [
                        *message.get("headers", []),
                        (SERVER_TIME_HEADER.encode(), f"{elapsed_ms:.3f}".encode()),
                    ]
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, timed_send)

    # Room for any --concurrency: the benchmark measures overhead, not the limits' refusals.
    # No result cache: every request sends the same image, which it would answer without the engine.
    settings = Settings(
        engine={"kind": "fake"},
        server={"max_concurrency": 4096},
        limits={"max_queue": 4096},
        cache={"enabled": False},
    )
    app = ServerTime(create_app(settings, engine=FixedLatencyEngine()))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- client side


def tiny_png() -> bytes:
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).text((4, 4), "ok", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def a4_png() -> bytes:
    image = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(image)
    for row in range(60):
        draw.text(
            (100, 100 + row * 26),
            f"Line {row}: the quick brown fox jumps over the lazy dog " * 2,
            fill="black",
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def request_body(endpoint: str, png: bytes) -> tuple[str, bytes]:
    data = base64.b64encode(png).decode("ascii")
    if endpoint == "predict":
        return "/predict", json.dumps({"image_base64": data, "prompt": "Free OCR."}).encode()
    body = {
        "model": "deepseek-ai/DeepSeek-OCR",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                    {"type": "text", "text": "free"},
                ],
            }
        ],
    }
    return "/v1/chat/completions", json.dumps(body).encode()


@dataclass
class Sample:
    latency_ms: float
    server_ms: float
    # A connection the server dropped (counted and reported, not timed).
    failed: bool = False


async def one(client: httpx.AsyncClient, path: str, body: bytes) -> Sample:
    started = time.perf_counter()
    try:
        response = await client.post(path, content=body, headers={"content-type": "application/json"})
    except httpx.TransportError:
        return Sample(0.0, 0.0, failed=True)
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
    return Sample(latency_ms, float(response.headers[SERVER_TIME_HEADER]))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), robust to other load on the machine."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def report(name: str, all_samples: list[Sample], wall_s: float, latency_ms: float, cpu_s: float) -> None:
    samples = [s for s in all_samples if not s.failed]
    failed = len(all_samples) - len(samples)
    lat = [s.latency_ms for s in samples]
    srv = [s.server_ms for s in samples]
    p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
    s50, s99 = percentile(srv, 0.50), percentile(srv, 0.99)
    print(
        f"{name:<34} n={len(samples):5d}  {len(samples) / wall_s:7.1f} req/s  "
        f"latency p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  | server p50 {s50:6.2f} ms  p99 {s99:6.2f} ms  | "
        f"overhead p50: client-side {p50 - latency_ms:6.2f} ms, server-side {s50 - latency_ms:5.2f} ms  | "
        f"server CPU {cpu_s * 1000 / (len(all_samples) + WARMUP):5.2f} ms/req"
        + (f"  | {failed} dropped connections" if failed else "")
    )


async def closed_loop(
    base: str, path: str, body: bytes, *, requests: int, concurrency: int
) -> tuple[list[Sample], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await asyncio.gather(*(one(client, path, body) for _ in range(WARMUP)))
        remaining = requests
        samples: list[Sample] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                samples.append(await one(client, path, body))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


async def open_loop(
    base: str, path: str, body: bytes, *, requests: int, rate: float
) -> tuple[list[Sample], float]:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await asyncio.gather(*(one(client, path, body) for _ in range(WARMUP)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks: list[asyncio.Task[Sample]] = []
        for i in range(requests):
            # Send on schedule (open loop): latency does not slow the offered rate down.
            delay = started + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, path, body)))
        samples = await asyncio.gather(*tasks)
        return list(samples), loop.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rate", type=float, default=200.0, help="offered rate of the open-loop runs (req/s)"
    )
    parser.add_argument("--a4-rate", type=float, default=30.0, help="offered rate of the A4 open-loop runs")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="fixed engine latency")
    parser.add_argument("--endpoint", choices=["predict", "chat", "both"], default="both")
    parser.add_argument("--images", choices=["tiny", "a4", "both"], default="both")
    parser.add_argument(
        "--async-deps", action="store_true", help="experiment: async twins of the sync FastAPI dependencies"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.latency_ms / 1000, async_deps=args.async_deps)
        return

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    cmd = [sys.executable, __file__, "--serve", str(port), "--latency-ms", str(args.latency_ms)]
    if args.async_deps:
        cmd.append("--async-deps")
    server = subprocess.Popen(cmd, env=env)
    try:
        wait_ready(base, process=server)
        print(
            f"server: uvicorn, 1 worker, {base}; engine latency {args.latency_ms:g} ms; {os.cpu_count()} CPUs"
        )
        images = {}
        if args.images in ("tiny", "both"):
            images["tiny 64x64"] = tiny_png()
        if args.images in ("a4", "both"):
            images["A4 1240x1754"] = a4_png()
        endpoints = ["predict", "chat"] if args.endpoint == "both" else [args.endpoint]
        runs: list[tuple[str, Callable[[], Awaitable[tuple[list[Sample], float]]]]] = []
        for endpoint in endpoints:
            for label, png in images.items():
                path, body = request_body(endpoint, png)
                # A4 decoding costs ~20 ms of CPU per request, so one worker cannot take 200 req/s of
                # A4 pages: it gets its own (sustainable) offered rate.
                rate = args.rate if label.startswith("tiny") else args.a4_rate
                runs.append(
                    (
                        f"{endpoint} {label} c={args.concurrency}",
                        lambda p=path, b=body: closed_loop(
                            base, p, b, requests=args.requests, concurrency=args.concurrency
                        ),
                    )
                )
                runs.append(
                    (
                        f"{endpoint} {label} {rate:g} req/s",
                        lambda p=path, b=body, r=rate: open_loop(base, p, b, requests=args.requests, rate=r),
                    )
                )
        for name, run in runs:
            cpu_before = cpu_seconds(server.pid)
            samples, wall = asyncio.run(run())
            report(name, samples, wall, args.latency_ms, cpu_seconds(server.pid) - cpu_before)
        print(f"load average after the runs: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
