"""``dsocr serve`` as a real process: the banner, API keys from a file, the OpenAI client against it."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image, ImageDraw

KEY = "file-key-abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# production keys\n{KEY}\n\nsecond-key\n", encoding="utf-8")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "dsocr", "serve", "--engine", "fake", "--port", str(port),
         "--api-key-file", str(key_file), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"dsocr serve exited: {process.stderr.read() if process.stderr else ''}")
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("dsocr serve did not become ready")
            time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_prints_engine_urls_and_requires_the_file_keys(
    served: tuple[str, subprocess.Popen[str]],
) -> None:
    base, process = served
    image = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(image).text((20, 20), "hello", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    with openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0) as client:
        (model,) = client.models.list().data
        completion = client.chat.completions.create(
            model=model.id,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "free"},
                    ],
                }
            ],
        )
        assert completion.choices[0].message.content
    with (
        openai.OpenAI(base_url=f"{base}/v1", api_key="not-a-key", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()

    process.terminate()
    _, stderr = process.communicate(timeout=20)
    assert "engine fake" in stderr
    assert f"OpenAI base URL {base}/v1" in stderr
    assert f"playground {base}/;" in stderr
    assert "2 API key(s)" in stderr
    assert KEY not in stderr, "keys are never printed"
