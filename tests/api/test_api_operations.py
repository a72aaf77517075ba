"""Operations: API keys, body limits, admission (429), readiness (503), deadlines (504), metrics, CORS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from api_support import ClientFactory, b64, png_bytes

from dsocr.engine.base import EngineDelta, EngineOutput, EngineRequest
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineUnavailable
from dsocr.settings import Settings


def keyed(*keys: str, **server: object) -> Settings:
    return Settings(engine={"kind": "fake"}, server={"api_keys": list(keys), **server})


async def test_missing_and_wrong_api_key_are_401(make_client: ClientFactory) -> None:
    async with make_client(settings=keyed("k-one", "k-two")) as client:
        body = {"image_base64": b64(png_bytes())}
        missing = await client.post("/predict", json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        error = missing.json()["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "unauthorized")
        wrong = await client.post("/v1/ocr", json=body, headers={"Authorization": "Bearer k-three"})
        assert wrong.status_code == 401
        assert "not valid" in wrong.json()["error"]["message"]
        # Either configured key works, as Bearer or X-Api-Key.
        bearer = await client.post("/predict", json=body, headers={"Authorization": "Bearer k-two"})
        header = await client.post("/v1/ocr", json=body, headers={"X-Api-Key": "k-one"})
        assert bearer.status_code == 200 and header.status_code == 200


async def test_health_and_metrics_stay_open_with_keys_unless_configured(make_client: ClientFactory) -> None:
    async with make_client(settings=keyed("secret")) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    async with make_client(settings=keyed("secret", open_health=False, open_metrics=False)) as client:
        assert (await client.get("/health")).status_code == 401
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/ready", headers={"X-Api-Key": "secret"})).status_code == 200


async def test_declared_body_over_limit_is_413_before_reading(make_client: ClientFactory) -> None:
    settings = Settings(engine={"kind": "fake"}, limits={"max_upload_bytes": 1000})
    async with make_client(settings=settings) as client:
        response = await client.post(
            "/predict", content=b"x" * 200_000, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == "input_too_large" and error["field"] == "body"
        assert error["request_id"] == response.headers["x-request-id"]


async def test_streamed_body_over_limit_is_413(make_client: ClientFactory) -> None:
    settings = Settings(engine={"kind": "fake"}, limits={"max_upload_bytes": 1000})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"y" * 10_000

    async with make_client(settings=settings) as client:
        # No Content-Length: the body is chunked, so only counting can stop it.
        for path in ("/predict", "/v1/ocr"):
            response = await client.post(path, content=chunks(), headers={"content-type": "application/json"})
            assert response.status_code == 413, path
            assert response.json()["error"]["code"] == "input_too_large"
        ok = await client.post("/predict", json={"image_base64": b64(png_bytes(20, 20))})
        assert ok.status_code == 200


async def test_decoded_upload_over_limit_is_413_naming_the_field(make_client: ClientFactory) -> None:
    data = png_bytes(600, 600)
    settings = Settings(engine={"kind": "fake"}, limits={"max_upload_bytes": len(data) - 1})
    async with make_client(settings=settings) as client:
        response = await client.post("/v1/ocr", files={"file": ("big.png", data, "image/png")})
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "file"


class SignallingEngine(FakeEngine):
    """The fake engine, setting ``entered`` when a request reaches it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.entered = asyncio.Event()

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        self.entered.set()
        async for delta in super().stream(request):
            yield delta


async def test_full_admission_queue_is_429_with_retry_after(make_client: ClientFactory) -> None:
    settings = Settings(engine={"kind": "fake"}, limits={"max_queue": 1})
    engine = SignallingEngine(delay_s=1.0)
    async with make_client(settings=settings, engine=engine) as client:
        body = {"image_base64": b64(png_bytes())}
        slow = asyncio.create_task(client.post("/predict", json=body))
        await engine.entered.wait()  # the first request holds the only slot
        refused = await client.post("/v1/ocr", json=body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "engine_overloaded")
        assert (await slow).status_code == 200
        # The slot is free again.
        assert (await client.post("/predict", json=body)).status_code == 200


async def test_engine_that_fails_to_start_leaves_server_up_but_unready(make_client: ClientFactory) -> None:
    engine = FakeEngine(start_error=EngineUnavailable("weights not found at /models/x"))
    async with make_client(engine=engine) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["engine"]["ready"] is False
        assert "weights not found" in health.json()["engine"]["reason"]
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert "weights not found" in ready.json()["reason"]
        for path in ("/predict", "/v1/ocr"):
            response = await client.post(path, json={"image_base64": b64(png_bytes())})
            assert response.status_code == 503, path
            assert response.headers["retry-after"]
            error = response.json()["error"]
            assert error["code"] == "engine_unavailable"
            assert "weights not found" in error["message"]


async def test_ready_turns_503_when_engine_health_check_fails(make_client: ClientFactory) -> None:
    engine = FakeEngine()
    async with make_client(engine=engine) as client:
        assert (await client.get("/ready")).status_code == 200
        await engine.close()  # the fake's health check now fails
        response = await client.get("/ready")
        assert response.status_code == 503
        assert "not started" in response.json()["reason"]


async def test_deadline_is_504_and_aborts_in_engine(make_client: ClientFactory) -> None:
    settings = Settings(engine={"kind": "fake"}, limits={"request_timeout_s": 0.2})
    engine = FakeEngine(delay_s=5.0)
    async with make_client(settings=settings, engine=engine) as client:
        response = await client.post("/predict", json={"image_base64": b64(png_bytes())})
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["code"] == "engine_timeout"
        assert "DSOCR_LIMITS__REQUEST_TIMEOUT_S" in error["message"]
        # The page's engine request: the request id, page suffixed as on every route.
        assert engine.aborted == [response.headers["x-request-id"] + "-p1"]
        pdf = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes())})
        assert pdf.status_code == 504
        assert f"{pdf.headers['x-request-id']}-p1" in engine.aborted


class CrashingEngine(FakeEngine):
    """An engine with a bug: generate raises something that is not a DsocrError."""

    async def generate(self, request: EngineRequest) -> EngineOutput:
        raise RuntimeError("secret internal detail")


async def test_unexpected_engine_exception_is_a_500_without_detail(make_client: ClientFactory) -> None:
    async with make_client(engine=CrashingEngine()) as client:
        response = await client.post("/predict", json={"image_base64": b64(png_bytes())})
    assert response.status_code == 500
    assert "secret internal detail" not in response.text
    assert response.json()["error"]["type"] == "server_error"


async def test_unknown_route_uses_the_error_envelope(client: httpx.AsyncClient) -> None:
    response = await client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_metrics_count_requests_pages_tokens_and_errors(client: httpx.AsyncClient) -> None:
    await client.post("/predict", json={"image_base64": b64(png_bytes())})
    await client.post("/predict", json={"image_base64": "%%%"})
    text = (await client.get("/metrics")).text
    assert 'dsocr_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'dsocr_http_requests_total{method="POST",route="/predict",status="400"} 1.0' in text
    assert 'dsocr_pages_total{outcome="ok"} 1.0' in text
    assert 'dsocr_errors_total{code="invalid_input",scope="request"} 1.0' in text
    assert "dsocr_http_request_duration_seconds_bucket" in text
    assert "dsocr_queue_depth_pages 0.0" in text
    vision = next(line for line in text.splitlines() if line.startswith("dsocr_vision_tokens_total "))
    assert float(vision.split()[1]) > 0


async def test_each_app_has_its_own_metrics_registry(make_client: ClientFactory) -> None:
    async with make_client() as first, make_client() as second:
        await first.post("/predict", json={"image_base64": b64(png_bytes())})
        text = (await second.get("/metrics")).text
    assert 'route="/predict"' not in text


async def test_cors_is_closed_by_default_and_open_for_configured_origins(make_client: ClientFactory) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with make_client() as client:
        response = await client.options("/v1/ocr", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    settings = Settings(engine={"kind": "fake"}, server={"cors_origins": ["https://app.example"]})
    async with make_client(settings=settings) as client:
        response = await client.options("/v1/ocr", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.options("/v1/ocr", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


async def test_openapi_docs_are_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert {"/predict", "/v1/ocr", "/health", "/ready"} <= set(schema["paths"])
    assert (await client.get("/docs")).status_code == 200


def _metric(text: str, name: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(name + " ")).split()[1])


async def test_streamed_chat_completions_count_in_page_metrics_like_plain_ones(
    make_client: ClientFactory,
) -> None:
    url = "data:image/png;base64," + b64(png_bytes())
    body: dict[str, Any] = {
        "model": "deepseek-ai/DeepSeek-OCR",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
    }
    # The same page twice through the engine: the result cache would answer the second.
    async with make_client(settings=Settings(engine={"kind": "fake"}, cache={"enabled": False})) as client:
        plain = await client.post("/v1/chat/completions", json=body)
        assert plain.status_code == 200
        after_plain = (await client.get("/metrics")).text
        streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        after_both = (await client.get("/metrics")).text

    assert 'dsocr_pages_total{outcome="ok"} 1.0' in after_plain
    assert 'dsocr_pages_total{outcome="ok"} 2.0' in after_both
    # The same page on the same fake engine: the stream adds the same token counts again.
    for name in ("dsocr_prompt_tokens_total", "dsocr_vision_tokens_total", "dsocr_output_tokens_total"):
        assert _metric(after_plain, name) > 0
        assert _metric(after_both, name) == 2 * _metric(after_plain, name)
    assert _metric(after_both, "dsocr_page_duration_seconds_count") == 2


async def test_health_and_metrics_report_the_engine_start_by_phase(make_client: ClientFactory) -> None:
    async with make_client() as client:
        start = (await client.get("/health")).json()["engine"]["start"]
        assert start["phase"] == "ready"
        assert list(start["seconds"]) == ["process_start", "creating_engine", "starting_engine"]
        assert start["ready_after_s"] >= sum(start["seconds"].values()) - 0.01
        metrics = (await client.get("/metrics")).text
        assert 'dsocr_engine_start_seconds{phase="total"}' in metrics
        assert 'dsocr_engine_start_seconds{phase="starting_engine"}' in metrics


async def test_health_shows_the_phase_a_start_is_in_and_the_one_it_failed_in(
    make_client: ClientFactory,
) -> None:
    release = asyncio.Event()

    class SlowStart(FakeEngine):
        async def start(self) -> None:
            await release.wait()
            await super().start()

    settings = Settings(engine={"kind": "fake"}, server={"startup_wait_s": 0})
    async with make_client(settings=settings, engine=SlowStart()) as client:
        start = (await client.get("/health")).json()["engine"]["start"]
        assert (start["phase"], start["ready_after_s"]) == ("starting_engine", None)
        assert start["phase_s"] >= 0 and start["elapsed_s"] >= start["phase_s"]
        release.set()
        for _ in range(1000):
            if (await client.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        assert (await client.get("/health")).json()["engine"]["start"]["phase"] == "ready"

    engine = FakeEngine(start_error=EngineUnavailable("weights not found at /models/x"))
    async with make_client(engine=engine) as client:
        start = (await client.get("/health")).json()["engine"]["start"]
        assert start["phase"] == "failed"
        assert "starting_engine" in start["seconds"]
