"""A 3 KB PDF that would render for hours does not stall the server.

The bomb (tests/pdf_bomb.py) nests a Form XObject that draws the previous one twice. While it
renders, other requests are served at their normal speed; the bomb itself is answered 422
naming its page within its render budget, and a client that leaves, or a deadline that passes,
stops its render. Real uvicorn on loopback, fake engine.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from pdf_bomb import pdf_with_pages
from server_support import Server, running_server

ENDLESS = 40  # 2**40 nested draws: hours of pdfium time
BUDGET_S = 6.0
# "Served at normal speed" with room for a loaded test machine: well under the bomb's budget,
# where a server stalled behind the bomb would take hours.
PROMPT_S = 3.0


def _png() -> bytes:
    image = Image.new("RGB", (400, 300), "white")
    ImageDraw.Draw(image).text((20, 20), "an ordinary page", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _post(client: httpx.Client, name: str, data: bytes, media_type: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post("/v1/ocr", files={"file": (name, data, media_type)})
    return response, time.monotonic() - started


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # The bomb's address space grows ~0.4 GB/s here: a memory cap above what BUDGET_S allows makes
    # the time budget the one that ends it, so the answer is the same on every run.
    limits = {"render_timeout_s": BUDGET_S, "render_workers": 2, "render_memory_mb": 6144}
    settings = Settings(engine={"kind": "fake"}, limits=limits)
    with running_server(settings, FakeEngine()) as running:
        yield running


def test_requests_are_served_at_normal_speed_while_a_bomb_renders_and_the_bomb_gets_422(
    server: Server,
) -> None:
    normal_pdf = pdf_with_pages(None, None)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        # Normal speed, measured on this machine (this also starts the render workers).
        response, _ = _post(client, "warm-up.pdf", normal_pdf, "application/pdf")
        assert response.status_code == 200, response.text

        bomb: dict[str, Any] = {}

        def send_bomb() -> None:
            bomb["response"], bomb["elapsed"] = _post(
                client, "bomb.pdf", pdf_with_pages(ENDLESS), "application/pdf"
            )

        sender = threading.Thread(target=send_bomb)
        sender.start()
        time.sleep(1.0)  # the bomb is rendering now
        assert sender.is_alive()

        pdf_response, pdf_s = _post(client, "normal.pdf", normal_pdf, "application/pdf")
        image_response, image_s = _post(client, "page.png", _png(), "image/png")
        ready = client.get("/ready")
        assert sender.is_alive(), "the bomb finished before the other requests could be timed"

        sender.join(60)
        assert not sender.is_alive()

    assert pdf_response.status_code == 200, pdf_response.text
    assert [page["ok"] for page in pdf_response.json()["pages"]] == [True, True]
    assert image_response.status_code == 200, image_response.text
    assert pdf_s < PROMPT_S and image_s < PROMPT_S, (pdf_s, image_s)
    assert ready.status_code == 200

    response: httpx.Response = bomb["response"]
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "render_budget_exceeded"
    assert error["field"] == "file"
    assert error["message"] == (
        f"page 1 took longer than {BUDGET_S:g} s to render (DSOCR_LIMITS__RENDER_TIMEOUT_S)"
    )
    assert BUDGET_S <= bomb["elapsed"] < BUDGET_S + 10  # its budget, not the hours it would take


def test_a_bomb_page_fails_alone_and_the_other_pages_are_returned(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        response, _ = _post(client, "mixed.pdf", pdf_with_pages(None, ENDLESS, None), "application/pdf")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["failed_pages"] == [2]
    assert [page["ok"] for page in body["pages"]] == [True, False, True]
    assert body["pages"][1]["error"]["code"] == "render_budget_exceeded"
    assert body["pages"][1]["error"]["message"].startswith("page 2 took longer than")


@pytest.mark.parametrize("how", ["client leaves", "deadline passes"])
def test_a_bomb_stops_rendering_when_its_request_ends(how: str) -> None:
    # One render worker and a render budget far away: the next PDF can only be served promptly
    # if the bomb's render was stopped when its request ended.
    limits: dict[str, Any] = {"render_timeout_s": 300, "render_workers": 1}
    if how == "deadline passes":
        limits["request_timeout_s"] = 2
    settings = Settings(engine={"kind": "fake"}, limits=limits)
    with running_server(settings, FakeEngine()) as server, httpx.Client(base_url=server.url) as client:
        files = {"file": ("bomb.pdf", pdf_with_pages(None, ENDLESS), "application/pdf")}
        if how == "client leaves":
            with pytest.raises(httpx.ReadTimeout):
                client.post("/v1/ocr", files=files, timeout=2)
        else:
            response = client.post("/v1/ocr", files=files, timeout=60)
            assert response.status_code == 504, response.text
            assert response.json()["error"]["code"] == "engine_timeout"
        response, elapsed = _post(client, "normal.pdf", pdf_with_pages(None), "application/pdf")
    assert response.status_code == 200, response.text
    assert elapsed < 20  # a fresh worker, not the rest of a 300 s budget
