"""HTTP edges on a real server on loopback: hostile JSON nesting, HEAD, the concurrency limit.

Keep-alive is checked on one ``http.client`` connection that may not reconnect
(``auto_open = 0``): a server that dropped the connection fails the next request.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image, ImageDraw

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import Server, running_server

API_KEY = "e2e-edges-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "deepseek-ai/DeepSeek-OCR"
DEPTH = 100_000


def png_b64() -> str:
    image = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(image).text((20, 20), "edges", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


GOOD_PREDICT = json.dumps({"image_base64": png_b64()}).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    settings = Settings(engine={"kind": "fake", "model": MODEL}, server={"api_keys": [API_KEY]})
    with running_server(settings, FakeEngine()) as running:
        yield running


class OneConnection:
    """Requests over a single kept-alive TCP connection; never silently opens another."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.conn.connect()
        self.conn.auto_open = 0  # type: ignore[attr-defined]  # raise instead of reconnecting
        self.local = self.conn.sock.getsockname()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        self.conn.request(method, path, body=body, headers={**AUTH, **(headers or {})})
        response = self.conn.getresponse()
        data = response.read()
        assert self.conn.sock is not None, f"the server closed the connection after {method} {path}"
        assert self.conn.sock.getsockname() == self.local
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def connection(server: Server) -> Iterator[OneConnection]:
    one = OneConnection(server.url)
    try:
        yield one
    finally:
        one.close()


def deep_json(depth: int, *, inside: str | None = None) -> bytes:
    """``[[[…]]]`` nested ``depth`` deep, optionally as the value of key ``inside`` of an object
    (beside a valid ``model``, which the chat route checks first)."""
    nested = "[" * depth + "]" * depth
    if inside is None:
        return nested.encode()
    return json.dumps({"model": MODEL, inside: "@"}).replace('"@"', nested).encode()


def assert_bad_request(status: int, body: bytes, *, status_expected: int = 400) -> dict[str, Any]:
    assert status == status_expected, body[:300]
    error: dict[str, Any] = json.loads(body)["error"]
    assert error["code"] in ("invalid_input", "validation_error")
    assert error["type"] == "invalid_request_error"
    assert error["request_id"]
    return error


# ----------------------------------------------------------------------------- nested JSON


@pytest.mark.parametrize("path", ["/v1/ocr", "/predict", "/v1/chat/completions"])
def test_json_nested_too_deep_is_400_and_the_connection_keeps_serving(
    connection: OneConnection, path: str
) -> None:
    status, _, body = connection.request(
        "POST", path, deep_json(DEPTH), headers={"Content-Type": "application/json"}
    )
    error = assert_bad_request(status, body)
    assert "nested too deeply" in error["message"]
    assert error["field"] == "body"
    # The same connection answers a real OCR request next.
    status, _, body = connection.request(
        "POST", "/predict", GOOD_PREDICT, headers={"Content-Type": "application/json"}
    )
    assert status == 200, body[:300]
    assert json.loads(body)["image_size"] == [320, 240]


@pytest.mark.parametrize(
    ("path", "key"), [("/v1/ocr", "pages"), ("/predict", "image_url"), ("/v1/chat/completions", "messages")]
)
def test_json_nested_deep_inside_a_field_is_a_4xx_naming_it(
    connection: OneConnection, path: str, key: str
) -> None:
    # Deep, yet shallow enough to parse: validation must refuse it, not crash on it.
    status, _, body = connection.request(
        "POST", path, deep_json(900, inside=key), headers={"Content-Type": "application/json"}
    )
    assert 400 <= status < 500, body[:300]
    error = json.loads(body)["error"]
    assert error["field"] is not None and error["field"].startswith(key)
    status, _, _ = connection.request(
        "POST", "/predict", GOOD_PREDICT, headers={"Content-Type": "application/json"}
    )
    assert status == 200


def test_deep_brackets_in_a_multipart_field_are_a_4xx_naming_it(connection: OneConnection) -> None:
    boundary = "dsocr-edges-boundary"
    parts = [
        ("pages", "[" * DEPTH + "]" * DEPTH),
        ("outputs", "[" * DEPTH),
    ]
    for name, value in parts:
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + base64.b64decode(png_b64())
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, _, answer = connection.request(
            "POST", "/v1/ocr", body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert 400 <= status < 500, answer[:300]
        assert json.loads(answer)["error"]["field"] == name
    status, _, _ = connection.request(
        "POST", "/predict", GOOD_PREDICT, headers={"Content-Type": "application/json"}
    )
    assert status == 200


# ----------------------------------------------------------------------------- HEAD


@pytest.mark.parametrize(
    "path",
    ["/health", "/ready", "/metrics", "/v1/models", "/", "/static/app.css", "/docs", "/openapi.json"],
)
def test_head_answers_like_get_without_a_body(connection: OneConnection, path: str) -> None:
    get_status, get_headers, get_body = connection.request("GET", path)
    assert get_status == 200 and get_body
    head_status, head_headers, head_body = connection.request("HEAD", path)
    assert head_status == 200
    assert head_body == b""
    assert head_headers["content-type"] == get_headers["content-type"]
    if path not in ("/health", "/metrics"):  # their bodies change from call to call
        assert int(head_headers["content-length"]) == len(get_body)
    # Had the server sent a body after all, this answer on the same connection would be garbage.
    status, _, _ = connection.request("GET", "/health")
    assert status == 200


def test_head_on_a_post_route_is_405_like_get(connection: OneConnection) -> None:
    status, headers, body = connection.request("HEAD", "/v1/ocr")
    assert status == 405 and body == b""
    assert "POST" in headers["allow"]


# ----------------------------------------------------------------------------- concurrency


def _slow_ocr(client: httpx.Client) -> int:
    body = {"image_base64": png_b64(), "prompt": "Free OCR. [fake:slow=4]"}
    return client.post("/v1/ocr", json=body, timeout=60).status_code


def test_max_concurrency_from_the_environment_is_enforced_with_503_and_probes_keep_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DSOCR_SERVER__MAX_CONCURRENCY", "2")
    engine = FakeEngine()
    with (
        running_server(Settings(engine={"kind": "fake"}), engine) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        slow = [pool.submit(_slow_ocr, client) for _ in range(2)]
        deadline = time.monotonic() + 20
        while len(engine.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(engine.requests) == 2
        refused = client.post("/v1/ocr", json={"image_base64": png_b64()})
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("server_busy", "server_error")
        assert "DSOCR_SERVER__MAX_CONCURRENCY" in error["message"] and "2" in error["message"]
        assert error["request_id"] == refused.headers["x-request-id"]
        # Liveness, readiness and scraping are never refused for load.
        for probe in ("/health", "/ready", "/metrics"):
            assert client.get(probe).status_code == 200
        assert [future.result() for future in slow] == [200, 200]
        # Capacity is given back when the requests end.
        assert client.post("/v1/ocr", json={"image_base64": png_b64()}).status_code == 200
        metrics = client.get("/metrics").text
        assert 'dsocr_errors_total{code="server_busy",scope="request"} 1.0' in metrics
