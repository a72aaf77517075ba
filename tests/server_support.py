"""Real servers on loopback for the e2e, web and CLI tests.

* :func:`running_server` — ``create_app`` under uvicorn in a thread, on a free port.
* :func:`dsocr_serve` — ``python -m dsocr serve`` as a process, as users start it.
* :func:`wait_ready` — poll ``/ready`` until 200, failing early if the process died.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import httpx
import uvicorn

from dsocr.engine.fake import FakeEngine
from dsocr.server.app import create_app
from dsocr.settings import Settings


@dataclass(frozen=True)
class Server:
    """A running in-process server: its root URL and the engine behind it."""

    url: str
    engine: FakeEngine

    @property
    def base_url(self) -> str:
        """The OpenAI client's base URL."""
        return f"{self.url}/v1"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(settings: Settings, engine: FakeEngine) -> Iterator[Server]:
    """uvicorn in a thread on a free loopback port; stopped and joined on exit."""
    # The socket is bound here and handed to uvicorn, so no other process can take the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, engine=engine), log_level="warning", lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield Server(url=f"http://127.0.0.1:{port}", engine=engine)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def wait_ready(
    base: str,
    *,
    process: subprocess.Popen[Any] | None = None,
    output: Callable[[], str] = lambda: "",
    timeout_s: float = 60,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll ``base``/ready (with ``headers``) until it answers 200; ``output`` explains a process
    that exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {output()}")
        try:
            if httpx.get(f"{base}/ready", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} did not become ready in {timeout_s} s")


@contextmanager
def dsocr_serve(
    *args: str,
    stdout: IO[Any] | int = subprocess.PIPE,
    stderr: IO[Any] | int = subprocess.PIPE,
    output: Callable[[], str] | None = None,
    timeout_s: float = 60,
    env: dict[str, str] | None = None,
    ready_headers: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m dsocr serve --port P ARGS…`` until ready; yields (root URL, process).

    The developer's ``DSOCR_*`` variables are not passed on, only those in ``env``;
    ``ready_headers`` go with the readiness polls (an API key where health is closed). On exit the
    process is terminated (killed after 20 s).
    """
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    env = {**clean, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "dsocr", "serve", "--port", str(port), *args],
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"

    def exited_output() -> str:
        if output is not None:
            return output()
        return process.stderr.read() if process.stderr is not None else ""

    try:
        wait_ready(base, process=process, output=exited_output, timeout_s=timeout_s, headers=ready_headers)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
