"""What an output format is: a name and the renderings it offers (page field, document field,
drawing from the page image, whole-document file). Front ends never branch on a format's name:
they ask :mod:`dsocr.outputs` for the formats a request named and call what each offers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from PIL import Image

    from dsocr.results import PageResult
    from dsocr.types import ParsedOutput

__all__ = ["FileContext", "Output", "RenderContext"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderContext:
    """The request a result belongs to, for renderings that echo it."""

    request_id: str
    model: str
    prompt: str
    # The prompt field as the client sent it (``None``: no prompt given), echoed by the Truss fields.
    prompt_as_sent: str | None = None
    mode: str = "gundam"
    kind: Literal["image", "pdf"] = "image"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileContext:
    """What a whole-document file needs beyond the results (CLI output files)."""

    render: RenderContext
    source: str
    # The folder the markdown links figure crops in (see ``dsocr ocr --crops``).
    crops_link: str = "images"
    # A page's image again, by page number (layout PDF); ``None`` where the caller cannot.
    page_image: Callable[[int], Image.Image] | None = None
    # The input's bytes as sent (the original PDF, or the image file); ``None`` where the caller
    # does not keep them. The searchable PDF keeps a PDF's own pages from them.
    source_bytes: Callable[[], bytes] | None = None
    # Runs ``task(*args)`` in a separate process under the PDF render budget (the server makes no
    # pdfium call on an input in its own process); ``None``: in this process (local jobs).
    isolate: Callable[..., Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """One output format. Every rendering is optional; a format offers those that make sense.

    * ``page``: the value of the page's JSON field ``name``;
    * ``document``: the value of the document's JSON field ``name`` (joining the pages);
    * ``draw``: computed from the page image in the pipeline's post-processing (blocking, in a
      worker thread), kept on the result under ``name`` for ``page`` to read;
    * ``file``: the whole document as one file (``dsocr ocr --format``, ``/v1/ocr?format=``),
      with its ``suffix`` and ``media_type``.

    ``uses`` names other formats whose drawings this one reads (``html`` inlines the figure
    crops): asking for this format, as a page field or as a file, draws them too.

    ``pixel_cost`` is the extra memory ``draw`` takes, in multiples of the page's pixel count: what
    admission reserves for it.
    """

    name: str
    description: str
    page: Callable[[PageResult, RenderContext], Any] | None = None
    document: Callable[[Sequence[PageResult]], Any] | None = None
    draw: Callable[[Image.Image, ParsedOutput], Any] | None = None
    file: Callable[[Sequence[PageResult], FileContext], bytes] | None = None
    suffix: str = ""
    media_type: str = "application/octet-stream"
    pixel_cost: int = 0
    uses: tuple[str, ...] = ()
    # Part of a request's outputs list (``/v1/ocr``'s ``outputs``); False for file-only formats.
    selectable: bool = True
