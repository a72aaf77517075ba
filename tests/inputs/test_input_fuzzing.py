"""Whatever bytes or strings arrive, the inputs layer answers with a page or a typed InvalidInput."""

from __future__ import annotations

import base64
import io

import pypdfium2 as pdfium
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inputs_support import png_bytes, text_page
from PIL import Image

from dsocr.errors import InvalidInput
from dsocr.inputs import open_document, parse_page_range
from dsocr.inputs.sources import decode_base64
from dsocr.settings import LimitSettings

LIMITS = LimitSettings(max_image_pixels=4_000_000, max_page_pixels=4_000_000, max_pdf_pages=20)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    text_page((160, 120)).save(buffer, "JPEG")
    return buffer.getvalue()


def _pdf() -> bytes:
    doc = pdfium.PdfDocument.new()
    for _ in range(2):
        doc.new_page(200, 300)
    buffer = io.BytesIO()
    doc.save(buffer)
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    text_page((60, 40)).convert("P").save(buffer, "GIF")
    return buffer.getvalue()


SEEDS = [png_bytes(text_page((160, 120))), _jpeg(), _pdf(), _gif()]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file with a few bytes overwritten, a cut, or both."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_files_give_pages_or_typed_errors(data: bytes) -> None:
    try:
        with open_document(data, limits=LIMITS) as doc:
            for page in doc.iter_pages():
                assert page.image.mode == "RGB"
                assert page.image.width * page.image.height <= 4_000_000
    except InvalidInput:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_give_pages_or_typed_errors(data: bytes) -> None:
    try:
        with open_document(data, limits=LIMITS) as doc:
            list(doc.iter_pages())
    except InvalidInput:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.integers(1, 50))
def test_page_range_parser_is_total(spec: str, count: int) -> None:
    try:
        pages = parse_page_range(spec, count)
    except InvalidInput as exc:
        assert exc.field == "pages"
    else:
        assert list(pages) == sorted(set(pages)) and all(0 <= p < count for p in pages)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(1, n), min_size=1))))
def test_page_range_round_trips_any_selection(case: tuple[int, set[int]]) -> None:
    count, pages = case
    ordered = sorted(pages)
    # Write runs as "a-b" and singles as "a", in shuffled-by-reversal order to test sorting.
    parts, start = [], ordered[0]
    for previous, current in zip(ordered, [*ordered[1:], None], strict=True):
        if current != previous + 1:
            parts.append(f"{start}-{previous}" if start != previous else str(start))
            start = current if current is not None else start
    assert parse_page_range(",".join(reversed(parts)), count) == tuple(p - 1 for p in ordered)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_base64_decoder_is_total(text: str) -> None:
    try:
        raw = decode_base64(text, max_bytes=1000)
    except InvalidInput as exc:
        assert exc.field == "image_base64"
    else:
        assert 0 < len(raw.data) <= 1000


@given(st.binary(min_size=1, max_size=300))
def test_base64_round_trips_any_bytes(data: bytes) -> None:
    assert decode_base64(base64.b64encode(data).decode(), max_bytes=300).data == data


def test_seeds_are_valid() -> None:
    # The mutation test means something only if its starting files open cleanly.
    for seed in SEEDS:
        with open_document(seed, limits=LIMITS) as doc:
            assert all(isinstance(p.image, Image.Image) for p in doc.iter_pages())
