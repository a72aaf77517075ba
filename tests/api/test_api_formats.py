"""``POST /v1/ocr?format=``: the document as one file, with its media type and a download name;
the page fields ``hocr``, ``alto`` and ``html`` in ``outputs``."""

from __future__ import annotations

import io

import httpx
import pypdfium2 as pdfium
import pytest
from api_support import b64, pdf_bytes, png_bytes
from lxml import etree

FORMATS = {
    "pdf": ("application/pdf", ".pdf", b"%PDF-"),
    "hocr": ("application/xhtml+xml; charset=utf-8", ".hocr", b"<?xml"),
    "alto": ("application/xml; charset=utf-8", ".xml", b"<?xml"),
    "html": ("text/html; charset=utf-8", ".html", b"<!DOCTYPE html>"),
    "md": ("text/markdown; charset=utf-8", ".md", b"# "),
    "txt": ("text/plain; charset=utf-8", ".txt", b""),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
async def test_format_answers_the_document_as_a_file(client: httpx.AsyncClient, name: str) -> None:
    media_type, suffix, start = FORMATS[name]
    response = await client.post(
        f"/v1/ocr?format={name}", files={"file": ("scan.pdf", pdf_bytes(2), "application/pdf")}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.headers["content-disposition"].startswith(f'attachment; filename="scan{suffix}"')
    assert response.content.startswith(start) and len(response.content) > 100
    assert response.headers["x-request-id"]


async def test_searchable_pdf_keeps_a_pdfs_pages(client: httpx.AsyncClient) -> None:
    original = pdf_bytes(3, size=(300, 400))
    response = await client.post("/v1/ocr?format=pdf", json={"image_base64": b64(original), "pages": "2-3"})
    assert response.status_code == 200, response.text
    pdf = pdfium.PdfDocument(response.content)
    try:
        assert len(pdf) == 2 and pdf.get_page_size(0) == pytest.approx((300, 400))
        assert "Fake Document" in pdf[0].get_textpage().get_text_range()
    finally:
        pdf.close()


async def test_format_json_is_the_json_answer(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ocr?format=json", json={"image_base64": b64(png_bytes())})
    assert response.status_code == 200
    assert response.json()["pages"][0]["markdown"]


async def test_unknown_format_is_a_400_naming_format(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/ocr?format=docx", json={"image_base64": b64(png_bytes())})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["field"] == "format" and "hocr" in error["message"]


async def test_a_file_cannot_be_streamed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ocr?format=pdf", json={"image_base64": b64(png_bytes()), "stream": True}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "format"


async def test_page_fields_hocr_alto_html(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/ocr", json={"image_base64": b64(png_bytes()), "outputs": ["hocr", "alto", "html"]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    (page,) = body["pages"]
    assert "crops" not in page, "html draws the crops it inlines, without listing them"
    assert etree.parse(io.BytesIO(page["alto"].encode())).getroot().tag.endswith("}alto")
    assert 'class="ocr_page"' in page["hocr"]
    assert "<table>" in page["html"] and "data:image/png;base64," in page["html"]
    assert body["html"].startswith("<!DOCTYPE html>") and body["alto"].startswith("<?xml")
