"""Geometry figures (dashes really dashed, circles drawn) and the multi-page layout PDF."""

from __future__ import annotations

import io

import pypdfium2 as pdfium
from PIL import Image

from dsocr.grounding.geometry import GeometryFigure, parse_geometry
from dsocr.render.figure import draw_geometry
from dsocr.render.overlay import label_colour, layout_pdf, scale_box
from dsocr.types import Block, ParsedOutput


def dark(pixel: object) -> bool:
    assert isinstance(pixel, tuple)
    return sum(pixel[:3]) < 3 * 128


def runs_along_row(image: Image.Image, y: int) -> list[bool]:
    return [dark(image.getpixel((x, y))) for x in range(image.width)]


def ink_runs(row: list[bool]) -> int:
    """Number of separate dark runs in a row of pixels."""
    return sum(1 for i, d in enumerate(row) if d and (i == 0 or not row[i - 1]))


def darkest_row(image: Image.Image) -> int:
    counts = [sum(runs_along_row(image, y)) for y in range(image.height)]
    return counts.index(max(counts))


def figure_of(raw: str) -> GeometryFigure:
    figure, warnings = parse_geometry(raw)
    assert figure is not None, warnings
    return figure


def plot(raw: str) -> Image.Image:
    return Image.open(io.BytesIO(draw_geometry(figure_of(raw)))).convert("RGB")


def horizontal_line(dashed: bool) -> Image.Image:
    line_type = "--" if dashed else "-"
    return plot(
        f"{{'Line': {{'line': ['(-10,0) -- (10,0)'], 'line_type': ['{line_type}'], 'line_endpoint': []}}}}"
    )


def test_dashed_line_has_gaps_and_solid_line_has_none() -> None:
    solid = horizontal_line(dashed=False)
    dashed = horizontal_line(dashed=True)
    solid_row = runs_along_row(solid, darkest_row(solid))
    dashed_row = runs_along_row(dashed, darkest_row(dashed))
    assert ink_runs(solid_row) == 1
    assert ink_runs(dashed_row) >= 5
    # The dashed line spans the same length, with real white between dashes.
    first, last = dashed_row.index(True), len(dashed_row) - dashed_row[::-1].index(True)
    assert dashed_row[first:last].count(False) > 0.2 * (last - first)


def test_circle_is_drawn_unfilled_around_its_centre() -> None:
    image = plot("{'Circle': {'circle_center': ['O: (0,0)'], 'radius': [5]}}")
    middle = image.height // 2
    row = runs_along_row(image, middle)
    # The circle crosses the middle row twice (left and right rim), and its inside is white.
    first, last = row.index(True), len(row) - row[::-1].index(True) - 1
    assert last - first > image.width // 2
    assert not any(row[first + 10 : image.width // 2 - 10])


def test_named_points_are_drawn() -> None:
    empty = plot("{'Line': {'line': [], 'line_type': [], 'line_endpoint': []}}")
    named = plot("{'Line': {'line': [], 'line_type': [], 'line_endpoint': ['A: (1, 2)']}}")
    dark_pixels = sum(1 for p in named.convert("L").tobytes() if p < 128)
    assert dark_pixels > 10
    assert not any(p < 128 for p in empty.convert("L").tobytes())


def parsed(*blocks: Block, size: tuple[int, int]) -> ParsedOutput:
    return ParsedOutput(raw="", blocks=blocks, markdown="", text="", image_size=size, has_grounding=True)


def test_layout_pdf_has_one_annotated_page_per_input_page() -> None:
    size = (800, 1000)
    box = (100, 200, 900, 600)
    title = Block(index=0, label="title", text="T", boxes=(box,), boxes_px=(scale_box(box, size),))
    pages = [(Image.new("RGB", size, "white"), parsed(title, size=size)) for _ in range(3)]
    pdf_bytes = layout_pdf(iter(pages))

    pdf = pdfium.PdfDocument(pdf_bytes)
    try:
        assert len(pdf) == 3
        width_pt, height_pt = pdf[0].get_size()
        assert abs(width_pt / height_pt - 0.8) < 0.01
        rendered = pdf[2].render(scale=800 / width_pt).to_pil().convert("RGB")
    finally:
        pdf.close()
    # The box outline survives JPEG compression: near the left edge the colour is the label's.
    x1, y1, _, y2 = scale_box(box, rendered.size)
    pixel = rendered.getpixel((x1 + 1, (y1 + y2) // 2))
    assert isinstance(pixel, tuple)
    assert all(abs(p - c) < 40 for p, c in zip(pixel, label_colour("title"), strict=True))


def test_layout_pdf_shrinks_huge_pages() -> None:
    size = (6000, 3000)
    pages = [(Image.new("RGB", size, "white"), parsed(size=size))]
    pdf = pdfium.PdfDocument(layout_pdf(pages, max_side=1000, dpi=100))
    try:
        width_pt, height_pt = pdf[0].get_size()
    finally:
        pdf.close()
    # 1000 x 500 pixels at 100 dpi is 720 x 360 points.
    assert (round(width_pt), round(height_pt)) == (720, 360)
