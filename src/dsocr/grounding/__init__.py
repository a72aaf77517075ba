"""Grounding: raw DeepSeek-OCR text → typed blocks, clean markdown, plain text, crops.

Pure functions, no I/O: ``parse`` is total (bad spans become warnings), ``to_raw`` is its
inverse on blocks, ``blocks_to_json`` is the one wire shape of blocks, ``legacy_fields`` the
seed server's response.
"""

from __future__ import annotations

from dsocr.grounding.boxes import GRID_MAX, parse_coordinates, to_pixels
from dsocr.grounding.crops import crops
from dsocr.grounding.geometry import Circle, GeometryFigure, NamedPoint, Point, Segment, parse_geometry
from dsocr.grounding.legacy import legacy_fields
from dsocr.grounding.markdown import markdown_to_text
from dsocr.grounding.parser import LAYOUT_LABELS, parse, ref_is_text_for_prompt
from dsocr.grounding.serialize import block_to_json, blocks_to_json, parsed_to_json, to_raw

__all__ = [
    "GRID_MAX",
    "LAYOUT_LABELS",
    "Circle",
    "GeometryFigure",
    "NamedPoint",
    "Point",
    "Segment",
    "block_to_json",
    "blocks_to_json",
    "crops",
    "legacy_fields",
    "markdown_to_text",
    "parse",
    "parse_coordinates",
    "parse_geometry",
    "parsed_to_json",
    "ref_is_text_for_prompt",
    "to_pixels",
    "to_raw",
]
