"""``dsocr serve`` as a real process: the banner, API keys from a file, the OpenAI client against it,
and several worker processes built from one ``Settings`` object."""

from __future__ import annotations

import base64
import http.client
import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from PIL import Image, ImageDraw

from server_support import dsocr_serve, dsocr_serve_with_env

KEY = "file-key-abcdef"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# production keys\n{KEY}\n\nsecond-key\n", encoding="utf-8")
    with dsocr_serve(
        "--engine", "fake", "--api-key-file", str(key_file), "--log-level", "warning"
    ) as running:  # fmt: skip
        yield running


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


def _pid_and_keyless_status(base: str) -> tuple[int, int]:
    """On one connection (so one worker): the pid behind ``/health`` with the key, then the status
    of ``/health`` without it."""
    where = urlsplit(base)
    connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=10)
    try:
        connection.request("GET", "/health", headers={"Authorization": f"Bearer {KEY}"})
        answer = connection.getresponse()
        assert answer.status == 200, answer.read()
        pid = int(json.loads(answer.read())["pid"])
        sock = connection.sock
        connection.request("GET", "/health")
        keyless = connection.getresponse()
        keyless.read()
        assert sock is not None and connection.sock is sock, "the connection was not kept"
        return pid, keyless.status
    finally:
        connection.close()


def test_serve_with_two_workers_answers_from_both_and_each_requires_the_file_keys(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"{KEY}\n", encoding="utf-8")
    auth = {"Authorization": f"Bearer {KEY}"}
    with dsocr_serve_with_env(
        {"DSOCR_SERVER__OPEN_HEALTH": "false"},
        "--engine", "fake", "--workers", "2", "--api-key-file", str(key_file), "--log-level", "warning",
        log=tmp_path / "serve.log",
        ready_headers=auth,
    ) as (base, process):  # fmt: skip
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 60
        # Each new connection goes to whichever worker accepts it first.
        while len(seen) < 2 and time.monotonic() < deadline:
            pid, keyless = _pid_and_keyless_status(base)
            seen[pid] = keyless
        environments = [Path(f"/proc/{pid}/environ").read_bytes() for pid in seen]
    assert len(seen) == 2 and process.pid not in seen, seen
    assert set(seen.values()) == {401}, "every worker requires the key"
    # The keys reached the workers inside the settings object, not through their environment.
    assert all(KEY.encode() not in environment for environment in environments)
