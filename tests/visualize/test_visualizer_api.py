"""The seed-compatible visualiser API and `visualize()` on real result shapes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from dsocr.errors import InvalidInput, UndecodableInput
from dsocr.grounding import legacy_fields, parse
from dsocr.render.overlay import label_colour, scale_box
from dsocr.visualize import DeepSeekOCRVisualizer, visualize, visualize_ocr_result

RAW = (
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 150]]<|/det|>\n# Chapter III\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 200, 900, 500], [100, 550, 500, 600]]<|/det|>\n"
    "Well, I got a good going-over in the morning.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 650, 500, 950]]<|/det|>\n\n"
)
GEOMETRY = (
    "{'Line': {'line': ['(0,0) -- (8,0)', '(8,0) -- (4,6)', '(4,6) -- (4,0)'], "
    "'line_type': ['-', '-', '--'], 'line_endpoint': ['A: (0,0)', 'B: (8,0)', 'C: (4,6)', 'D: (4,0)']}}"
)


def page(size: tuple[int, int] = (600, 800)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for y in range(200, 480, 20):
        draw.line((70, y, 530, y), fill=(40, 40, 40), width=3)  # lines of "text"
    return image


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def seed_answer(raw: str, size: tuple[int, int]) -> dict[str, object]:
    parsed = parse(raw, width=size[0], height=size[1])
    return legacy_fields(
        parsed, prompt="<image>\n<|grounding|>Convert the document to markdown.", model_name="m"
    )


def test_create_visualization_draws_every_box_in_its_label_colour() -> None:
    image = page()
    viz = DeepSeekOCRVisualizer().create_visualization(image, seed_answer(RAW, image.size))
    assert viz is not None
    assert viz["has_bounding_boxes"] is True
    assert viz["has_geometric_elements"] is False
    assert viz["geometric_visualization"] is None
    drawn = decode(viz["visualization"])
    assert drawn.size == image.size
    for label, box in [
        ("title", (100, 50, 900, 150)),
        ("text", (100, 200, 900, 500)),
        ("text", (100, 550, 500, 600)),  # the second box of the same block
        ("image", (100, 650, 500, 950)),
    ]:
        x1, y1, _, y2 = scale_box(box, image.size)
        assert drawn.getpixel((x1, (y1 + y2) // 2)) == label_colour(label), label


def test_nothing_to_draw_returns_none() -> None:
    viz = DeepSeekOCRVisualizer()
    # A seed answer for an ungrounded prompt has no raw_output at all.
    assert viz.create_visualization(page(), {"extracted_text": "hello", "image_size": [600, 800]}) is None
    assert (
        viz.create_visualization(page(), {"raw_output": "Plain text, no tags.", "has_bounding_boxes": False})
        is None
    )
    assert viz.create_visualization(page(), {"raw_output": ""}) is None


def test_image_may_be_a_path_or_bytes(tmp_path: Path) -> None:
    path = tmp_path / "page.png"
    page().save(path)
    answer = seed_answer(RAW, (600, 800))
    from_path = DeepSeekOCRVisualizer().create_visualization(str(path), answer)
    from_bytes = DeepSeekOCRVisualizer().create_visualization(path.read_bytes(), answer)
    assert from_path is not None and from_bytes is not None
    assert from_path["visualization"] == from_bytes["visualization"]


def test_exif_rotated_photo_is_drawn_upright(tmp_path: Path) -> None:
    # Stored landscape, EXIF says "rotate 90° clockwise": the model saw it portrait.
    stored = Image.new("RGB", (800, 600), "white")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    viz = DeepSeekOCRVisualizer().create_visualization(buffer.getvalue(), {"raw_output": RAW})
    assert viz is not None
    assert decode(viz["visualization"]).size == (600, 800)


def test_missing_image_file_is_a_typed_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not found") as info:
        DeepSeekOCRVisualizer().create_visualization(str(tmp_path / "nope.png"), {"raw_output": RAW})
    assert info.value.field == "image"


def test_corrupt_image_bytes_are_a_typed_error() -> None:
    png = io.BytesIO()
    page().save(png, format="PNG")
    with pytest.raises(UndecodableInput):
        DeepSeekOCRVisualizer().create_visualization(png.getvalue()[:200], {"raw_output": RAW})


def test_result_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(InvalidInput) as info:
        DeepSeekOCRVisualizer().create_visualization(page(), ["raw_output"])  # type: ignore[arg-type]
    assert info.value.field == "result"
    with pytest.raises(InvalidInput) as info:
        DeepSeekOCRVisualizer().create_visualization(page(), {"raw_output": 42})
    assert info.value.field == "raw_output"


def test_model_text_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attack = f"__import__('os').system('touch {marker}')"
    viz = DeepSeekOCRVisualizer()
    boxes_attack = f"<|ref|>text<|/ref|><|det|>{attack}<|/det|>\nhello\n"
    geometry_attack = "{'Line': " + attack + ", 'line_type': ['-']}"
    assert viz.create_visualization(page(), {"raw_output": boxes_attack}) is None
    assert viz.create_visualization(page(), {"raw_output": geometry_attack}) is None
    assert viz.create_geometric_visualization(geometry_attack) is None
    assert viz.extract_coordinates_and_label(("", "text", attack), 600, 800) is None
    assert not marker.exists()


def test_geometry_answer_gives_a_figure() -> None:
    viz = DeepSeekOCRVisualizer().create_visualization(page(), {"raw_output": GEOMETRY})
    assert viz is not None
    assert viz["has_bounding_boxes"] is False
    assert viz["has_geometric_elements"] is True
    figure = decode(viz["geometric_visualization"])
    # Always a picture under "visualization": seed clients decode it unconditionally.
    assert viz["visualization"] == viz["geometric_visualization"]
    assert min(figure.convert("L").tobytes()) < 64  # something black was drawn


def test_seed_helper_methods_still_work(tmp_path: Path) -> None:
    answer = seed_answer(RAW, (600, 800))
    viz = DeepSeekOCRVisualizer()
    label, boxes = viz.extract_coordinates_and_label(answer["references"][1], 600, 800) or ("", [])  # type: ignore[index]
    assert (label, boxes) == ("text", [[100, 200, 900, 500], [100, 550, 500, 600]])
    drawn = viz.process_image_with_refs(page(), answer["references"])  # type: ignore[arg-type]
    x1, y1, _, y2 = scale_box((100, 50, 900, 150), drawn.size)
    assert drawn.getpixel((x1, (y1 + y2) // 2)) == label_colour("title")
    assert decode(viz.image_to_base64(drawn)).tobytes() == drawn.tobytes()
    out = tmp_path / "viz.png"
    assert visualize_ocr_result(page(), answer, out) is not None
    with Image.open(out) as saved:
        assert saved.size == (600, 800)


def test_multi_page_result_with_typed_blocks_picks_the_requested_page() -> None:
    result = {
        "pages": [
            {"blocks": [{"label": "title", "boxes": [[100, 100, 900, 200]]}]},
            {"blocks": [{"label": "table", "boxes": [[100, 300, 900, 700]]}]},
        ]
    }
    second = visualize(page(), result, page=2)
    assert second.boxes is not None
    x1, y1, _, y2 = scale_box((100, 300, 900, 700), second.boxes.size)
    assert second.boxes.getpixel((x1, (y1 + y2) // 2)) == label_colour("table")
    with pytest.raises(InvalidInput) as info:
        visualize(page(), result, page=3)
    assert info.value.field == "page"


def test_malformed_typed_boxes_name_the_bad_field() -> None:
    with pytest.raises(InvalidInput) as info:
        visualize(page(), {"blocks": [{"label": "text", "boxes": [[1, 2, "x", 4]]}]})
    assert info.value.field == "blocks[0].boxes[0]"


def test_parser_warnings_are_reported() -> None:
    raw = "<|ref|>text<|/ref|><|det|>[[550, s 331, 652, 345]]<|/det|>\nhi\n"
    viz = DeepSeekOCRVisualizer().create_visualization(page(), {"raw_output": raw})
    assert viz is not None
    assert viz["warnings"]
