"""Real third-party scans and PDFs (tests/docs.py) load at the expected sizes, through every source."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from inputs_support import LoopbackServer
from PIL import Image

import docs
from dsocr.inputs import Base64Source, BytesSource, UrlSource, load_document, open_file
from dsocr.settings import FetchSettings, LimitSettings

pytestmark = pytest.mark.network

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _ink_fraction(image: Image.Image) -> float:
    histogram = image.convert("L").histogram()
    return sum(histogram[:128]) / sum(histogram)


def test_huckleberry_finn_scan_renders_at_144_dpi(limits: LimitSettings) -> None:
    with open_file(docs.require("c03-29.pdf"), limits=limits) as doc:
        (page,) = list(doc.iter_pages())
    assert (doc.kind, doc.page_count) == ("pdf", 1)
    assert page.size == (740, 956)
    assert 0.02 < _ink_fraction(page.image) < 0.5  # a page of text, not blank, not black


def test_vicksburg_book_scan_yields_six_pages_lazily(limits: LimitSettings) -> None:
    with open_file(docs.require("Seige_of_Vicksburg_Sample_OCR.pdf"), limits=limits, pages="2-3,6") as doc:
        pages = list(doc.iter_pages())
    assert doc.page_count == 6
    assert [p.index for p in pages] == [1, 2, 5]
    assert {p.size for p in pages} == {(864, 1296)}


def test_cardinal_pages_follow_their_rotation(limits: LimitSettings) -> None:
    with open_file(docs.require("cardinal.pdf"), limits=limits) as doc:
        sizes = [p.size for p in doc.iter_pages()]
    assert sizes == [(1224, 1584), (1584, 1224), (1224, 1584), (1584, 1224)]


@pytest.mark.parametrize(("name", "size"), [("linn.png", (2550, 3300)), ("typewriter.png", (4000, 2864))])
def test_real_scanned_pngs_decode_at_full_resolution(
    name: str, size: tuple[int, int], limits: LimitSettings
) -> None:
    with open_file(docs.require(name), limits=limits) as doc:
        (page,) = list(doc.iter_pages())
    assert page.size == size and page.image.mode == "RGB"
    assert _ink_fraction(page.image) > 0.01


@pytest.mark.parametrize("name", ["crazyones.pdf", "example.pdf", "francais.pdf", "skew.pdf"])
async def test_born_digital_and_scanned_pdfs_load_from_bytes(name: str, limits: LimitSettings) -> None:
    data = docs.require(name).read_bytes()
    async with await load_document(
        BytesSource(data, filename=name), limits=limits, fetch=FetchSettings()
    ) as doc:
        pages = [p async for p in doc.pages()]
    assert len(pages) == doc.page_count >= 1
    assert all(_ink_fraction(p.image) > 0.001 for p in pages)


async def test_real_pdf_over_loopback_url_and_as_base64_give_the_same_pixels(
    loopback_server: LoopbackServer, loopback_fetch: FetchSettings, limits: LimitSettings
) -> None:
    data = docs.require("c03-29.pdf").read_bytes()
    loopback_server.serve("/c03-29.pdf", data, content_type="application/pdf")
    async with await load_document(
        UrlSource(loopback_server.url("/c03-29.pdf")), limits=limits, fetch=loopback_fetch
    ) as doc:
        from_url = [p.image.tobytes() async for p in doc.pages()]
    uri = "data:application/pdf;base64," + base64.b64encode(data).decode()
    async with await load_document(Base64Source(uri), limits=limits, fetch=loopback_fetch) as doc:
        from_base64 = [p.image.tobytes() async for p in doc.pages()]
    assert from_url == from_base64 and len(from_url) == 1


def test_committed_examples_load(limits: LimitSettings) -> None:
    with open_file(EXAMPLES / "sample-page.png", limits=limits) as image_doc:
        (image_page,) = list(image_doc.iter_pages())
    with open_file(EXAMPLES / "sample.pdf", limits=limits) as pdf_doc:
        (pdf_page,) = list(pdf_doc.iter_pages())
    assert image_page.size == pdf_page.size == (740, 956)
    assert (EXAMPLES / "sample-page.png").stat().st_size < 400_000
    assert (EXAMPLES / "sample.pdf").stat().st_size < 300_000
