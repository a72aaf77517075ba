"""Pictures of OCR results: layout boxes on the page, geometry figures, layout PDFs.

Two layers:

- :func:`visualize` takes a page image and a result dict as a client holds it (a Truss
  ``/predict`` answer, one page of a ``/v1/ocr`` answer, or ``dsocr parse`` JSON) and returns a
  :class:`Visualization`. The pure drawing lives in :mod:`dsocr.render.overlay` and
  :mod:`dsocr.render.figure`; :func:`draw_blocks`, :func:`draw_geometry` and :func:`layout_pdf`
  are re-exported here.
- :class:`DeepSeekOCRVisualizer` keeps the seed Truss's client API
  (``create_visualization(image, ocr_result)`` → dict with a base64 PNG under ``visualization``,
  or ``None`` when there is nothing to draw) on top of :func:`visualize`.

Unlike the seed, model text is never ``eval``-ed (coordinates and geometry go through the
grounding parser), colours are stable per label, and bad input raises a typed
:class:`~dsocr.errors.InvalidInput` naming the field instead of printing and returning ``None``.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from dsocr.errors import InvalidInput
from dsocr.grounding import GeometryFigure, parse, parse_coordinates
from dsocr.inputs import open_image
from dsocr.inputs.images import normalise_image
from dsocr.render.figure import draw_geometry
from dsocr.render.overlay import draw_blocks, label_colour, layout_pdf, scale_box
from dsocr.settings import LimitSettings
from dsocr.types import Block, Box, ParsedOutput

__all__ = [
    "DeepSeekOCRVisualizer",
    "ImageInput",
    "Visualization",
    "blocks_from_result",
    "draw_blocks",
    "draw_geometry",
    "label_colour",
    "layout_pdf",
    "load_image",
    "visualize",
    "visualize_ocr_result",
]

ImageInput = Image.Image | bytes | str | os.PathLike[str]

# A result is drawn on the page image it came from; a PDF page is rasterised first.
_PDF_ADVICE = "pass the page image (dsocr ocr --viz draws on PDF pages)"


@dataclass(frozen=True, slots=True)
class Visualization:
    """What could be drawn for one page. ``boxes`` is ``None`` when no block has a box,
    ``geometry_png`` is ``None`` when the answer holds no (readable) geometry."""

    boxes: Image.Image | None
    geometry_png: bytes | None
    blocks: tuple[Block, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to show."""
        return self.boxes is None and self.geometry_png is None


def load_image(image: ImageInput, *, max_pixels: int | None = None, field: str = "image") -> Image.Image:
    """The page as the model saw it: upright (EXIF applied), RGB.

    Paths and bytes go through the server's own decoder (same formats, same pixel limit, typed
    errors); a PIL image is normalised the same way, so boxes land where the server put them.
    """
    if isinstance(image, Image.Image):
        return normalise_image(image)
    limits = LimitSettings() if max_pixels is None else LimitSettings(max_image_pixels=max_pixels)
    if isinstance(image, bytes | bytearray):
        return open_image(bytes(image), limits=limits, field=field, pdf_advice=_PDF_ADVICE)
    if isinstance(image, str | os.PathLike):
        path = os.fspath(image)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError as exc:
            raise InvalidInput(f"image file not found: {path}", field=field) from exc
        except OSError as exc:
            raise InvalidInput(f"cannot read image file {path}: {exc.strerror or exc}", field=field) from exc
        return open_image(data, limits=limits, field=field, pdf_advice=_PDF_ADVICE)
    raise InvalidInput(
        f"image must be a PIL image, bytes or a file path, not {type(image).__name__}", field=field
    )


def _grid_box(value: object, where: str) -> Box:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise InvalidInput(f"a box must be [x1, y1, x2, y2] of integers, got {value!r:.80}", field=where)
    x1, y1, x2, y2 = (min(max(int(v), 0), 999) for v in value)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _blocks_from_json(items: object, size: tuple[int, int], where: str) -> tuple[Block, ...]:
    """Blocks in the wire shape (``dsocr.grounding.blocks_to_json``): grid ``boxes`` are trusted
    over ``boxes_px`` so that the picture can be drawn on a resized page."""
    if not isinstance(items, list):
        raise InvalidInput(f"{where} must be a list of blocks", field=where)
    blocks: list[Block] = []
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidInput(f"{here} must be an object with label and boxes", field=here)
        label = item.get("label", "")
        if not isinstance(label, str):
            raise InvalidInput(f"{here}.label must be a string", field=f"{here}.label")
        raw_boxes = item.get("boxes", [])
        if not isinstance(raw_boxes, list):
            raise InvalidInput(f"{here}.boxes must be a list of boxes", field=f"{here}.boxes")
        boxes = tuple(_grid_box(box, f"{here}.boxes[{j}]") for j, box in enumerate(raw_boxes))
        text = item.get("text", "")
        blocks.append(
            Block(
                index=i,
                label=label,
                text=text if isinstance(text, str) else "",
                boxes=boxes,
                boxes_px=tuple(scale_box(box, size) for box in boxes),
            )
        )
    return tuple(blocks)


def _select_page(result: Mapping[str, Any], page: int | None) -> Mapping[str, Any]:
    pages = result.get("pages")
    if not isinstance(pages, list):
        if page not in (None, 1):
            raise InvalidInput(f"page {page} requested but the result has no 'pages' list", field="page")
        return result
    if not pages:
        raise InvalidInput("the result's 'pages' list is empty", field="pages")
    number = 1 if page is None else page
    if not 1 <= number <= len(pages):
        raise InvalidInput(f"page {number} requested; the result has {len(pages)} page(s)", field="page")
    chosen = pages[number - 1]
    if not isinstance(chosen, Mapping):
        raise InvalidInput(f"pages[{number - 1}] must be an object", field=f"pages[{number - 1}]")
    return chosen


def blocks_from_result(
    result: Mapping[str, Any], size: tuple[int, int], *, page: int | None = None
) -> ParsedOutput:
    """Read the blocks (and geometry) a result dict describes, for an image of ``size``.

    Accepted shapes: raw model text under ``raw_output`` (the seed's ``/predict``) or ``raw``,
    re-parsed with the grounding parser; or typed ``blocks`` (the wire shape). A dict with a
    ``pages`` list is a multi-page result; ``page`` (1-based, default 1) picks one.
    """
    if not isinstance(result, Mapping):
        raise InvalidInput(
            f"the OCR result must be a JSON object, not {type(result).__name__}", field="result"
        )
    chosen = _select_page(result, page)
    width, height = size
    prompt = chosen.get("prompt_used", chosen.get("prompt"))
    prompt = prompt if isinstance(prompt, str) else None
    for key in ("raw_output", "raw"):
        raw = chosen.get(key)
        if raw is None:
            continue
        if not isinstance(raw, str):
            raise InvalidInput(f"'{key}' must be the model's text (a string)", field=key)
        return parse(raw, width=width, height=height, prompt=prompt)
    if "blocks" in chosen:
        blocks = _blocks_from_json(chosen["blocks"], size, "blocks")
        return ParsedOutput(raw="", blocks=blocks, markdown="", text="", image_size=size, has_grounding=True)
    # A seed answer without grounding (only ``extracted_text``): nothing to draw.
    return ParsedOutput(raw="", blocks=(), markdown="", text="", image_size=size)


def visualize(
    image: ImageInput,
    result: Mapping[str, Any],
    *,
    page: int | None = None,
    highlight: Sequence[int] | None = None,
    max_pixels: int | None = None,
) -> Visualization:
    """Draw what ``result`` says about ``image``: boxes on the page, and the geometry figure if
    the answer is one. See :func:`blocks_from_result` for the accepted result shapes."""
    picture = load_image(image, max_pixels=max_pixels)
    parsed = blocks_from_result(result, picture.size, page=page)
    boxes = draw_blocks(picture, parsed.blocks, highlight=highlight) if _has_boxes(parsed.blocks) else None
    return Visualization(
        boxes=boxes,
        geometry_png=_geometry_png(parsed.geometry),
        blocks=parsed.blocks,
        warnings=parsed.warnings,
    )


def _has_boxes(blocks: Sequence[Block]) -> bool:
    return any(block.boxes for block in blocks)


def _geometry_png(geometry: object) -> bytes | None:
    if not isinstance(geometry, GeometryFigure):
        return None
    if not (geometry.segments or geometry.endpoints or geometry.circles):
        return None
    return draw_geometry(geometry)


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class DeepSeekOCRVisualizer:
    """The seed Truss's visualiser API (``from visualizer import DeepSeekOCRVisualizer``).

    Same method names and return keys as basetenlabs/truss-examples ``deepseek-ocr/visualizer.py``;
    drawing and parsing are dsocr's (stable colours, no ``eval``).
    """

    def __init__(self, *, limits: LimitSettings | None = None) -> None:
        self._max_pixels = (limits or LimitSettings()).max_image_pixels

    def create_visualization(self, image: ImageInput, ocr_result: Mapping[str, Any]) -> dict[str, Any] | None:
        """Draw ``ocr_result`` (a ``/predict`` answer: ``raw_output`` …) on ``image``.

        Returns ``None`` when there is nothing to draw, else a dict: ``visualization`` (base64
        PNG), ``geometric_visualization`` (base64 PNG or ``None``), ``has_bounding_boxes``,
        ``has_geometric_elements`` and ``warnings`` (parser notes). For a geometry-only answer
        (no boxes) ``visualization`` holds the geometry figure, so it is always a picture.
        """
        result = visualize(image, ocr_result, max_pixels=self._max_pixels)
        if result.is_empty:
            return None
        geometry = base64.b64encode(result.geometry_png).decode("ascii") if result.geometry_png else None
        picture = _png_base64(result.boxes) if result.boxes is not None else geometry
        return {
            "visualization": picture,
            "geometric_visualization": geometry,
            "has_bounding_boxes": result.boxes is not None,
            "has_geometric_elements": geometry is not None,
            "warnings": list(result.warnings),
        }

    def extract_coordinates_and_label(
        self, ref_text: Sequence[str], image_width: int, image_height: int
    ) -> tuple[str, list[list[int]]] | None:
        """``(label, boxes on the 0–999 grid)`` from a seed reference tuple
        ``(whole match, label, coordinate literal)``; ``None`` if it holds no readable box."""
        if len(ref_text) < 3:
            return None
        boxes, _ = parse_coordinates(ref_text[2])
        if not boxes:
            return None
        return ref_text[1], [list(box) for box in boxes]

    def draw_bounding_boxes(self, image: Image.Image, refs: Sequence[Sequence[str]]) -> Image.Image:
        """Draw seed reference tuples (``references`` of a ``/predict`` answer) on ``image``."""
        picture = normalise_image(image)
        raw = "\n".join(ref[0] for ref in refs if ref)
        parsed = parse(raw, width=picture.width, height=picture.height)
        return draw_blocks(picture, parsed.blocks)

    def process_image_with_refs(self, image: Image.Image, ref_texts: Sequence[Sequence[str]]) -> Image.Image:
        """Same as :meth:`draw_bounding_boxes` (the seed's name for it)."""
        return self.draw_bounding_boxes(image, ref_texts)

    def create_geometric_visualization(self, outputs: str) -> str | None:
        """Base64 PNG of a geometry answer (``line_type`` output), or ``None`` if it is not one."""
        if "line_type" not in outputs:
            return None
        parsed = parse(outputs, width=1, height=1)
        png = _geometry_png(parsed.geometry)
        return base64.b64encode(png).decode("ascii") if png else None

    def image_to_base64(self, image: Image.Image) -> str:
        """PNG-encode ``image`` as base64 text."""
        return _png_base64(image)


def visualize_ocr_result(
    image_path: ImageInput, ocr_result: Mapping[str, Any], output_path: str | os.PathLike[str] | None = None
) -> dict[str, Any] | None:
    """The seed's one-call helper: visualise and, if ``output_path`` is given, save the PNG there."""
    viz = DeepSeekOCRVisualizer().create_visualization(image_path, ocr_result)
    if viz is not None and output_path is not None:
        with open(output_path, "wb") as handle:
            handle.write(base64.b64decode(viz["visualization"]))
    return viz
