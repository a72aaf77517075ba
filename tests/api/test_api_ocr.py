"""``POST /v1/ocr``: JSON and multipart, images and PDFs, outputs, per-page errors, SSE."""

from __future__ import annotations

import base64
import io

import httpx
from api_support import ClientFactory, b64, parse_sse, pdf_bytes, png_bytes
from PIL import Image

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from fake_engines import FailsOnPageTwo


async def test_json_image_returns_requested_outputs(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ocr",
        json={
            "image_base64": b64(png_bytes(500, 400)),
            "outputs": ["markdown", "text", "blocks", "raw", "crops", "visualization"],
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["kind"] == "image" and body["page_count"] == 1 and body["failed_pages"] == []
    page = body["pages"][0]
    assert page["ok"] is True and page["image_size"] == [500, 400]
    assert page["markdown"].startswith("# ") and body["markdown"] == page["markdown"]
    assert "<|ref|>" in page["raw"] and "<|ref|>" not in page["text"]
    labels = [block["label"] for block in page["blocks"]]
    assert "title" in labels and "image" in labels
    # One crop per image box, decodable PNGs with the box's pixel size.
    image_blocks = [b for b in page["blocks"] if b["label"] == "image"]
    assert len(page["crops"]) == sum(len(b["boxes_px"]) for b in image_blocks)
    x1, y1, x2, y2 = image_blocks[0]["boxes_px"][0]
    crop = Image.open(io.BytesIO(base64.b64decode(page["crops"][0])))
    assert crop.size == (x2 - x1, y2 - y1)
    overlay = Image.open(io.BytesIO(base64.b64decode(page["visualization"])))
    assert overlay.size == (500, 400)
    assert body["usage"] == page["usage"]


async def test_default_outputs_are_markdown_and_blocks_only(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes())})
    page = response.json()["pages"][0]
    assert "markdown" in page and "blocks" in page
    assert not {"raw", "text", "crops", "visualization"} & set(page)


async def test_multipart_upload_with_form_fields(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ocr",
        files={"file": ("scan.png", png_bytes(300, 200), "image/png")},
        data={"preset": "free", "outputs": "text,raw"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["prompt"] == "<image>\nFree OCR."
    assert body["pages"][0]["text"] and "blocks" not in body["pages"][0]
    assert body["text"] == body["pages"][0]["text"]


async def test_pdf_pages_come_back_in_order_with_page_range(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ocr", json={"image_base64": b64(pdf_bytes(4)), "pages": "1,3-4"})
    assert response.status_code == 200
    body = response.json()
    assert body["kind"] == "pdf"
    assert [page["page"] for page in body["pages"]] == [1, 3, 4]
    assert all(page["ok"] for page in body["pages"])
    # 300×400 pt at the default 144 dpi.
    assert body["pages"][0]["image_size"] == [600, 800]
    # Document markdown joins the pages; usage totals add up.
    assert body["markdown"].count("# A Fake Document for Testing") == 3
    assert body["usage"]["completion_tokens"] == sum(p["usage"]["completion_tokens"] for p in body["pages"])


async def test_failed_pdf_page_is_reported_not_dropped(make_client: ClientFactory) -> None:
    async with make_client(engine=FailsOnPageTwo()) as client:
        response = await client.post("/v1/ocr", json={"image_base64": b64(pdf_bytes(3))})
    assert response.status_code == 200
    body = response.json()
    assert [page["page"] for page in body["pages"]] == [1, 2, 3]
    assert body["failed_pages"] == [2]
    failed = body["pages"][1]
    assert failed["ok"] is False
    assert failed["error"]["code"] == "engine_error"
    assert "crashed" in failed["error"]["message"]
    assert "markdown" not in failed
    assert body["pages"][0]["ok"] and body["pages"][2]["ok"]
    assert body["markdown"].count("# A Fake Document for Testing") == 2


async def test_too_many_pages_is_413(make_client: ClientFactory) -> None:
    settings = Settings(engine={"kind": "fake"}, limits={"max_pdf_pages": 2})
    async with make_client(settings=settings) as client:
        response = await client.post("/v1/ocr", json={"image_base64": b64(pdf_bytes(3))})
        assert response.status_code == 413
        assert "DSOCR_LIMITS__MAX_PDF_PAGES" in response.json()["error"]["message"]
        # Selecting few enough pages works.
        ok = await client.post("/v1/ocr", json={"image_base64": b64(pdf_bytes(3)), "pages": "2-3"})
        assert ok.status_code == 200


async def test_page_range_on_an_image_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "pages": "1"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "pages"


async def test_two_sources_are_400_naming_the_second(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ocr", json={"image_url": "https://example.com/a.png", "image_base64": b64(png_bytes(40, 30))}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "image_base64" and "only one source" in error["message"]


async def test_unknown_field_and_bad_output_are_422_naming_the_field(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "imagee_url": "x"})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["field"] == "imagee_url"
    assert unknown.json()["error"]["code"] == "validation_error"
    bad = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "outputs": ["pdf"]})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "outputs.0"


async def test_bad_multipart_output_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ocr", files={"file": ("a.png", png_bytes(), "image/png")}, data={"outputs": "markdown,nope"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "outputs"


async def test_locate_needs_a_target_and_unknown_mode_is_refused(client: httpx.AsyncClient) -> None:
    no_target = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "preset": "locate"})
    assert no_target.status_code == 400 and no_target.json()["error"]["field"] == "target"
    located = await client.post(
        "/v1/ocr", json={"image_base64": b64(png_bytes()), "preset": "locate", "target": "Hello"}
    )
    assert located.status_code == 200
    assert located.json()["pages"][0]["blocks"][0]["label"] == "Hello"
    bad_mode = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "mode": "huge"})
    assert bad_mode.status_code == 400 and bad_mode.json()["error"]["field"] == "mode"


async def test_max_tokens_truncation_is_a_warning_and_over_limit_is_400(client: httpx.AsyncClient) -> None:
    short = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "max_tokens": 5})
    page = short.json()["pages"][0]
    assert page["finish_reason"] == "length"
    assert any("truncated at max_tokens (5)" in warning for warning in page["warnings"])
    over = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "max_tokens": 10**6})
    assert over.status_code == 400 and over.json()["error"]["field"] == "max_tokens"


async def test_sse_stream_sends_blocks_then_page_then_done(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ocr", json={"image_base64": b64(pdf_bytes(2)), "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names[0] == "page.start" and names[-1] == "done"
    assert "error" not in names
    pages = [data for name, data in events if name == "page.done"]
    assert [page["page"] for page in pages] == [1, 2]
    # Each page's streamed blocks equal its final blocks, and come between its start and done.
    for number, page in enumerate(pages, start=1):
        start = names.index("page.start", 0 if number == 1 else names.index("page.done") + 1)
        done = next(
            i for i, (name, data) in enumerate(events) if name == "page.done" and data["page"] == number
        )
        streamed = [data["block"] for name, data in events[start:done] if name == "block"]
        assert streamed == page["blocks"]
        assert all(data["page"] == number for name, data in events[start:done] if name == "block")
    summary = events[-1][1]
    assert summary["page_count"] == 2 and summary["failed_pages"] == []
    assert summary["markdown"].count("# A Fake Document for Testing") == 2


async def test_accept_header_selects_sse(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ocr", json={"image_base64": b64(png_bytes())}, headers={"accept": "text/event-stream"}
    )
    assert [name for name, _ in parse_sse(response.text)][-1] == "done"


async def test_sse_deadline_after_first_byte_is_an_error_event(make_client: ClientFactory) -> None:
    settings = Settings(engine={"kind": "fake"}, limits={"request_timeout_s": 0.3})
    engine = FakeEngine(delay_s=5.0)
    async with make_client(settings=settings, engine=engine) as client:
        response = await client.post("/v1/ocr", json={"image_base64": b64(png_bytes()), "stream": True})
    assert response.status_code == 200
    events = parse_sse(response.text)
    assert events[0][0] == "page.start"
    name, data = events[-1]
    assert name == "error"
    assert data["error"]["code"] == "engine_timeout"
    assert data["error"]["request_id"] == response.headers["x-request-id"]
    assert engine.aborted == [events[0][1]["request_id"]]
