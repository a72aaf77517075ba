"""The seed Truss's client-side visualiser, kept importable from this directory.

``from visualizer import DeepSeekOCRVisualizer`` (as in the original README) keeps working; the
implementation is :mod:`dsocr.visualize` (stable colours per label, no ``eval`` of model text).
Needs the ``dsocr`` package installed (``pip install dsocr``).
"""

from __future__ import annotations

from dsocr.visualize import DeepSeekOCRVisualizer, visualize_ocr_result

__all__ = ["DeepSeekOCRVisualizer", "visualize_ocr_result"]
