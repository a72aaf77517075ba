"""Helpers for the jobs tests: documents, and waiting for a job over HTTP."""

from __future__ import annotations

import contextlib
import io
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from PIL import Image, ImageDraw


def png(size: tuple[int, int] = (320, 240), text: str = "page") -> bytes:
    """A small PNG with some text on it."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((10, 10), text, fill="black")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def pdf(pages: int, size: tuple[int, int] = (300, 400)) -> bytes:
    """A PDF of ``pages`` pages, each a little different."""
    images = []
    for n in range(pages):
        image = Image.new("RGB", (size[0] + n, size[1]), "white")
        ImageDraw.Draw(image).text((20, 20), f"page {n + 1}", fill="black")
        images.append(image)
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:])
    return out.getvalue()


def wait_job(
    client: httpx.Client,
    job_id: str,
    *,
    until: Any = ("succeeded", "failed", "cancelled"),
    timeout_s: float = 60,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until its status is in ``until`` (or ``until(job)`` holds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        done = until(job) if callable(until) else job["status"] in until
        if done:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not get there in {timeout_s} s: {job}")
        time.sleep(0.05)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers the n-th POST with ``answers[n]`` (the last repeats)."""

    port: int
    scheme: str = "http"
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=lambda: [(200, {})])
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    stall: bool = False

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    @property
    def ids(self) -> list[str]:
        return [r.headers.get("webhook-id", "") for r in self.requests]


@contextlib.contextmanager
def serving(context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver: Receiver

    class _Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            receiver.requests.append(Received(self.path, headers, body))
            if receiver.stall:
                receiver.release.wait(10)
            answers = receiver.answers
            status, extra = answers[min(len(receiver.requests), len(answers)) - 1]
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    receiver = Receiver(port=server.server_address[1], scheme="https" if context else "http")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join()
