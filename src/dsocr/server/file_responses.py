"""A document's results answered as one file (``?format=md|txt|json|pdf|hocr|alto|html``).

:func:`file_response` is the one place a route turns results into a file response: the format
comes from the registry (:func:`dsocr.outputs.file_output`; an unknown name is a 400 naming
``format``), the file is built off the event loop, and the answer carries the format's media type
and a download name. The routes set ``FileContext.isolate`` to
:func:`dsocr.inputs.render_worker.isolated_pdf_work`: pdfium work on an input PDF runs in the
render workers, under the render budget, never in the server process.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from urllib.parse import quote

from fastapi.responses import Response

from dsocr import outputs
from dsocr.results import PageResult

__all__ = ["download_name", "file_response"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 100


def download_name(source: str, suffix: str) -> str:
    """The file name a download gets: the source's name (no folders, no suffix) plus ``suffix``."""
    stem = PurePosixPath(source.replace("\\", "/").split("?", 1)[0]).stem.strip() or "document"
    return stem[:_MAX_STEM] + suffix


def _disposition(name: str) -> str:
    # An ASCII fallback for old clients, the real name (RFC 6266 / 5987) for the rest.
    ascii_name = _UNSAFE.sub("_", name).strip("_") or "document"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def file_response(
    format_name: str, results: Sequence[PageResult], context: outputs.FileContext
) -> Response:
    """``results`` as one file of format ``format_name`` (``md``, ``pdf``, ``hocr`` …).

    Raises ``InvalidInput`` (field ``format``) for a name that is no file format. The file is
    built in a worker thread (a searchable PDF of many pages takes a while); ``context`` must stay
    valid until this returns (its ``page_image`` reads the run's pages).
    """
    output = outputs.file_output(format_name)
    assert output.file is not None
    data = await asyncio.to_thread(output.file, results, context)
    return Response(
        data,
        media_type=output.media_type,
        headers={"Content-Disposition": _disposition(download_name(context.source, output.suffix))},
    )
