"""``dsocr ocr`` and ``dsocr batch`` run locally with either model: the one ``--model`` or
``DSOCR_ENGINE__MODEL`` names is the model the local engine serves, and its profile applies (its
modes, its n-gram defaults, its vision-token count).

Locally there is one model, the default: ``--model`` replaces it (with ``--server``, ``--model``
names one of the server's models instead, see tests/remote). The fake engine is built by the
factory as usual and kept, so the engine requests can be read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from dsocr import cli_ocr
from dsocr.batch import runner as batch_runner
from dsocr.cli import app
from dsocr.engine.base import Engine
from dsocr.engine.factory import create_engine
from dsocr.engine.fake import FakeEngine
from dsocr.settings import EngineSettings

V1 = "deepseek-ai/DeepSeek-OCR"
V2 = "deepseek-ai/DeepSeek-OCR-2"
# An untiled page (both sides ≤ 640): v1 Gundam spends 273 vision tokens on it, v2 257.
SIZE = (400, 300)
VISION = {V1: 273, V2: 257}
NGRAM = {V1: (30, 90), V2: (20, 90)}

runner = CliRunner()


class Recorded:
    """The engines the commands built, in order."""

    def __init__(self) -> None:
        self.engines: list[FakeEngine] = []

    def __call__(self, settings: EngineSettings) -> Engine:
        engine = create_engine(settings)
        assert isinstance(engine, FakeEngine)
        self.engines.append(engine)
        return engine

    def sampling(self) -> list[tuple[str | None, str, int | None, int]]:
        return [
            (seen.model, seen.mode, seen.sampling.ngram_size, seen.sampling.ngram_window)
            for engine in self.engines
            for seen in engine.requests
        ]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    record = Recorded()
    monkeypatch.setattr(cli_ocr, "create_engine", record)
    monkeypatch.setattr(batch_runner, "create_engine", record)
    return record


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "page.png"
    image = Image.new("RGB", SIZE, "white")
    ImageDraw.Draw(image).text((20, 20), "A page", fill="black")
    image.save(path)
    return path


def _how(model: str, way: str) -> tuple[list[str], dict[str, str]]:
    """Arguments and environment that make ``model`` the local model: by flag or by variable."""
    if way == "flag":
        return ["--model", model], {}
    return [], {"DSOCR_ENGINE__MODEL": model}


WAYS = [
    pytest.param(model, way, id=f"{name}-{way}")
    for model, name in ((V2, "v2"), (V1, "v1"))
    for way in ("flag", "env")
]


@pytest.mark.parametrize(("model", "way"), WAYS)
def test_ocr_applies_the_local_models_profile(recorded: Recorded, png: Path, model: str, way: str) -> None:
    args, env = _how(model, way)
    result = runner.invoke(
        app, ["ocr", str(png), "--engine", "fake", "--format", "json", "-q", *args], env=env
    )
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["model"] == model
    assert document["usage"]["vision_tokens"] == VISION[model]
    assert recorded.sampling() == [(None, "gundam", *NGRAM[model])]


@pytest.mark.parametrize("way", ["flag", "env"])
def test_ocr_refuses_a_v1_only_mode_for_v2(recorded: Recorded, png: Path, way: str) -> None:
    args, env = _how(V2, way)
    result = runner.invoke(app, ["ocr", str(png), "--engine", "fake", "--mode", "tiny", "-q", *args], env=env)
    assert result.exit_code == 2, result.stdout
    assert "'tiny'" in result.stderr and "available: gundam" in result.stderr and "(mode)" in result.stderr
    assert recorded.sampling() == []


@pytest.mark.parametrize(("model", "way"), WAYS)
def test_batch_applies_the_local_models_profile(
    recorded: Recorded, png: Path, tmp_path: Path, model: str, way: str
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    png.rename(inputs / "page.png")
    out = tmp_path / "out"
    args, env = _how(model, way)
    result = runner.invoke(
        app, ["batch", str(inputs), "--out", str(out), "--engine", "fake", "-q", *args], env=env
    )
    assert result.exit_code == 0, result.stderr
    page = json.loads((out / "page" / "pages" / "1.json").read_text(encoding="utf-8"))
    assert page["usage"]["vision_tokens"] == VISION[model]
    assert recorded.sampling() == [(None, "gundam", *NGRAM[model])]


def test_batch_refuses_a_v1_only_mode_for_v2(recorded: Recorded, png: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "batch",
            str(png),
            "--out",
            str(tmp_path / "out"),
            "--engine",
            "fake",
            "--model",
            V2,
            "--mode",
            "base",
        ],
    )
    assert result.exit_code == 2, result.stdout
    assert "'base'" in result.stderr and "available: gundam" in result.stderr
    assert recorded.sampling() == []
