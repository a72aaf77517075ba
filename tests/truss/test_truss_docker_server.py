"""The Truss deployment end to end, through Truss's own serving code for ``docker_server``, without docker.

For ``docker_server`` Truss ships no Python server: the image runs supervisord with two programs,
the config's ``start_command`` and nginx, configured by ``proxy.conf``, which maps Baseten's paths
(``/v1/models/model:predict`` → ``predict_endpoint``, ``/v1/models/model`` → readiness, ``/`` →
liveness) and forwards every other path. Both files are rendered here by the installed truss
package's own functions, from truss/config.yaml; the model server is that command, run as
supervisord runs it, with the config's environment and the fake engine; nginx runs the rendered
proxy. The one change: nginx listens on a free loopback port instead of 8080.
"""

from __future__ import annotations

import base64
import configparser
import io
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image, ImageDraw
from truss.base.truss_config import TrussConfig
from truss.contexts.image_builder.serving_image_builder import (
    generate_docker_server_nginx_config,
    generate_docker_server_supervisord_config,
)

from predict_contract import SEED_LONG_KEYS
from server_support import free_port

TRUSS_DIR = Path(__file__).resolve().parents[2] / "truss"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (scripts/test.sh installs Debian's nginx)"
)

# An nginx main configuration around Truss's proxy.conf (a conf.d include in the image).
NGINX_CONF = """
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{}}
http {{
    include {work}/proxy.conf;
}}
"""


@dataclass(frozen=True)
class Deployment:
    url: str
    config: TrussConfig


def _page_png(width: int = 600, height: int = 800) -> str:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 20), "A test page", fill="black")
    draw.rectangle((20, 60, width - 20, height - 20), outline="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _wait_until(url: str, processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(
                    f"{process.args!r} exited with {process.returncode}:\n"
                    + "\n".join(log.read_text(errors="replace") for log in logs if log.exists())
                )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 in 60 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    assert NGINX is not None
    work = tmp_path_factory.mktemp("truss-docker-server")
    config = TrussConfig.from_yaml(TRUSS_DIR / "config.yaml")
    assert config.docker_server is not None
    # Free ports instead of 8000 (server_port, DSOCR_SERVER__PORT) and 8080 (Truss's proxy).
    server_port, proxy_port = free_port(), free_port()
    rendered = config.model_copy(
        update={"docker_server": config.docker_server.model_copy(update={"server_port": server_port})}
    )
    generate_docker_server_nginx_config(work, rendered)
    generate_docker_server_supervisord_config(work, rendered)

    proxy = (work / "proxy.conf").read_text(encoding="utf-8")
    assert proxy.count("listen 8080;") == 1
    (work / "proxy.conf").write_text(proxy.replace("listen 8080;", f"listen 127.0.0.1:{proxy_port};"))
    (work / "nginx.conf").write_text(NGINX_CONF.format(work=work))

    supervisord = configparser.ConfigParser()
    supervisord.read(work / "supervisord.conf")
    command = shlex.split(supervisord["program:model-server"]["command"])

    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    env.update(config.environment_variables)
    env.update(
        {
            "DSOCR_SERVER__PORT": str(server_port),
            "DSOCR_ENGINE__KIND": "fake",
            # One page in flight, so that a second request at once gets the 429.
            "DSOCR_LIMITS__MAX_QUEUE": "1",
            # `dsocr` on PATH is this environment's, as it is the image's after the build command.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    server_log, nginx_log = work / "server.log", work / "nginx-error.log"
    with server_log.open("wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    nginx = subprocess.Popen(
        [NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(nginx_log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{proxy_port}"
        _wait_until(f"{url}/v1/models/model", [server, nginx], [server_log, nginx_log])
        yield Deployment(url=url, config=config)
    finally:
        _stop(nginx)
        _stop(server)


def test_platform_probes_reach_dsocr_health_routes(deployment: Deployment) -> None:
    liveness = httpx.get(f"{deployment.url}/", timeout=10)
    assert liveness.status_code == 200
    assert liveness.json()["status"] == "ok"
    readiness = httpx.get(f"{deployment.url}/v1/models/model", timeout=10)
    assert readiness.status_code == 200
    assert readiness.json()["status"] == "ready"


def test_predict_answers_the_configs_example_input(deployment: Deployment) -> None:
    # The playground's example input, with the image sent inline (no network in tests).
    example = dict(deployment.config.model_metadata["example_model_input"])
    assert example.pop("image_url").startswith("https://")
    response = httpx.post(
        f"{deployment.url}/v1/models/model:predict",
        json={**example, "image_base64": _page_png(600, 800)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert list(result)[: len(SEED_LONG_KEYS)] == SEED_LONG_KEYS
    assert result["image_size"] == [600, 800]
    assert result["has_bounding_boxes"] is True
    assert result["blocks"] and all(block["boxes_px"] for block in result["blocks"])


def test_bad_input_is_a_400_with_the_error_envelope_once(deployment: Deployment) -> None:
    predict = f"{deployment.url}/v1/models/model:predict"
    response = httpx.post(predict, json={"prompt": "document"}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "field", "param", "request_id"}
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["field"]) == ("invalid_input", "image_url")
    assert "image_url" in error["message"]


def test_admission_refuses_beyond_max_queue_with_429_and_retry_after(deployment: Deployment) -> None:
    # [fake:slow=3]: the fake engine holds each page for 3 s, so the three requests overlap.
    payload = {"image_base64": _page_png(300, 200), "prompt": "<image>\nFree OCR. [fake:slow=3]"}

    def predict(_: int) -> httpx.Response:
        return httpx.post(f"{deployment.url}/v1/models/model:predict", json=payload, timeout=60)

    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(predict, range(3)))
    assert sorted(r.status_code for r in responses) == [200, 429, 429], [r.text for r in responses]
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "engine_overloaded"
        assert int(refused.headers["Retry-After"]) >= 1


def test_openai_route_is_served_through_the_proxy(deployment: Deployment) -> None:
    client = openai.OpenAI(base_url=f"{deployment.url}/v1", api_key="unused", max_retries=0)
    model = deployment.config.environment_variables["DSOCR_ENGINE__SERVED_MODEL_NAME"]
    assert model in [m.id for m in client.models.list()]
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_page_png()}"}},
                {"type": "text", "text": "Free OCR."},
            ],
        }
    ]
    completion = client.chat.completions.create(model=model, messages=messages)
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"


def test_metrics_carry_dsocr_series(deployment: Deployment) -> None:
    httpx.post(f"{deployment.url}/v1/models/model:predict", json={"prompt": "document"}, timeout=30)
    metrics = httpx.get(f"{deployment.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "dsocr_http_requests_total{" in metrics.text
    assert "dsocr_queue_depth_pages" in metrics.text
