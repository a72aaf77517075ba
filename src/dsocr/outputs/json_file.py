"""``json``: the whole document as the ``/v1/ocr`` response, plus its ``source`` (a file)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dsocr.outputs.base import FileContext, Output

if TYPE_CHECKING:
    from dsocr.results import PageResult

__all__ = ["OUTPUT"]

# What the file holds per page: the text renderings; pictures go to their own files.
_FIELDS = ("markdown", "text", "blocks")


def _file(results: Sequence[PageResult], context: FileContext) -> bytes:
    from dsocr.outputs import document_json  # here: the registry in dsocr.outputs imports this module

    document = {"source": context.source, **document_json(results, _FIELDS, context.render)}
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


OUTPUT = Output(
    name="json",
    description="The document as JSON: the /v1/ocr response with markdown, text and blocks.",
    file=_file,
    suffix=".json",
    media_type="application/json",
    selectable=False,
)
