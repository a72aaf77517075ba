"""Plane-geometry output ("Parse the figure." on a diagram, deepseek-ocr.md §5.6) drawn as a PNG.

The model answers such prompts with a dict of lines, line types, named endpoints and circles.
This module draws an already-validated :class:`PlaneFigure`; turning model text into one is the
parser's job and never involves ``eval``.

Drawn with matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``: pyplot keeps
global figure state that leaks between requests and is not thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["PlaneCircle", "PlaneFigure", "PlanePoint", "PlaneSegment", "draw_geometry"]

Point2 = tuple[float, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaneSegment:
    """A line segment; ``dashed`` for the model's ``'--'`` line type (hidden/auxiliary lines)."""

    start: Point2
    end: Point2
    dashed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanePoint:
    """A named point (``line_endpoint`` entries such as ``'A: (1, 2)'``)."""

    name: str
    at: Point2


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaneCircle:
    """A circle; ``name`` is its centre's name (``'O'``), possibly empty."""

    center: Point2
    radius: float
    name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaneFigure:
    """Everything one geometry answer describes, in the model's own coordinate units."""

    segments: Sequence[PlaneSegment] = field(default_factory=tuple)
    points: Sequence[PlanePoint] = field(default_factory=tuple)
    circles: Sequence[PlaneCircle] = field(default_factory=tuple)

    def is_empty(self) -> bool:
        """True when there is nothing to draw."""
        return not (self.segments or self.points or self.circles)


# On/off lengths in line widths. matplotlib's default '--' at this thin width leaves gaps of about
# 3 px that antialiasing greys out; these stay visibly dashed at 200 dpi.
_DASHES = (0, (5.0, 4.0))
_LINE_WIDTH = 0.8


def _limits(figure: PlaneFigure) -> tuple[float, float, float, float]:
    xs: list[float] = []
    ys: list[float] = []
    for segment in figure.segments:
        xs += [segment.start[0], segment.end[0]]
        ys += [segment.start[1], segment.end[1]]
    for point in figure.points:
        xs.append(point.at[0])
        ys.append(point.at[1])
    for circle in figure.circles:
        xs += [circle.center[0] - circle.radius, circle.center[0] + circle.radius]
        ys += [circle.center[1] - circle.radius, circle.center[1] + circle.radius]
    if not xs:
        # The official renderer's fixed window, used when there is nothing to fit.
        return -15.0, 15.0, -15.0, 15.0
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1.0)
    pad = 0.08 * span
    cx = (max(xs) + min(xs)) / 2
    cy = (max(ys) + min(ys)) / 2
    half = span / 2 + pad
    return cx - half, cx + half, cy - half, cy + half


def draw_geometry(figure: PlaneFigure, *, size_in: float = 3.0, dpi: int = 200) -> bytes:
    """Render ``figure`` as PNG bytes: black segments (dashed ones really dashed), named endpoints,
    unfilled circles, equal axis scales, white background, no axes."""
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
        ax.plot(
            [segment.start[0], segment.end[0]],
            [segment.start[1], segment.end[1]],
            color="black",
            linewidth=_LINE_WIDTH,
            linestyle=_DASHES if segment.dashed else "-",
            solid_capstyle="butt",
            dash_capstyle="butt",
        )
        ax.scatter([segment.start[0], segment.end[0]], [segment.start[1], segment.end[1]], s=5, color="black")
    for circle in figure.circles:
        ax.add_patch(
            Circle(circle.center, radius=circle.radius, fill=False, edgecolor="black", linewidth=0.8)
        )
        if circle.name:
            ax.scatter([circle.center[0]], [circle.center[1]], s=5, color="black")
            ax.annotate(circle.name, circle.center, xytext=(2, 2), textcoords="offset points", fontsize=6)
    for point in figure.points:
        ax.scatter([point.at[0]], [point.at[1]], s=5, color="black")
        ax.annotate(point.name, point.at, xytext=(2, 2), textcoords="offset points", fontsize=6)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()
