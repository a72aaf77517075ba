"""Plane-geometry output ("Parse the figure." on a diagram, deepseek-ocr.md §5.6) drawn as a PNG.

The model answers such prompts with a dict of lines, line types, named endpoints and circles.
This module draws an already-validated figure (``dsocr.grounding.GeometryFigure``); reading one
from model text is the parser's job and never involves ``eval``.

Drawn with matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``: pyplot keeps
global figure state that leaks between requests and is not thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Protocol

__all__ = ["FigureLike", "draw_geometry", "is_dashed"]


# Structural types: ``dsocr.grounding.GeometryFigure`` satisfies them without this module importing
# the parser (render and grounding never import each other). Read-only properties, so frozen
# dataclasses match.
class _PointLike(Protocol):
    @property
    def x(self) -> float: ...
    @property
    def y(self) -> float: ...


class _NamedPointLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def point(self) -> _PointLike: ...


class _SegmentLike(Protocol):
    @property
    def start(self) -> _PointLike: ...
    @property
    def end(self) -> _PointLike: ...
    @property
    def line_type(self) -> str: ...


class _CircleLike(Protocol):
    @property
    def center(self) -> _NamedPointLike: ...
    @property
    def radius(self) -> float: ...


class FigureLike(Protocol):
    """A parsed geometry answer: segments, named endpoints and circles in the figure's own units."""

    @property
    def segments(self) -> Sequence[_SegmentLike]: ...
    @property
    def endpoints(self) -> Sequence[_NamedPointLike]: ...
    @property
    def circles(self) -> Sequence[_CircleLike]: ...


def is_dashed(line_type: str) -> bool:
    """The model writes ``'--'`` for dashed (hidden or auxiliary) lines and ``'-'`` for solid ones."""
    return line_type.strip() == "--"


# On/off lengths in line widths. matplotlib's default '--' at this thin width leaves gaps of about
# 3 px that antialiasing greys out; these stay visibly dashed at 200 dpi.
_DASHES = (0, (5.0, 4.0))
_LINE_WIDTH = 0.8


def _limits(figure: FigureLike) -> tuple[float, float, float, float]:
    xs: list[float] = []
    ys: list[float] = []
    for segment in figure.segments:
        xs += [segment.start.x, segment.end.x]
        ys += [segment.start.y, segment.end.y]
    for named in figure.endpoints:
        xs.append(named.point.x)
        ys.append(named.point.y)
    for circle in figure.circles:
        centre, radius = circle.center.point, abs(circle.radius)
        xs += [centre.x - radius, centre.x + radius]
        ys += [centre.y - radius, centre.y + radius]
    if not xs:
        # The official renderer's fixed window, used when there is nothing to fit.
        return -15.0, 15.0, -15.0, 15.0
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1.0)
    pad = 0.08 * span
    cx = (max(xs) + min(xs)) / 2
    cy = (max(ys) + min(ys)) / 2
    half = span / 2 + pad
    return cx - half, cx + half, cy - half, cy + half


def draw_geometry(figure: FigureLike, *, size_in: float = 3.0, dpi: int = 200) -> bytes:
    """Render ``figure`` as PNG bytes: black segments (``'--'`` ones really dashed), named
    endpoints, unfilled circles, equal axis scales, white background, no axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    fig = Figure(figsize=(size_in, size_in), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    x0, x1, y0, y1 = _limits(figure)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.axis("off")

    for segment in figure.segments:
        xs, ys = [segment.start.x, segment.end.x], [segment.start.y, segment.end.y]
        ax.plot(
            xs,
            ys,
            color="black",
            linewidth=_LINE_WIDTH,
            linestyle=_DASHES if is_dashed(segment.line_type) else "-",
            solid_capstyle="butt",
            dash_capstyle="butt",
        )
        ax.scatter(xs, ys, s=5, color="black")
    named_points = [*figure.endpoints]
    for circle in figure.circles:
        centre = circle.center.point
        ax.add_patch(
            Circle(
                (centre.x, centre.y),
                radius=abs(circle.radius),
                fill=False,
                edgecolor="black",
                linewidth=_LINE_WIDTH,
            )
        )
        named_points.append(circle.center)
    for named in named_points:
        ax.scatter([named.point.x], [named.point.y], s=5, color="black")
        if named.name:
            ax.annotate(
                named.name,
                (named.point.x, named.point.y),
                xytext=(2, 2),
                textcoords="offset points",
                fontsize=6,
            )

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()
