"""Plane-geometry output ("Parse the figure." on a diagram) → typed figure.

The model answers with a Python dict literal (§5.6), e.g.::

    {'Line': {'line': ['(0,0) -- (4,3)'], 'line_type': ['-'],
              'line_endpoint': ['A: (0,0)', 'B: (4,3)']},
     'Circle': {'circle_center': ['O: (1,1)'], 'radius': [2.5]}}

The official code ``eval``s it; here it goes through ``ast.literal_eval`` (literals only, no
names or calls) after a size cap, then every field is shape-checked and point strings are read
with a regex. Anything unexpected becomes a warning.
"""

from __future__ import annotations

import ast
import re
import warnings as _warnings
from dataclasses import dataclass

__all__ = [
    "MAX_GEOMETRY_CHARS",
    "Circle",
    "GeometryFigure",
    "NamedPoint",
    "Point",
    "Segment",
    "parse_geometry",
]

# A real figure is a few KB; the cap keeps literal_eval's memory and recursion bounded.
MAX_GEOMETRY_CHARS = 100_000

_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_POINT = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_NAMED = re.compile(rf"^\s*([^:]*?)\s*:\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*$")


@dataclass(frozen=True, slots=True)
class Point:
    """A point in the figure's own coordinates (the official plot uses axes −15..15)."""

    x: float
    y: float


@dataclass(frozen=True, slots=True)
class NamedPoint:
    """A labelled point, e.g. endpoint ``A`` or circle centre ``O``."""

    name: str
    point: Point


@dataclass(frozen=True, slots=True)
class Segment:
    """A line segment; ``line_type`` is the model's style string (``'-'`` solid, ``'--'`` dashed)."""

    start: Point
    end: Point
    line_type: str


@dataclass(frozen=True, slots=True)
class Circle:
    """A circle with a (usually named) centre."""

    center: NamedPoint
    radius: float


@dataclass(frozen=True, slots=True)
class GeometryFigure:
    """Everything read from one geometry answer."""

    segments: tuple[Segment, ...]
    endpoints: tuple[NamedPoint, ...]
    circles: tuple[Circle, ...]


def _string_list(section: dict[object, object], key: str, warnings: list[str]) -> list[str]:
    value = section.get(key, [])
    if not isinstance(value, list | tuple):
        warnings.append(f"geometry: {key!r} is not a list; ignored")
        return []
    items = [v for v in value if isinstance(v, str)]
    if len(items) != len(value):
        warnings.append(f"geometry: non-string entries in {key!r} ignored")
    return items


def _named(text: str, key: str, warnings: list[str]) -> NamedPoint | None:
    match = _NAMED.match(text)
    if match is None:
        warnings.append(f"geometry: cannot read {key} entry {text[:60]!r}")
        return None
    return NamedPoint(match.group(1), Point(float(match.group(2)), float(match.group(3))))


def _lines(section: dict[object, object], warnings: list[str]) -> tuple[list[Segment], list[NamedPoint]]:
    segments: list[Segment] = []
    lines = _string_list(section, "line", warnings)
    types = _string_list(section, "line_type", warnings)
    if types and len(types) != len(lines):
        warnings.append(f"geometry: {len(lines)} lines but {len(types)} line types")
    for i, line in enumerate(lines):
        points = _POINT.findall(line)
        if len(points) != 2 or "--" not in line:
            warnings.append(f"geometry: cannot read line {line[:60]!r}")
            continue
        (x0, y0), (x1, y1) = points
        line_type = types[i] if i < len(types) else ""
        segments.append(Segment(Point(float(x0), float(y0)), Point(float(x1), float(y1)), line_type))
    endpoints = [
        point
        for text in _string_list(section, "line_endpoint", warnings)
        if (point := _named(text, "line_endpoint", warnings)) is not None
    ]
    return segments, endpoints


def _circles(section: dict[object, object], warnings: list[str]) -> list[Circle]:
    centers = _string_list(section, "circle_center", warnings)
    radii = section.get("radius", [])
    if not isinstance(radii, list | tuple):
        warnings.append("geometry: 'radius' is not a list; circles ignored")
        return []
    if len(radii) != len(centers):
        warnings.append(f"geometry: {len(centers)} circle centres but {len(radii)} radii")
    circles = []
    for text, radius in zip(centers, radii, strict=False):
        center = _named(text, "circle_center", warnings)
        # bool is an int subclass; True is not a radius.
        if isinstance(radius, bool) or not isinstance(radius, int | float):
            warnings.append(f"geometry: radius {radius!r} is not a number")
            continue
        if center is not None:
            circles.append(Circle(center, float(radius)))
    return circles


def parse_geometry(raw: str) -> tuple[GeometryFigure | None, list[str]]:
    """Read a geometry answer. Returns ``(figure or None, warnings)``; never raises."""
    warnings: list[str] = []
    start, end = raw.find("{"), raw.rfind("}")
    if start < 0 or end < start:
        return None, ["geometry: output mentions line_type but holds no {...} literal"]
    literal = raw[start : end + 1]
    if len(literal) > MAX_GEOMETRY_CHARS:
        return None, [
            f"geometry: literal of {len(literal)} characters exceeds {MAX_GEOMETRY_CHARS}; not parsed"
        ]
    try:
        with _warnings.catch_warnings():
            # Strings like '\d' in model text would raise SyntaxWarning: noise, not a problem.
            _warnings.simplefilter("ignore")
            value = ast.literal_eval(literal)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        return None, [f"geometry: not a Python literal ({type(exc).__name__}); not parsed"]
    if not isinstance(value, dict):
        return None, ["geometry: literal is not a dict; not parsed"]

    segments: list[Segment] = []
    endpoints: list[NamedPoint] = []
    circles: list[Circle] = []
    line_section = value.get("Line")
    if isinstance(line_section, dict):
        segments, endpoints = _lines(line_section, warnings)
    elif line_section is not None:
        warnings.append("geometry: 'Line' is not a dict; ignored")
    circle_section = value.get("Circle")
    if isinstance(circle_section, dict):
        circles = _circles(circle_section, warnings)
    elif circle_section is not None:
        warnings.append("geometry: 'Circle' is not a dict; ignored")
    unknown = sorted(str(k) for k in value if k not in ("Line", "Circle"))
    if unknown:
        warnings.append(f"geometry: unknown keys {unknown} ignored")
    return GeometryFigure(tuple(segments), tuple(endpoints), tuple(circles)), warnings
