"""How long the GPU benchmark's HTTP client takes to take in a burst of answers.

A uvicorn app on loopback holds every request of the timed pass until one release instant, then
answers all of them at once with a chat-completion-sized JSON body (1000 tokens of mixed text);
the clients of ``gpu_throughput.py`` (``_run_clients``) drive it. Prints, per number of client
processes, when the last answer was sent and when the clients had them all (seconds after the
clients' start): the difference is time the GPU benchmark would count against the server.

usage: python bench/bench_client_tail.py [--requests 256] [--processes 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
import gpu_throughput as bench

HOLD_S = 3.0  # from the first timed request to the release instant


def answer_body() -> bytes:
    rng = random.Random(0)
    text = "".join(chr(rng.randrange(0x4E00, 0x9FFF)) if rng.random() < 0.5 else "word " for _ in range(1000))
    answer = {"choices": [{"message": {"content": text}}], "usage": {"completion_tokens": 1000}}
    return json.dumps(answer).encode()


class BurstServer:
    """ASGI app: the first 8 chat requests (the clients' warm-up) pass, later ones wait for release."""

    def __init__(self) -> None:
        self.body = answer_body()
        self.seen = 0
        self.release = 0.0
        self.sent: list[float] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        timed = scope["path"] == "/v1/chat/completions" and self.seen >= 8
        if scope["path"] == "/v1/chat/completions":
            self.seen += 1
            if self.seen == 9:
                self.release = time.monotonic() + HOLD_S
        if timed:
            await asyncio.sleep(max(0.0, self.release - time.monotonic()))
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})
        if timed:
            self.sent.append(time.monotonic())


async def measure(requests: int, processes: int, port: int) -> None:
    app = BurstServer()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no "started" event
        await asyncio.sleep(0.1)
    path = "/tmp/dsocr-bench-tail-pngs.json"
    pngs = json.dumps([bench._png_b64(bench.page(i)) for i in range(4)])
    await asyncio.to_thread(Path(path).write_text, pngs)
    bench.CLIENT_PROCESSES = processes
    clients = await bench._run_clients(f"http://127.0.0.1:{port}", requests, 1000, path)
    last_sent = max(app.sent) - clients["t0"]
    print(
        f"{processes} client process(es), {requests} requests: last answer sent at {last_sent:.3f} s, "
        f"all taken in at {clients['wall_s']:.3f} s (client tail {clients['wall_s'] - last_sent:.3f} s)"
    )
    server.should_exit = True
    await serving


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--processes", default="1,8")
    ap.add_argument("--port", type=int, default=8797)
    a = ap.parse_args()
    for processes in (int(p) for p in a.processes.split(",")):
        asyncio.run(measure(a.requests, processes, a.port))


if __name__ == "__main__":
    main()
