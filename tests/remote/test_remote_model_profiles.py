"""``dsocr ocr --server`` and ``dsocr batch --server`` naming a server's extra model: the pages run
on that model with its profile (n-gram defaults, vision-token count), and a mode it lacks is
refused naming ``mode``.

The server (uvicorn in a thread, loopback, fake engine) serves DeepSeek-OCR by default and
DeepSeek-OCR 2 as an extra model; its engine records each page's request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_support import dsocr, page

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import Server, running_server

V1 = "deepseek-ai/DeepSeek-OCR"
V2 = "deepseek-ai/DeepSeek-OCR-2"
# An untiled page (both sides ≤ 640): v1 Gundam spends 273 vision tokens on it, v2 257.
SIZE = (400, 300)
VISION = {V1: 273, V2: 257}
NGRAM = {V1: (30, 90), V2: (20, 90)}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(
        engine={"kind": "fake", "extra_models": [V2]},
        jobs={"dir": str(tmp_path / "jobs")},
        cache={"enabled": False},
    )
    with running_server(settings, FakeEngine()) as running:
        yield running


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "page.png"
    path.parent.mkdir()
    page("A page", SIZE).save(path)
    return path


def _sampling(server: Server) -> list[tuple[str | None, str, int | None, int]]:
    return [
        (seen.model, seen.mode, seen.sampling.ngram_size, seen.sampling.ngram_window)
        for seen in server.engine.requests
    ]


def _routed(model: str) -> str | None:
    """How the server routes ``model``: the default model is ``None``."""
    return None if model == V1 else model


@pytest.mark.parametrize("model", [V2, V1])
def test_ocr_on_the_server_uses_the_named_models_profile(server: Server, png: Path, model: str) -> None:
    result = dsocr("ocr", str(png), "--server", server.url, "--model", model, "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["model"] == model
    assert document["usage"]["vision_tokens"] == VISION[model]
    assert _sampling(server) == [(_routed(model), "gundam", *NGRAM[model])]


def test_ocr_on_the_server_refuses_a_v1_only_mode_for_v2(server: Server, png: Path) -> None:
    result = dsocr("ocr", str(png), "--server", server.url, "--model", V2, "--mode", "tiny", "-q")
    assert result.exit_code == 2, result.stdout
    assert "'tiny'" in result.stderr and "available: gundam" in result.stderr and "(mode)" in result.stderr
    assert server.engine.requests == []


@pytest.mark.parametrize("model", [V2, V1])
def test_batch_on_the_server_uses_the_named_models_profile(
    server: Server, png: Path, tmp_path: Path, model: str
) -> None:
    out = tmp_path / "out"
    result = dsocr(
        "batch", str(png.parent), "--out", str(out), "--server", server.url, "--model", model, "-q"
    )
    assert result.exit_code == 0, result.stderr
    written = json.loads((out / "page" / "pages" / "1.json").read_text(encoding="utf-8"))
    assert written["usage"]["vision_tokens"] == VISION[model]
    assert _sampling(server) == [(_routed(model), "gundam", *NGRAM[model])]


def test_batch_on_the_server_refuses_a_v1_only_mode_for_v2(server: Server, png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = dsocr(
        "batch", str(png.parent), "--out", str(out), "--server", server.url, "--model", V2, "--mode", "base"
    )
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "'base'" in result.stderr and "available: gundam" in result.stderr
    assert server.engine.requests == []


def test_batch_on_the_server_checks_the_mode_against_the_servers_model_not_the_local_default(
    server: Server, png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine's default model is DeepSeek-OCR 2 (one mode); the server's is DeepSeek-OCR.
    monkeypatch.setenv("DSOCR_ENGINE__MODEL", V2)
    out = tmp_path / "out"
    result = dsocr(
        "batch", str(png.parent), "--out", str(out), "--server", server.url, "--mode", "tiny", "-q"
    )
    assert result.exit_code == 0, result.stderr
    assert _sampling(server) == [(None, "tiny", *NGRAM[V1])]
