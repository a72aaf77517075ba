"""``dsocr serve`` as a real process: the banner, API keys from a file, the OpenAI client against it."""

from __future__ import annotations

import base64
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from PIL import Image, ImageDraw

from server_support import dsocr_serve

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
