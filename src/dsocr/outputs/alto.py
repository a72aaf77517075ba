"""``alto``: ALTO 4 XML, what digitisation platforms and METS/ALTO viewers read.

One ``Page`` per page, its blocks in reading order inside the ``PrintSpace``: a text block is a
``TextBlock`` of ``TextLine`` s of ``String`` s (``SP`` between them); a table a
``ComposedBlock TYPE="table"`` around its ``TextBlock``; a figure an ``Illustration`` (with its
text, if it has any, in a ``ComposedBlock TYPE="figure"``). Coordinates are pixels
(``MeasurementUnit``), block labels are ``LayoutTag`` s. Block boxes are the model's; line and
word boxes are estimated (:mod:`dsocr.outputs.lines`), as the ``Processing`` description says.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dsocr.grounding.parser import LAYOUT_LABELS
from dsocr.outputs.base import FileContext, Output, RenderContext
from dsocr.outputs.lines import ESTIMATED_NOTE, Region, page_regions, xml_safe

if TYPE_CHECKING:
    from dsocr.results import PageResult
    from dsocr.types import Box

__all__ = ["ALTO_NAMESPACE", "OUTPUT", "alto_document"]

ALTO_NAMESPACE = "http://www.loc.gov/standards/alto/ns-v4#"
_SCHEMA = "http://www.loc.gov/standards/alto/v4/alto-4-2.xsd"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_PROCESSING_ID = "dsocr_ocr"


def _position(box: Box) -> dict[str, str]:
    x1, y1, x2, y2 = box
    return {"HPOS": str(x1), "VPOS": str(y1), "WIDTH": str(x2 - x1), "HEIGHT": str(y2 - y1)}


def _tag_id(label: str) -> str:
    return f"LAYOUT_{label}"


class _Ids:
    """Unique element ids over the document (ALTO ids are xsd:ID)."""

    def __init__(self) -> None:
        self._count = 0

    def next(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"


def _text_block(parent: ET.Element, region: Region, ids: _Ids, tagrefs: dict[str, str]) -> None:
    block = ET.SubElement(parent, "TextBlock", {"ID": ids.next("TB"), **_position(region.box), **tagrefs})
    for line in region.lines:
        text_line = ET.SubElement(block, "TextLine", {"ID": ids.next("TL"), **_position(line.box)})
        for position, word in enumerate(line.words):
            if position:
                # The gap before this word, as the estimate places it.
                gap_left = line.words[position - 1].box[2]
                ET.SubElement(
                    text_line,
                    "SP",
                    {
                        "WIDTH": str(max(0, word.box[0] - gap_left)),
                        "HPOS": str(gap_left),
                        "VPOS": str(word.box[1]),
                    },
                )
            ET.SubElement(
                text_line, "String", {"ID": ids.next("S"), "CONTENT": word.text, **_position(word.box)}
            )


def _region(parent: ET.Element, region: Region, ids: _Ids) -> None:
    label = region.block.label
    tagrefs = {"TAGREFS": _tag_id(label)} if label in LAYOUT_LABELS else {}
    if region.kind == "text":
        _text_block(parent, region, ids, tagrefs)
        return
    if region.kind == "figure" and not region.lines:
        ET.SubElement(
            parent,
            "Illustration",
            {"ID": ids.next("IL"), "TYPE": "figure", **_position(region.box), **tagrefs},
        )
        return
    composed = ET.SubElement(
        parent,
        "ComposedBlock",
        {"ID": ids.next("CB"), "TYPE": region.kind, **_position(region.box), **tagrefs},
    )
    if region.kind == "figure":
        ET.SubElement(
            composed, "Illustration", {"ID": ids.next("IL"), "TYPE": "figure", **_position(region.box)}
        )
    _text_block(composed, region, ids, {})


def _page(layout: ET.Element, result: PageResult, physical: int, ids: _Ids) -> None:
    parsed = result.parsed
    width, height = parsed.image_size if parsed is not None else result.image_size or (0, 0)
    page = ET.SubElement(
        layout,
        "Page",
        {
            "ID": f"PAGE_{physical}",
            "PHYSICAL_IMG_NR": str(physical),
            "WIDTH": str(width),
            "HEIGHT": str(height),
        },
    )
    if parsed is None:
        message = result.error.message if result.error is not None else "no output"
        # "--" may not appear inside an XML comment.
        note = xml_safe(message).replace("--", "- -")
        page.append(ET.Comment(f" page {result.page} failed: {note} "))
        return
    space = ET.SubElement(page, "PrintSpace", _position((0, 0, width, height)))
    for region in page_regions(parsed):
        _region(space, region, ids)


def alto_document(results: Sequence[PageResult], *, model: str = "", source: str | None = None) -> str:
    """The pages as one ALTO 4 document (``source``: the input's name, for ``fileName``)."""
    from dsocr import __version__

    root = ET.Element(
        "alto",
        {
            "xmlns": ALTO_NAMESPACE,
            "xmlns:xsi": _XSI,
            "xsi:schemaLocation": f"{ALTO_NAMESPACE} {_SCHEMA}",
            "SCHEMAVERSION": "4.2",
        },
    )
    description = ET.SubElement(root, "Description")
    ET.SubElement(description, "MeasurementUnit").text = "pixel"
    if source:
        image_info = ET.SubElement(description, "sourceImageInformation")
        ET.SubElement(image_info, "fileName").text = xml_safe(source)
    processing = ET.SubElement(description, "Processing", {"ID": _PROCESSING_ID})
    ET.SubElement(processing, "processingCategory").text = "contentGeneration"
    engine = f"Text and layout blocks by DeepSeek-OCR{f' ({model})' if model else ''}."
    ET.SubElement(processing, "processingStepDescription").text = engine
    ET.SubElement(processing, "processingStepDescription").text = ESTIMATED_NOTE
    software = ET.SubElement(processing, "processingSoftware")
    ET.SubElement(software, "softwareName").text = "dsocr"
    ET.SubElement(software, "softwareVersion").text = __version__
    labels = sorted(
        {
            block.label
            for result in results
            if result.parsed is not None
            for block in result.parsed.blocks
            if block.label in LAYOUT_LABELS
        }
    )
    if labels:
        tags = ET.SubElement(root, "Tags")
        for label in labels:
            ET.SubElement(tags, "LayoutTag", {"ID": _tag_id(label), "LABEL": label})
    layout = ET.SubElement(root, "Layout")
    ids = _Ids()
    for physical, result in enumerate(results, start=1):
        _page(layout, result, physical, ids)
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _page_field(result: PageResult, context: RenderContext) -> str | None:
    if result.parsed is None:
        return None
    return alto_document([result], model=context.model)


def _document_field(results: Sequence[PageResult]) -> str:
    return alto_document(results)


def _file(results: Sequence[PageResult], context: FileContext) -> bytes:
    return alto_document(results, model=context.render.model, source=context.source).encode("utf-8")


OUTPUT = Output(
    name="alto",
    description="ALTO 4 XML: pages, text blocks, estimated lines and words, illustrations, in pixels.",
    page=_page_field,
    document=_document_field,
    file=_file,
    suffix=".xml",
    media_type="application/xml; charset=utf-8",
)
