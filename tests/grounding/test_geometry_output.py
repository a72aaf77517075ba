"""Geometry answers ('line_type' dict literals) are read safely into typed figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dsocr.grounding import Circle, GeometryFigure, NamedPoint, Point, Segment, parse, parse_geometry

FIGURE_PROMPT = "<image>\nParse the figure."


def test_recorded_geometry_answer_becomes_a_typed_figure(raw_fixture: Callable[[str], str]) -> None:
    parsed = parse(raw_fixture("geometry.txt"), width=512, height=512, prompt=FIGURE_PROMPT)
    figure = parsed.geometry
    assert isinstance(figure, GeometryFigure)
    assert figure.segments == (
        Segment(Point(-6.0, 0.0), Point(6.0, 0.0), "-"),
        Segment(Point(0.0, -6.0), Point(0.0, 6.0), "-"),
        Segment(Point(-6.0, 0.0), Point(0.0, 6.0), "--"),
    )
    assert [p.name for p in figure.endpoints] == ["A", "B", "C", "D"]
    assert figure.circles == (Circle(NamedPoint("O", Point(0.0, 0.0)), 6.0),)
    assert parsed.warnings == ()
    # The answer itself stays available as text.
    assert parsed.blocks[0].text.startswith("{'Line'")


def test_code_in_a_geometry_answer_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    raw = f"{{'Line': {{'line_type': [__import__('pathlib').Path({str(marker)!r}).touch()]}}}}"
    figure, warnings = parse_geometry(raw)
    assert figure is None
    assert not marker.exists()
    assert "not a Python literal" in warnings[0]


@pytest.mark.parametrize(
    ("raw", "warning"),
    [
        ("line_type but no dict", "no {...} literal"),
        ("{'line_type': " * 300 + "1" + "}" * 300, "not a Python literal"),
        ("{'line_type': 1, 'Line': [1, 2]}", "'Line' is not a dict"),
        ("{'Line': {'line': ['(0,0) to (1,1)'], 'line_type': ['-']}}", "cannot read line"),
        ("{'Circle': {'circle_center': ['O: (0,0)'], 'radius': ['big']}, 'line_type': 0}", "is not a number"),
        ("{" + "'line_type': 1, " * 20000 + "}", "exceeds"),
    ],
)
def test_malformed_geometry_is_a_warning(raw: str, warning: str) -> None:
    parsed = parse(raw, width=10, height=10)
    assert any(warning in w for w in parsed.warnings), parsed.warnings
