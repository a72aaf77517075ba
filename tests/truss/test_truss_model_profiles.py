"""The Truss deployment serving DeepSeek-OCR 2 as its default model applies that model's profile.

Truss's own serving code for ``docker_server`` is its nginx proxy (``proxy.conf``, rendered here by
the installed truss package from truss/config.yaml) in front of the config's ``start_command``,
``dsocr serve``. Here the proxy runs as rendered, and behind it dsocr's app runs in this process
(uvicorn in a thread) with the config's environment, so that the fake engine's requests can be
read: the weights are mounted where the config mounts them (``/models/deepseek-ocr``, a directory
whose ``config.json`` says which model it holds), and only the engine kind is changed to fake.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from truss.base.truss_config import TrussConfig

from dsocr.engine.factory import create_engine
from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import NGINX, TRUSS_DIR, Server, render_truss_proxy, running_server

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (scripts/test.sh installs Debian's nginx)"
)

V1 = "deepseek-ai/DeepSeek-OCR"
V2 = "deepseek-ai/DeepSeek-OCR-2"
ARCHITECTURES = {V1: "DeepseekOCRForCausalLM", V2: "DeepseekOCR2ForCausalLM"}
# An untiled page (both sides ≤ 640): v1 Gundam spends 273 vision tokens on it, v2 257.
VISION = {V1: 273, V2: 257}
NGRAM = {V1: (30, 90), V2: (20, 90)}


def _png(width: int = 400, height: int = 300) -> str:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((20, 20), "A test page", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@contextmanager
def _truss_proxy(work: Path, server_port: int) -> Iterator[str]:
    """Truss's proxy for truss/config.yaml in front of ``server_port``; yields its URL."""
    assert NGINX is not None
    _, _, proxy_port = render_truss_proxy(work, server_port)
    nginx_log = work / "nginx-error.log"
    nginx = subprocess.Popen(
        [NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(nginx_log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{proxy_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if nginx.poll() is not None:
                raise AssertionError(f"nginx exited: {nginx_log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}/v1/models/model", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}/v1/models/model did not answer 200")
            time.sleep(0.1)
        yield url
    finally:
        nginx.terminate()
        try:
            nginx.wait(timeout=20)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()


def _deployment_settings(monkeypatch: pytest.MonkeyPatch, weights: Path, served_name: str) -> Settings:
    """The settings ``dsocr serve`` reads in the Truss image: the config's environment, with the
    weights at ``weights`` and the fake engine."""
    config = TrussConfig.from_yaml(TRUSS_DIR / "config.yaml")
    for name in [name for name in os.environ if name.startswith("DSOCR_")]:
        monkeypatch.delenv(name)
    environment = {
        **config.environment_variables,
        "DSOCR_ENGINE__KIND": "fake",
        "DSOCR_ENGINE__MODEL": str(weights),
        "DSOCR_ENGINE__SERVED_MODEL_NAME": served_name,
        "DSOCR_CACHE__ENABLED": "false",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    return Settings()


@contextmanager
def _deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str
) -> Iterator[tuple[str, FakeEngine]]:
    """The deployment with ``model``'s weights where the config mounts them; yields the proxy's
    URL and the engine."""
    config = TrussConfig.from_yaml(TRUSS_DIR / "config.yaml")
    mount = Path(config.weights.root[0].mount_location)
    assert mount.name == "deepseek-ocr"  # a name v1's rule matches, whichever weights are there
    weights = tmp_path / mount.relative_to("/")
    weights.mkdir(parents=True)
    (weights / "config.json").write_text(json.dumps({"architectures": [ARCHITECTURES[model]]}))
    settings = _deployment_settings(monkeypatch, weights, model)
    engine = create_engine(settings.engine)
    assert isinstance(engine, FakeEngine)
    with running_server(settings, engine) as server:
        work = tmp_path / "truss"
        work.mkdir()
        with _truss_proxy(work, _port(server)) as url:
            yield url, engine


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("model", [V2, V1])
def test_the_default_models_profile_reaches_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    with _deployment(tmp_path, monkeypatch, model) as (url, engine):
        predict = httpx.post(
            f"{url}/v1/models/model:predict", json={"image_base64": _png(), "prompt": "free"}, timeout=60
        )
        ocr = httpx.post(f"{url}/v1/ocr", json={"image_base64": _png(), "preset": "document"}, timeout=60)
    assert predict.status_code == 200, predict.text
    assert ocr.status_code == 200, ocr.text
    assert predict.json()["model_name"] == ocr.json()["model"] == model
    assert predict.json()["usage"]["vision_tokens"] == ocr.json()["usage"]["vision_tokens"] == VISION[model]
    rules = [
        (seen.model, seen.mode, seen.sampling.ngram_size, seen.sampling.ngram_window)
        for seen in engine.requests
    ]
    assert rules == [(None, "gundam", *NGRAM[model])] * 2


def test_v2_refuses_a_v1_only_mode_naming_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _deployment(tmp_path, monkeypatch, V2) as (url, engine):
        refused = httpx.post(
            f"{url}/v1/models/model:predict",
            json={"image_base64": _png(), "prompt": "free", "mode": "large"},
            timeout=60,
        )
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"], error["param"]) == ("invalid_input", "mode", "mode")
    assert "'large'" in error["message"] and V2 in error["message"]
    assert error["message"].endswith("available: gundam")
    assert engine.requests == []
