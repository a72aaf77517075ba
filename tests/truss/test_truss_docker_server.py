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
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from PIL import Image, ImageDraw
from truss.base.truss_config import TrussConfig

from predict_contract import SEED_LONG_KEYS
from server_support import NGINX, truss_docker_server

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (scripts/test.sh installs Debian's nginx)"
)


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


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("truss-docker-server")
    # One page in flight, so that a second request at once gets the 429.
    # The admission test sends one page three times: with the result cache, two would never queue.
    settings = {"DSOCR_ENGINE__KIND": "fake", "DSOCR_LIMITS__MAX_QUEUE": "1", "DSOCR_CACHE__ENABLED": "false"}
    with truss_docker_server(work, settings) as proxy:
        yield Deployment(url=proxy.url, config=proxy.config)


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
