"""Batch output files: atomic writers, per-page files and the per-document assembly.

Layout of one document ``NAME`` under the output folder::

    NAME/NAME.md            pages joined with the official page-split marker; links resolve from here
    NAME/pages/<page>.json  blocks, usage, warnings, finish_reason, error (one per page)
    NAME/pages/<page>.md    the page alone (links point at ../images/)
    NAME/images/<page>_<i>.png   figure crops (crop i of page <page>)
    NAME/overlays/<page>.png     boxes drawn on the page (on request)
    NAME/NAME.<suffix>      the document in each format of ``--formats`` (NAME.pdf, NAME.hocr …)

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over
the target (``os.replace``), so a crash leaves the old file or the new one, never half of one. A
page's JSON is written last: once it exists, the page's other files are complete.

Page files hold no timings or request ids, so the same page gives the same bytes on every run
and through every path (local or Ray); timings go to the run summary.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dsocr import grounding
from dsocr.errors import DsocrError
from dsocr.inputs.formats import sniff_format
from dsocr.outputs import FileContext, Output, RenderContext, page_json
from dsocr.outputs.markdown import relink_crops
from dsocr.results import PageResult
from dsocr.types import Block

__all__ = [
    "PAGE_SPLIT",
    "PageArtifacts",
    "assemble_document",
    "document_file_path",
    "failed_artifacts",
    "page_artifacts",
    "page_json_path",
    "page_results",
    "write_atomic",
    "write_document_files",
    "write_page",
    "write_text_atomic",
]

# The official marker between pages (run_dpsk_ocr_pdf.py).
PAGE_SPLIT = "\n<--- Page Split --->\n"


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` all at once: a temporary file in the same folder, then a rename.

    With ``durable`` the data is fsynced before the rename, so a page marked done in the
    manifest after this returns survives a power loss too, not only a killed process.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str, *, durable: bool = True) -> None:
    """``write_atomic`` for UTF-8 text."""
    write_atomic(path, text.encode("utf-8"), durable=durable)


@dataclass(frozen=True, slots=True, kw_only=True)
class PageArtifacts:
    """Everything written for one page; plain data, so it can cross a Ray boundary as JSON.

    ``record`` is the page JSON (its ``markdown`` links crops as ``images/<page>_<i>.png``,
    relative to the document folder). ``crops`` and ``overlay`` are PNG bytes.
    """

    page: int
    record: dict[str, Any]
    crops: tuple[bytes, ...] = ()
    overlay: bytes | None = None

    @property
    def error(self) -> dict[str, Any] | None:
        """The page error (``type``, ``message``, ``field``), or None when the page has output."""
        error: dict[str, Any] | None = self.record.get("error")
        return error

    def to_json(self) -> str:
        """Serialise (binary parts as base64) for transport between processes."""
        return json.dumps(
            {
                "page": self.page,
                "record": self.record,
                "crops": [base64.b64encode(crop).decode("ascii") for crop in self.crops],
                "overlay": None if self.overlay is None else base64.b64encode(self.overlay).decode("ascii"),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> PageArtifacts:
        """The inverse of ``to_json``."""
        data = json.loads(text)
        overlay = data["overlay"]
        return cls(
            page=int(data["page"]),
            record=data["record"],
            crops=tuple(base64.b64decode(crop) for crop in data["crops"]),
            overlay=None if overlay is None else base64.b64decode(overlay),
        )


def crop_name(page: int, index: int) -> str:
    """File name of crop ``index`` of ``page`` inside ``images/``."""
    return f"{page}_{index}.png"


# What a page file holds: the page JSON, without what varies from run to run
# (timings, request ids, whether the result cache answered), so the same page gives the same bytes
# on every run and path, and without what has its own files (crops, overlay).
_PAGE_FIELDS = ("markdown", "blocks")
_NOT_IN_PAGE_FILES = ("timings", "request_id", "ok", "repetition_score", "cached", "crops", "visualization")


def page_artifacts(result: PageResult, *, page: int) -> PageArtifacts:
    """The files of one pipeline result, numbered as document page ``page`` (1-based).

    A failed page gets its JSON only, with the error and empty markdown and blocks.
    """
    context = RenderContext(request_id=result.request_id, model="", prompt="")
    page_fields = page_json(result, _PAGE_FIELDS, context)
    record: dict[str, Any] = {k: v for k, v in page_fields.items() if k not in _NOT_IN_PAGE_FILES}
    record["page"] = page
    crops = tuple(base64.b64decode(crop) for crop in result.drawn.get("crops", ()))
    picture = result.drawn.get("visualization")
    overlay = None if picture is None else base64.b64decode(picture)
    if result.parsed is not None:
        record["markdown"] = relink_crops(
            record["markdown"], lambda index: f"images/{crop_name(page, index)}"
        )
    else:
        # Every page file has the same keys; a failed page's are empty.
        record.update(markdown="", blocks=[])
    record["crops"] = [f"images/{crop_name(page, i)}" for i in range(len(crops))]
    record["overlay"] = None if overlay is None else f"overlays/{page}.png"
    return PageArtifacts(page=page, record=record, crops=crops, overlay=overlay)


def failed_artifacts(
    page: int, error: DsocrError, *, image_size: tuple[int, int] | None = None
) -> PageArtifacts:
    """The files of a page that failed before the pipeline had a result for it (a render failure)."""
    return page_artifacts(PageResult(page=page, request_id="", error=error, image_size=image_size), page=page)


def page_json_path(doc_dir: Path, page: int) -> Path:
    """Where the JSON of ``page`` lives (its presence means the page's files are complete)."""
    return doc_dir / "pages" / f"{page}.json"


def write_page(doc_dir: Path, artifacts: PageArtifacts, *, durable: bool = True) -> None:
    """Write one page's files atomically; the page JSON goes last."""
    page = artifacts.page
    for index, crop in enumerate(artifacts.crops):
        write_atomic(doc_dir / "images" / crop_name(page, index), crop, durable=durable)
    if artifacts.overlay is not None:
        write_atomic(doc_dir / "overlays" / f"{page}.png", artifacts.overlay, durable=durable)
    # Per-page markdown sits in pages/, one level below the images/ folder.
    page_md = str(artifacts.record["markdown"]).replace("](images/", "](../images/")
    write_text_atomic(doc_dir / "pages" / f"{page}.md", _page_markdown(page, artifacts.record, page_md))
    body = json.dumps(artifacts.record, ensure_ascii=False, indent=2) + "\n"
    write_text_atomic(page_json_path(doc_dir, page), body, durable=durable)


def _page_markdown(page: int, record: dict[str, Any], markdown: str) -> str:
    error = record.get("error")
    if error is not None:
        return f"<!-- page {page} failed: {error['type']}: {error['message']} -->\n"
    return markdown.strip() + "\n"


def assemble_document(doc_dir: Path, name: str, pages: Sequence[int], *, durable: bool = True) -> Path:
    """Join the pages' markdown (from their JSON files) into ``NAME/NAME.md``; return its path.

    Reads the page files back from disk, so pages finished by an earlier, interrupted run are
    assembled exactly like pages of this run. A page without a JSON file (never finished) or with
    an error gets an HTML comment in its place, never silent omission.
    """
    parts: list[str] = []
    for page in pages:
        path = page_json_path(doc_dir, page)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            parts.append(f"<!-- page {page} missing: not processed yet -->")
            continue
        error = record.get("error")
        if error is not None:
            parts.append(f"<!-- page {page} failed: {error['type']}: {error['message']} -->")
        else:
            parts.append(str(record["markdown"]).strip())
    target = doc_dir / f"{name}.md"
    write_text_atomic(target, PAGE_SPLIT.join(parts) + "\n", durable=durable)
    return target


def _block(item: dict[str, Any]) -> Block:
    return Block(
        index=int(item["index"]),
        label=str(item["label"]),
        text=str(item["text"]),
        boxes=tuple((b[0], b[1], b[2], b[3]) for b in item["boxes"]),
        boxes_px=tuple((b[0], b[1], b[2], b[3]) for b in item["boxes_px"]),
        crop_index=item.get("crop_index"),
    )


def page_results(
    doc_dir: Path, pages: Sequence[int], *, prompt: str, crops: bool = False
) -> list[PageResult]:
    """The document's pages rebuilt from their page files, as the pipeline gave them: the blocks
    are parsed again (so markdown links crops page by page, ``images/<i>.png``), and with
    ``crops`` the crop files are read back. A page not finished or failed is a failed result."""
    results: list[PageResult] = []
    for page in pages:
        try:
            record = json.loads(page_json_path(doc_dir, page).read_text(encoding="utf-8"))
        except FileNotFoundError:
            results.append(PageResult(page=page, request_id="", error=DsocrError("not processed yet")))
            continue
        error = record.get("error")
        size = record.get("image_size")
        image_size = (int(size[0]), int(size[1])) if size else None
        if error is not None or image_size is None:
            message = str(error["message"]) if error is not None else "no output"
            results.append(
                PageResult(page=page, request_id="", error=DsocrError(message), image_size=image_size)
            )
            continue
        blocks = [_block(item) for item in record["blocks"]]
        ref_is_text = grounding.ref_is_text_for_prompt(prompt)
        if ref_is_text is None:
            ref_is_text = bool(blocks) and all(block.label == block.text for block in blocks)
        raw = grounding.to_raw(blocks, ref_is_text=ref_is_text)
        parsed = grounding.parse(raw, width=image_size[0], height=image_size[1], prompt=prompt)
        drawn: dict[str, Any] = {}
        if crops:
            drawn["crops"] = tuple(
                base64.b64encode((doc_dir / name).read_bytes()).decode("ascii")
                for name in record.get("crops", ())
                if (doc_dir / name).is_file()
            )
        results.append(
            PageResult(page=page, request_id="", parsed=parsed, image_size=image_size, drawn=drawn)
        )
    return results


def document_file_path(doc_dir: Path, name: str, output: Output) -> Path:
    """Where the document's file in ``output``'s format lives: ``NAME/NAME<suffix>``."""
    return doc_dir / f"{name}{output.suffix}"


def write_document_files(
    doc_dir: Path,
    name: str,
    pages: Sequence[int],
    *,
    source: Path,
    formats: Sequence[Output],
    prompt: str,
    isolate: Any = None,
    durable: bool = True,
) -> list[Path]:
    """Write the document in each of ``formats`` from its page files; return the paths written."""
    if not formats:
        return []
    data = source.read_bytes()
    kind: Literal["image", "pdf"] = "pdf" if sniff_format(data) == "PDF" else "image"
    results = page_results(doc_dir, pages, prompt=prompt, crops=any("crops" in o.uses for o in formats))
    if not any(result.ok for result in results):
        return []  # nothing came out (an unreadable file, say): its failure is reported, not drawn
    context = FileContext(
        render=RenderContext(request_id="", model="", prompt=prompt, kind=kind),
        source=source.name,
        source_bytes=lambda: data,
        isolate=isolate,
    )
    written: list[Path] = []
    for output in formats:
        assert output.file is not None
        target = document_file_path(doc_dir, name, output)
        write_atomic(target, output.file(results, context), durable=durable)
        written.append(target)
    return written
