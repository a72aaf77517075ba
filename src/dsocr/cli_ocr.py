"""The work behind ``dsocr ocr``: one file or URL through the same pipeline the server uses.

Locally there is no HTTP hop: the source (local file, stdin, or SSRF-guarded URL) becomes the same
:class:`~dsocr.request.OcrRequest` the server builds, runs through :class:`dsocr.pipeline.Pipeline`
on an engine started in this process (no admission and no deadline: a local job; the result
cache, :mod:`dsocr.cache`, on unless ``DSOCR_CACHE__ENABLED=false``), and the results
are written in a file format of :mod:`dsocr.outputs` (markdown, text, JSON …). Figure crops and
box overlays are written to files on request; the markdown links the crops where they were
written. Typer types stay in ``cli.py``.

With a server (``--server``, ``DSOCR_REMOTE__URL``) the same source is read here and sent there
(:mod:`dsocr.remote`: an image in one request, a PDF as a job); its pages come back with their
raw output and are rebuilt into the same page results, then written by the same code, so every
format, ``--crops`` and ``--viz`` give the same files as a local run on the same engine.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dsocr import outputs
from dsocr.cache import PageCache, open_cache
from dsocr.cli_exit import EXIT_INTERNAL, EXIT_PARTIAL, exit_code_of
from dsocr.engine.base import Engine
from dsocr.engine.factory import create_engine
from dsocr.errors import InputTooLarge, InvalidInput
from dsocr.inputs import BytesSource, Document, Source, open_document
from dsocr.inputs.render_worker import isolated_pdf_work
from dsocr.inputs.sources import RawInput, read_local_file, read_source, source_of
from dsocr.pipeline import Pipeline
from dsocr.progress import progress_bar, progress_counter
from dsocr.remote import RemoteServer, Upload, request_fields
from dsocr.request import OcrRequest, build_request
from dsocr.results import PageResult
from dsocr.settings import LimitSettings, Settings

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["EXIT_PARTIAL", "OcrJob", "OcrOutcome", "run_ocr"]

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
    # None: from ``out``'s suffix (``x.hocr`` → hOCR), else markdown.
    output_format: str | None = None
    out: Path | None = None
    crops_dir: Path | None = None
    viz: Path | None = None
    max_tokens: int | None = None
    quiet: bool = False
    # With a server: the served model to use (None: its default). Locally the settings say.
    model: str | None = None


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


def cli_source(text: str, settings: Settings) -> Source:
    """``-`` is stdin; an http(s) or data: URL is read as on the server; anything else a local file."""
    if text == STDIN:
        return read_stdin(settings.limits)
    if re.match(r"(?i)^(https?|data):", text):
        return source_of(text, kind="url", field="source")
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


def run_ocr(job: OcrJob, settings: Settings, *, write_stdout: Callable[[bytes], None]) -> OcrOutcome:
    """Run ``job`` to the end; raises ``DsocrError`` when nothing could be done at all."""
    return asyncio.run(_run(job, settings, write_stdout=write_stdout))


def file_format_of(output_format: str | None, out: Path | None) -> outputs.Output:
    """The file format: ``--format`` when given; else the one ``--out``'s suffix names; else markdown.

    An ``--out`` suffix that names no format is an error (``InvalidInput`` naming ``out``): writing
    markdown into ``scan.docx`` would only surprise.
    """
    if output_format is not None:
        return outputs.file_output(output_format)
    suffix = out.suffix if out is not None else ""
    if not suffix:
        return outputs.file_output("md")
    found = outputs.FILE_FORMATS.get(suffix.lower().lstrip("."))
    if found is None:
        suffixes = sorted({o.suffix for o in outputs.FILE_FORMATS.values()})
        raise InvalidInput(
            f"cannot tell the format from --out's suffix {suffix!r}; give --format or end --out "
            f"with one of {', '.join(suffixes)}",
            field="out",
        )
    return found


def _drawn_outputs(job: OcrJob, file_format: outputs.Output) -> list[str]:
    """The formats drawn from the page images: what the output, crop and overlay files need."""
    drawn: list[str] = list(file_format.uses)
    if job.crops_dir is not None:
        drawn.append("crops")
    if job.viz is not None and job.viz.suffix.lower() != ".pdf":
        drawn.append("visualization")
    return drawn


async def _run(job: OcrJob, settings: Settings, *, write_stdout: Callable[[bytes], None]) -> OcrOutcome:
    file_format = file_format_of(job.output_format, job.out)
    source = await asyncio.to_thread(cli_source, job.source, settings)
    # The input's bytes, kept for the formats that reuse them (a searchable PDF keeps a PDF's pages).
    raw = await read_source(source, limits=settings.limits, fetch=settings.fetch)
    if settings.remote.url is not None:
        return await _run_remote(job, settings, raw, file_format, write_stdout)
    request = build_request(
        settings,
        source=BytesSource(raw.data, filename=raw.name, content_type=raw.declared_type, field=raw.field),
        preset=job.preset,
        prompt=job.prompt,
        mode=job.mode,
        outputs=_drawn_outputs(job, file_format),
        max_tokens=job.max_tokens,
        pages=job.pages,
        deadline=False,
        cache_scope="",
    )
    outcome = OcrOutcome()
    cache = await asyncio.to_thread(open_cache, settings, default=True)
    try:
        async with _started_engine(settings) as engine:
            outcome.engine_name = engine.info.name
            pipeline = Pipeline(
                engine, limits=settings.limits, fetch=settings.fetch, window=_MAX_IN_FLIGHT, cache=cache
            )
            await _run_pipeline(
                job, settings, pipeline, request, raw.data, outcome, file_format, write_stdout
            )
    finally:
        if cache is not None:
            await asyncio.to_thread(cache.close)
    return outcome


async def _run_pipeline(
    job: OcrJob,
    settings: Settings,
    pipeline: Pipeline,
    request: OcrRequest,
    data: bytes,
    outcome: OcrOutcome,
    file_format: outputs.Output,
    write_stdout: Callable[[bytes], None],
) -> None:
    async with await pipeline.start(request) as run:
        page_count = len(run.page_numbers)
        # One page needs no bar.
        with progress_bar(page_count, quiet=job.quiet or page_count < 2) as advance:
            async with aclosing(run.events()) as events:
                async for event in events:
                    if isinstance(event, PageResult):
                        outcome.results.append(event)
                        advance()
        _report_failures(outcome)
        _report_cache(outcome, pipeline.cache, quiet=job.quiet)
        if len(outcome.failed) == len(outcome.results):
            return  # nothing to write; the errors were reported
        context = outputs.FileContext(
            render=run.render_context,
            source=job.source,
            crops_link=crops_link(job.crops_dir, job.out),
            page_image=run.page_image,
            source_bytes=lambda: data,
            isolate=isolated_pdf_work(settings.limits, pages=len(outcome.results)),
        )
        await asyncio.to_thread(_write_files, job, run.kind, outcome, file_format, write_stdout, context)


async def _run_remote(
    job: OcrJob,
    settings: Settings,
    raw: RawInput,
    file_format: outputs.Output,
    write_stdout: Callable[[bytes], None],
) -> OcrOutcome:
    """Send the input to the server, rebuild its pages from their raw output, write them here."""
    fields = request_fields(
        # raw: the page results are parsed again from it, exactly as the pipeline parsed them.
        outputs=["raw", *_drawn_outputs(job, file_format)],
        preset=job.preset,
        prompt=job.prompt,
        mode=job.mode,
        model=job.model,
        max_tokens=job.max_tokens,
        pages=job.pages,
    )
    upload = Upload(
        data=raw.data, filename=raw.name or "document", content_type=raw.declared_type, field=raw.field
    )
    async with RemoteServer.from_settings(settings.remote) as server:
        with progress_counter(quiet=job.quiet) as update:
            document = await server.document(upload, fields, on_progress=update)
    prompt = str(document["prompt"])
    outcome = OcrOutcome(
        results=[outputs.page_from_json(page, prompt=prompt) for page in document["pages"]],
        engine_name=f"{document['model']} at {server.url}",
    )
    _report_failures(outcome)
    if len(outcome.failed) == len(outcome.results):
        return outcome
    kind: Literal["image", "pdf"] = "pdf" if document["kind"] == "pdf" else "image"
    render = outputs.RenderContext(
        request_id=str(document["request_id"]),
        model=str(document["model"]),
        prompt=prompt,
        prompt_as_sent=job.prompt,
        mode=str(document["mode"]),
        kind=kind,
    )
    with _LocalPages(raw.data, settings.limits, pages=job.pages, results=outcome.results) as pages:
        context = outputs.FileContext(
            render=render,
            source=job.source,
            crops_link=crops_link(job.crops_dir, job.out),
            page_image=pages.image,
            source_bytes=lambda: raw.data,
            isolate=isolated_pdf_work(settings.limits, pages=len(outcome.results)),
        )
        await asyncio.to_thread(_write_files, job, kind, outcome, file_format, write_stdout, context)
    return outcome


class _LocalPages:
    """The page images of a document a server read, for the files drawn on them here (a layout
    PDF, a searchable PDF of an image): the input is opened here only when one is asked for, and a
    page is scaled to the size the server read it at (its PDF dpi may differ), so the boxes fit."""

    def __init__(
        self, data: bytes, limits: LimitSettings, *, pages: str | None, results: Sequence[PageResult]
    ) -> None:
        self._data = data
        self._limits = limits
        self._pages = pages
        self._sizes = {result.page: result.image_size for result in results}
        self._lock = threading.Lock()
        self._document: Document | None = None

    def image(self, number: int) -> Image.Image:
        """Page ``number`` (1-based) as the server saw it (blocking)."""
        with self._lock:
            if self._document is None:
                self._document = open_document(self._data, limits=self._limits, pages=self._pages)
            document = self._document
        picture = document.page_image(number - 1)
        size = self._sizes.get(number)
        if size is not None and picture.size != size:
            picture = picture.resize(size)
        return picture

    def __enter__(self) -> _LocalPages:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            document, self._document = self._document, None
        if document is not None:
            document.close()


def _write_files(
    job: OcrJob,
    kind: Literal["image", "pdf"],
    outcome: OcrOutcome,
    file_format: outputs.Output,
    write_stdout: Callable[[bytes], None],
    context: outputs.FileContext,
) -> None:
    """The output file (or stdout), the crops and the overlays (blocking)."""
    assert file_format.file is not None
    data = file_format.file(outcome.results, context)
    if job.out is None:
        write_stdout(data)
    else:
        job.out.write_bytes(data)
        outcome.written.append(job.out)
    if job.crops_dir is not None:
        outcome.written.extend(write_crops(outcome.results, job.crops_dir))
    if job.viz is not None and job.viz.suffix.lower() == ".pdf":
        layout = outputs.OUTPUTS["layout-pdf"].file
        assert layout is not None
        job.viz.write_bytes(layout(outcome.results, context))
        outcome.written.append(job.viz)
    elif job.viz is not None:
        outcome.written.extend(write_viz(outcome.results, job.viz, many=kind == "pdf"))


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


def _report_cache(outcome: OcrOutcome, cache: PageCache | None, *, quiet: bool) -> None:
    # Said, so that an instant answer is not mistaken for the engine's speed.
    hits = sum(1 for result in outcome.results if result.cached)
    if hits and cache is not None and not quiet:
        print(
            f"note: {hits} of {len(outcome.results)} page(s) came from the result cache "
            f"({cache.path}; DSOCR_CACHE__ENABLED=false runs every page again)",
            file=sys.stderr,
        )


# ---------------------------------------------------------------- files


def write_crops(results: list[PageResult], directory: Path) -> list[Path]:
    """Write figure crops as ``DIRECTORY/N.png``, N numbered over the document like the links."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for result, offset in zip(results, outputs.markdown.crop_offsets(results), strict=True):
        for index, crop in enumerate(result.drawn.get("crops", ())):
            path = directory / f"{offset + index}.png"
            path.write_bytes(base64.b64decode(crop))
            written.append(path)
    return written


def write_viz(results: list[PageResult], target: Path, *, many: bool) -> list[Path]:
    """Box overlays: one PNG, or ``NAME-pN.png`` per page for a PDF."""
    written: list[Path] = []
    for result in results:
        picture = result.drawn.get("visualization")
        if picture is None:
            continue
        path = target.with_name(f"{target.stem}-p{result.page}{target.suffix}") if many else target
        path.write_bytes(base64.b64decode(picture))
        written.append(path)
    return written
