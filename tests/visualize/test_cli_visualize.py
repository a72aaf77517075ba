"""`dsocr visualize RESULT.json IMAGE`: writes the annotated PNG, exits 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from dsocr.cli import app
from dsocr.render.overlay import label_colour, scale_box

RAW = (
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 150]]<|/det|>\n# Title\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 200, 900, 500]]<|/det|>\nBody.\n\n"
)

runner = CliRunner()


def write_inputs(tmp_path: Path, result: object) -> tuple[Path, Path]:
    image = tmp_path / "page.png"
    Image.new("RGB", (500, 700), "white").save(image)
    result_path = tmp_path / "result.json"
    result_path.write_text(json.dumps(result), encoding="utf-8")
    return result_path, image


def test_visualize_writes_png_with_boxes(tmp_path: Path) -> None:
    result_path, image = write_inputs(tmp_path, {"raw_output": RAW, "has_bounding_boxes": True})
    out = tmp_path / "viz.png"
    outcome = runner.invoke(app, ["visualize", str(result_path), str(image), "--out", str(out)])
    assert outcome.exit_code == 0, outcome.output
    assert "2 boxes" in outcome.output
    with Image.open(out) as drawn:
        x1, y1, _, y2 = scale_box((100, 50, 900, 150), drawn.size)
        assert drawn.convert("RGB").getpixel((x1, (y1 + y2) // 2)) == label_colour("title")


def test_default_output_sits_next_to_the_image(tmp_path: Path) -> None:
    result_path, image = write_inputs(
        tmp_path, {"blocks": [{"label": "table", "boxes": [[10, 10, 500, 500]]}]}
    )
    outcome = runner.invoke(app, ["visualize", str(result_path), str(image)])
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "page.viz.png").is_file()


def test_bad_json_exits_2_with_the_position(tmp_path: Path) -> None:
    result_path, image = write_inputs(tmp_path, {})
    result_path.write_text('{"raw_output": ', encoding="utf-8")
    outcome = runner.invoke(app, ["visualize", str(result_path), str(image)])
    assert outcome.exit_code == 2
    assert "not valid JSON" in outcome.output
    assert "line 1" in outcome.output


def test_missing_image_exits_2(tmp_path: Path) -> None:
    result_path, _ = write_inputs(tmp_path, {"raw_output": RAW})
    outcome = runner.invoke(app, ["visualize", str(result_path), str(tmp_path / "missing.png")])
    assert outcome.exit_code == 2
    assert "image file not found" in outcome.output


def test_missing_result_file_exits_2(tmp_path: Path) -> None:
    _, image = write_inputs(tmp_path, {})
    outcome = runner.invoke(app, ["visualize", str(tmp_path / "nope.json"), str(image)])
    assert outcome.exit_code == 2
    assert "result file not found" in outcome.output


def test_result_without_boxes_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    result_path, image = write_inputs(tmp_path, {"extracted_text": "just text"})
    outcome = runner.invoke(app, ["visualize", str(result_path), str(image)])
    assert outcome.exit_code == 2
    assert "no boxes" in outcome.output
    assert not (tmp_path / "page.viz.png").exists()


def test_malformed_blocks_exit_2_naming_the_field(tmp_path: Path) -> None:
    result_path, image = write_inputs(tmp_path, {"blocks": [{"label": "text", "boxes": [[1, 2, 3]]}]})
    outcome = runner.invoke(app, ["visualize", str(result_path), str(image)])
    assert outcome.exit_code == 2
    assert "blocks[0].boxes[0]" in outcome.output


def test_page_beyond_a_multi_page_result_exits_2(tmp_path: Path) -> None:
    result_path, image = write_inputs(tmp_path, {"pages": [{"raw": RAW}]})
    outcome = runner.invoke(app, ["visualize", str(result_path), str(image), "--page", "2"])
    assert outcome.exit_code == 2
    assert "1 page" in outcome.output
