"""The work behind ``dsocr ocr``: one file or URL through the same pipeline the server uses.

No HTTP hop: the source is read (local file, stdin, or SSRF-guarded URL), opened as an image or a PDF
(:func:`dsocr.inputs.load_document`), its pages run through :func:`dsocr.pipeline.ocr_document`
on an engine started in this process, and the results are written as markdown, text or JSON.
Figure crops and box overlays are written to files on request; the markdown links the crops where
they were written. Typer types stay in ``cli.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from PIL import Image

from dsocr import service
from dsocr.cli_exit import EXIT_INTERNAL, EXIT_PARTIAL, exit_code_of
from dsocr.engine.base import Engine
from dsocr.engine.factory import create_engine
from dsocr.errors import InputTooLarge, InvalidInput
from dsocr.inputs import BytesSource, Source, UrlSource, load_document
from dsocr.inputs.sources import read_local_file
from dsocr.pipeline import OutputKind, PageInput, PageResult, document_pages, ocr_document
from dsocr.progress import progress_bar
from dsocr.prompts import build_prompt
from dsocr.render.overlay import layout_pdf
from dsocr.settings import LimitSettings, Settings

__all__ = ["EXIT_PARTIAL", "OcrJob", "OcrOutcome", "OutputFormat", "run_ocr"]

OutputFormat = Literal["md", "txt", "json"]

_IMAGE_LINK = re.compile(r"!\[\]\(images/(\d+)\.png\)")
# Where the parser's markdown links crops; kept when no crops are written.
_DEFAULT_CROPS_LINK = "images"
# The source argument that reads the file from standard input.
STDIN = "-"
# Pages OCRed concurrently: enough to keep a batching engine busy, few enough to bound memory.
_MAX_IN_FLIGHT = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class OcrJob:
    """What ``dsocr ocr`` was asked to do (already validated by typer)."""

    source: str
    mode: str = "gundam"
    preset: str | None = None
    prompt: str | None = None
    pages: str | None = None
    output_format: OutputFormat = "md"
    out: Path | None = None
    crops_dir: Path | None = None
    viz: Path | None = None
    max_tokens: int | None = None
    quiet: bool = False


@dataclass(slots=True, kw_only=True)
class OcrOutcome:
    """The pages and how the run ended; ``exit_code`` is what the CLI exits with."""

    results: list[PageResult] = field(default_factory=list)
    engine_name: str = ""
    written: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[PageResult]:
        """Pages that produced no output."""
        return [result for result in self.results if not result.ok]

    @property
    def exit_code(self) -> int:
        """0 all pages done; 4 some failed; the first error's code when every page failed."""
        failed = self.failed
        if not failed:
            return 0
        if len(failed) < len(self.results):
            return EXIT_PARTIAL
        first = failed[0].error
        return exit_code_of(first) if first is not None else EXIT_INTERNAL


def source_of(text: str, settings: Settings) -> Source:
    """``-`` is stdin; an http(s) URL is fetched (SSRF-guarded); anything else is a local file path."""
    if text == STDIN:
        return read_stdin(settings.limits)
    if re.match(r"(?i)^https?://", text):
        return UrlSource(text, field="source")
    path = Path(text)
    if not path.exists():
        raise InvalidInput(f"no such file: {text}", field="source")
    return read_local_file(path, limits=settings.limits, field="source")


def read_stdin(limits: LimitSettings) -> BytesSource:
    """The image or PDF piped to stdin, at most the upload limit (read no further than that)."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None or stream.isatty():
        raise InvalidInput(
            "'-' reads the image or PDF from stdin, but nothing is piped in (cat page.png | dsocr ocr -)",
            field="source",
        )
    data = stream.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise InputTooLarge(
            f"stdin holds more than {limits.max_upload_bytes:,} bytes, the limit "
            "(DSOCR_LIMITS__MAX_UPLOAD_BYTES)",
            field="source",
        )
    if not data:
        raise InvalidInput("stdin is empty; pipe an image or PDF in", field="source")
    return BytesSource(data, field="source")


def crops_link(crops_dir: Path | None, out: Path | None) -> str:
    """The folder the markdown links crops in: ``crops_dir`` relative to the markdown file's folder
    when it is written to ``out``, else as the user wrote it (relative to where they ran it)."""
    if crops_dir is None:
        return _DEFAULT_CROPS_LINK
    if out is None:
        return crops_dir.as_posix()
    try:
        relative = os.path.relpath(os.path.abspath(crops_dir), os.path.abspath(out.parent))
    except ValueError:  # another drive (Windows): no relative path exists
        return Path(os.path.abspath(crops_dir)).as_posix()
    return Path(relative).as_posix()


def run_ocr(job: OcrJob, settings: Settings, *, write_stdout: Callable[[str], None]) -> OcrOutcome:
    """Run ``job`` to the end; raises ``DsocrError`` when nothing could be done at all."""
    return asyncio.run(_run(job, settings, write_stdout=write_stdout))


async def _run(job: OcrJob, settings: Settings, *, write_stdout: Callable[[str], None]) -> OcrOutcome:
    prompt = build_prompt(job.preset, prompt=job.prompt)
    sampling = service.sampling_options(settings.engine, settings.limits, max_tokens=job.max_tokens)
    source = await asyncio.to_thread(source_of, job.source, settings)
    document = await load_document(source, limits=settings.limits, fetch=settings.fetch, pages=job.pages)
    service.check_page_range(document, job.pages)
    page_inputs = document_pages(document)
    outputs: set[OutputKind] = set()
    if job.crops_dir is not None:
        outputs.add("crops")
    if job.viz is not None and job.viz.suffix.lower() != ".pdf":
        outputs.add("visualization")
    outcome = OcrOutcome()
    try:
        async with _started_engine(settings) as engine:
            outcome.engine_name = engine.info.name
            if job.mode not in engine.info.modes:
                raise InvalidInput(
                    f"mode {job.mode!r} is not served by the {engine.info.name} engine; "
                    f"choose from {', '.join(engine.info.modes)}",
                    field="mode",
                )
            pages = ocr_document(
                engine,
                page_inputs,
                prompt=prompt,
                mode=job.mode,
                sampling=sampling,
                request_id=service.new_request_id(),
                outputs=frozenset(outputs),
                max_in_flight=_MAX_IN_FLIGHT,
                timeout_s=None,
            )
            # One page needs no bar.
            with progress_bar(len(page_inputs), quiet=job.quiet or len(page_inputs) < 2) as advance:
                async for result in pages:
                    outcome.results.append(result)
                    advance()
        _report_failures(outcome)
        if len(outcome.failed) == len(outcome.results):
            return outcome  # nothing to write; the errors were reported
        text = render(
            outcome.results,
            job.output_format,
            source=job.source,
            prompt=prompt,
            crops_link=crops_link(job.crops_dir, job.out),
        )
        if job.out is None:
            write_stdout(text)
        else:
            job.out.write_text(text, encoding="utf-8")
            outcome.written.append(job.out)
        if job.crops_dir is not None:
            outcome.written.extend(write_crops(outcome.results, job.crops_dir))
        if job.viz is not None:
            outcome.written.extend(
                await asyncio.to_thread(
                    write_viz, outcome.results, job.viz, page_inputs, many=document.kind == "pdf"
                )
            )
    finally:
        await document.aclose()
    return outcome


class _EngineContext:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engine: Engine | None = None

    async def __aenter__(self) -> Engine:
        engine = create_engine(self._settings.engine)
        try:
            await engine.start()
        except BaseException:
            await engine.close()
            raise
        self._engine = engine
        return engine

    async def __aexit__(self, *exc_info: object) -> None:
        if self._engine is not None:
            await self._engine.close()


def _started_engine(settings: Settings) -> _EngineContext:
    return _EngineContext(settings)


def _report_failures(outcome: OcrOutcome) -> None:
    for result in outcome.failed:
        assert result.error is not None
        where = f" ({result.error.field})" if result.error.field else ""
        print(f"error: page {result.page}: {result.error.message}{where}", file=sys.stderr)
    for result in outcome.results:
        for warning in result.warnings:
            print(f"warning: page {result.page}: {warning}", file=sys.stderr)


# ---------------------------------------------------------------- output formats


def _crop_offsets(results: list[PageResult]) -> list[int]:
    """Where each page's crop numbers start, so crops and links are numbered over the document."""
    offsets: list[int] = []
    total = 0
    for result in results:
        offsets.append(total)
        if result.parsed is not None:
            total += len(result.parsed.crop_boxes_px)
    return offsets


def _relink(markdown: str, offset: int, folder: str) -> str:
    """Page-local crop links → ``folder/N.png`` with N numbered over the document."""
    if offset == 0 and folder == _DEFAULT_CROPS_LINK:
        return markdown
    return _IMAGE_LINK.sub(lambda m: f"![]({quote(f'{folder}/{int(m.group(1)) + offset}.png')})", markdown)


def render(
    results: list[PageResult],
    output_format: OutputFormat,
    *,
    source: str,
    prompt: str,
    crops_link: str = _DEFAULT_CROPS_LINK,
) -> str:
    """The document as markdown (pages separated by a rule), text (form feeds) or JSON.

    Crop links point into the folder ``crops_link`` (see :func:`crops_link`).
    """
    offsets = _crop_offsets(results)
    if output_format == "json":
        document = _json_document(results, offsets, source=source, prompt=prompt, crops_link=crops_link)
        return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    parts: list[str] = []
    for result, offset in zip(results, offsets, strict=True):
        if result.parsed is None:
            parts.append("" if output_format == "txt" else f"<!-- page {result.page} failed -->")
        elif output_format == "txt":
            parts.append(result.parsed.text.strip())
        else:
            parts.append(_relink(result.parsed.markdown, offset, crops_link).strip())
    separator = "\n\f\n" if output_format == "txt" else "\n\n---\n\n"
    return separator.join(parts) + "\n"


def _json_document(
    results: list[PageResult], offsets: list[int], *, source: str, prompt: str, crops_link: str
) -> dict[str, Any]:
    pages: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    for result, offset in zip(results, offsets, strict=True):
        page: dict[str, Any] = {
            "page": result.page,
            "request_id": result.request_id,
            "image_size": result.image_size,
        }
        if result.error is not None:
            page["error"] = result.error.to_dict()
        else:
            page.update(service.typed_page_fields(result))
            page["markdown"] = _relink(page["markdown"], offset, crops_link)
            page["first_crop"] = offset
        prompt_tokens += result.usage.prompt_tokens
        completion_tokens += result.usage.completion_tokens
        pages.append(page)
    errors = [{"page": r.page, **r.error.to_dict()} for r in results if r.error is not None]
    return {
        "source": source,
        "prompt": prompt,
        "pages": pages,
        "errors": errors,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# ---------------------------------------------------------------- files


def write_crops(results: list[PageResult], directory: Path) -> list[Path]:
    """Write figure crops as ``DIRECTORY/N.png``, N numbered over the document like the links."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for result, offset in zip(results, _crop_offsets(results), strict=True):
        for index, crop in enumerate(result.crops):
            path = directory / f"{offset + index}.png"
            path.write_bytes(base64.b64decode(crop))
            written.append(path)
    return written


def write_viz(
    results: list[PageResult], target: Path, pages: Sequence[PageInput], *, many: bool
) -> list[Path]:
    """Box overlays: one PNG (``NAME-pN.png`` per page for a PDF), or one layout PDF for ``*.pdf``."""
    if target.suffix.lower() == ".pdf":
        by_number = {page.number: page for page in pages}

        def annotated() -> Iterator[tuple[Image.Image, Any]]:
            for result in results:
                if result.parsed is not None:
                    yield by_number[result.page].load(), result.parsed

        target.write_bytes(layout_pdf(annotated()))
        return [target]
    written: list[Path] = []
    for result in results:
        if result.visualization is None:
            continue
        path = target.with_name(f"{target.stem}-p{result.page}{target.suffix}") if many else target
        path.write_bytes(base64.b64decode(result.visualization))
        written.append(path)
    return written
