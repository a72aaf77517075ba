"""``/v1/jobs`` with either served model: a job for DeepSeek-OCR 2 runs every page with its profile.

A real loopback server (uvicorn in a thread) serves DeepSeek-OCR by default and DeepSeek-OCR 2 as
an extra model, on the fake engine, which records each page's engine request.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jobs_support import pdf, wait_job

from dsocr.engine.fake import FakeEngine
from dsocr.modes import V1 as V1_PROFILE
from dsocr.modes import V2 as V2_PROFILE
from dsocr.modes import vision_tokens
from dsocr.settings import Settings
from server_support import Server, running_server

V1 = "deepseek-ai/DeepSeek-OCR"
V2 = "deepseek-ai/DeepSeek-OCR-2"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    settings = Settings(
        engine={"kind": "fake", "extra_models": [V2]},
        jobs={"dir": tmp_path / "jobs"},
        cache={"enabled": False},
    )
    with running_server(settings, FakeEngine()) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _pdf_b64(pages: int) -> str:
    return f"data:application/pdf;base64,{base64.b64encode(pdf(pages)).decode()}"


@pytest.mark.parametrize(("model", "ngram"), [(V2, 20), (V1, 30)])
def test_a_jobs_pages_run_with_its_models_profile(
    server: Server, client: httpx.Client, model: str, ngram: int
) -> None:
    response = client.post("/v1/jobs", json={"image_base64": _pdf_b64(2), "model": model})
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["model"] == model
    # Every page reached the engine for the job's model, with that model's n-gram rule.
    routed = None if model == V1 else model
    seen = [(s.model, s.mode, s.sampling.ngram_size, s.sampling.ngram_window) for s in server.engine.requests]
    assert seen == [(routed, "gundam", ngram, 90)] * 2
    profile = V2_PROFILE if model == V2 else V1_PROFILE
    for page in result["pages"]:
        width, height = page["image_size"]
        assert page["usage"]["vision_tokens"] == vision_tokens(width, height, "gundam", profile)
    if model == V2:
        # Not v1's count: the page is tiled differently (768² tiles, no newline tokens).
        width, height = result["pages"][0]["image_size"]
        assert result["pages"][0]["usage"]["vision_tokens"] != vision_tokens(
            width, height, "gundam", V1_PROFILE
        )


def test_a_v1_only_mode_for_v2_is_refused_at_submit(server: Server, client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"image_base64": _pdf_b64(1), "model": V2, "mode": "base"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "mode"
    assert "'base'" in error["message"] and V2 in error["message"]
    assert error["message"].endswith("available: gundam")
    # No job was made and nothing reached the engine.
    assert client.get("/v1/jobs").json()["data"] == []
    assert server.engine.requests == []
    # The same mode is fine for v1.
    accepted = client.post("/v1/jobs", json={"image_base64": _pdf_b64(1), "mode": "base"})
    assert accepted.status_code == 202, accepted.text


def test_a_v1_only_preset_for_v2_is_refused_at_submit(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json={"image_base64": _pdf_b64(1), "model": V2, "preset": "figure"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "preset" and error["message"].endswith("available: document, free")
