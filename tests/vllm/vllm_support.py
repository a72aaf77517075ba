"""Helpers for the vLLM tests: the real server on the tiny model, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from server_support import free_port

SUPPORT = Path(__file__).parent / "support"


@contextmanager
def tiny_server(
    model_dir: Path, env: Mapping[str, str], log: Path, *, timeout_s: float, log_level: str = "warning"
) -> Iterator[str]:
    """The real ``dsocr serve`` (support/serve_tiny.py adds only the vision-tower shrink) on a free
    loopback port, with ``env`` on top of this process's; its URL once ``/ready`` answers 200.
    Stopped with SIGTERM on exit (killed if it lingers)."""
    port = free_port()
    command = [sys.executable, str(SUPPORT / "serve_tiny.py"), "serve", "--engine", "vllm"]
    command += ["--model", str(model_dir), "--port", str(port), "--log-level", log_level]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dsocr serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"not ready after {timeout_s} s:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(url + "/ready", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
