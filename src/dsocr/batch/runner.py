"""``dsocr batch`` on one machine: every page of every input through one engine, resumably.

The run: discover files → scan and register them in the manifest (:mod:`dsocr.batch.plan`) →
stream the pages still to do through :meth:`dsocr.pipeline.Pipeline.run_pages` (at most
``max_in_flight`` pages rendered and running at once, across documents, so the engine stays fed
and memory stays bounded) → write each page's files atomically, then commit it to the manifest →
assemble each document once its last page is in → write ``summary.json``.

The Ray runner (:mod:`dsocr.batch.ray_pipeline`) and the server runner
(:mod:`dsocr.batch.remote_runner`) share everything here but the middle step.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from dsocr import errors, outputs
from dsocr.batch.manifest import Manifest
from dsocr.batch.names import display_path, printable
from dsocr.batch.outputs import (
    PageArtifacts,
    assemble_document,
    document_file_path,
    page_artifacts,
    write_document_files,
    write_page,
    write_text_atomic,
)
from dsocr.batch.plan import DocumentPlan, PageSource, RunPlan, discover_inputs, plan_run
from dsocr.cache import open_cache
from dsocr.cli_exit import EXIT_INTERNAL, EXIT_PARTIAL, exit_code_of_code
from dsocr.engine.factory import create_engine, select_engine
from dsocr.fingerprint import fingerprint_hash, request_fingerprint
from dsocr.inputs.render_worker import isolated_pdf_work
from dsocr.pipeline import PageInput, Pipeline
from dsocr.progress import progress_bar
from dsocr.request import OcrRequest, build_request
from dsocr.settings import LimitSettings, Settings

if TYPE_CHECKING:
    from dsocr.remote import ServerEngine

__all__ = [
    "EXIT_PARTIAL",
    "BatchJob",
    "BatchSummary",
    "BatchWriter",
    "DuplicateFile",
    "FailedFile",
    "PreparedRun",
    "RunConfig",
    "finish_run",
    "prepare_run",
    "resolve_config",
    "run_batch",
]

MANIFEST_NAME = "manifest.sqlite"
LOCK_NAME = ".dsocr-batch.lock"
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchJob:
    """What ``dsocr batch`` was asked to do."""

    inputs: tuple[str, ...]
    out_dir: Path
    mode: str = "gundam"
    preset: str | None = None
    prompt: str | None = None
    dpi: int | None = None  # PDF rendering; default DSOCR_LIMITS__PDF_DPI
    max_tokens: int | None = None
    crops: bool = True
    overlays: bool = False
    max_in_flight: int = 8
    manifest_path: Path | None = None  # default OUT/manifest.sqlite
    quiet: bool = False
    # Each document also written in these file formats (md, txt, json, pdf, hocr, alto, html).
    formats: tuple[str, ...] = ()
    # With a server: the served model to use (None: its default). Locally the settings say.
    model: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """A job resolved against the settings: exactly what the pages are run with."""

    # The request every page runs with (its pages come from the run's plan, not from a source).
    request: OcrRequest
    dpi: int
    engine_kind: str
    # The output-affecting settings (dsocr.fingerprint's, plus what batch writes) and their hash
    # (the manifest key's second half).
    fingerprint: dict[str, Any]
    settings_key: str
    # The document files besides NAME.md; not in the fingerprint: they are made from the page files.
    formats: tuple[outputs.Output, ...] = ()


def document_formats(names: Sequence[str]) -> tuple[outputs.Output, ...]:
    """The formats ``--formats`` names, each once; markdown is NAME.md, always written."""
    chosen: list[outputs.Output] = []
    for name in names:
        output = outputs.file_output(name, field="formats")
        if output.name != "markdown" and output not in chosen:
            chosen.append(output)
    return tuple(chosen)


def resolve_config(job: BatchJob, settings: Settings, *, server: ServerEngine | None = None) -> RunConfig:
    """Validate the job's options (typed errors naming the option) and fix the engine choice
    (``server``: the engine of the server the pages are sent to)."""
    if job.max_in_flight < 1:
        raise errors.InvalidInput("max_in_flight must be at least 1", field="max_in_flight")
    dpi = job.dpi if job.dpi is not None else settings.limits.pdf_dpi
    if not 36 <= dpi <= 600:
        raise errors.InvalidInput(f"dpi must be between 36 and 600; got {dpi}", field="dpi")
    drawn = [name for name, wanted in (("crops", job.crops), ("visualization", job.overlays)) if wanted]
    if server is not None and (model := job.model or server.model):
        # The mode and preset are checked against the server's model, not this machine's default.
        engine = settings.engine.model_copy(update={"model": model, "extra_models": []})
        settings = settings.model_copy(update={"engine": engine})
    request = build_request(
        settings,
        source=None,
        preset=job.preset,
        prompt=job.prompt,
        mode=job.mode,
        outputs=drawn,
        # A server checks the token limit against its own settings.
        max_tokens=job.max_tokens if server is None else None,
        deadline=False,
        # Used only where the run has a result cache (the local runner, DSOCR_CACHE__ENABLED=true).
        cache_scope="",
    )
    prompt = request.prompt
    outputs = request.outputs
    if server is not None:
        # The server's DPI and sampling settings are its own, unknown here: a run on a server is
        # keyed by the server's engine and model and the request, and resumes runs on a server.
        remote: dict[str, Any] = {
            "runner": "remote",
            "engine": server.name,
            "model": None if server.name == "fake" else job.model or server.model,
            "prompt": prompt,
            "mode": job.mode,
            "max_tokens": job.max_tokens,
            "outputs": sorted(outputs),
            "layout": 1,
        }
        return RunConfig(
            request=request,
            dpi=dpi,
            engine_kind=server.name,
            fingerprint=remote,
            settings_key=fingerprint_hash(remote),
            formats=document_formats(job.formats),
        )
    kind = select_engine(settings.engine).kind
    fingerprint: dict[str, Any] = {
        **request_fingerprint(request, engine=kind, settings=settings.engine),
        "dpi": dpi,
        "outputs": sorted(request.outputs),
        "layout": 1,  # bump when the output file layout changes
    }
    return RunConfig(
        request=request,
        dpi=dpi,
        engine_kind=kind,
        fingerprint=fingerprint,
        settings_key=fingerprint_hash(fingerprint),
        formats=document_formats(job.formats),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedFile:
    """An input that failed in this run: the whole file (``page`` None) or one of its pages."""

    path: str
    output: str  # its folder under OUT
    page: int | None
    reason: str  # the error code, e.g. undecodable_input
    message: str

    def describe(self) -> str:
        """One terminal-safe line: path, page, reason and message."""
        where = "" if self.page is None else f" page {self.page}"
        return printable(f"{self.path}{where}: {self.reason}: {self.message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DuplicateFile:
    """An input with the same bytes as an earlier one: not processed again, it shares that output."""

    path: str
    same_as: str
    output: str  # the shared folder under OUT


@dataclass(slots=True, kw_only=True)
class BatchSummary:
    """How a run went. ``failures`` counts failed pages and unopenable documents by error code;
    ``failed_files`` names them, ``duplicate_files`` names the inputs that share an output."""

    runner: Literal["local", "ray", "remote"]
    engine: str
    documents: int = 0
    documents_failed: int = 0
    duplicates: int = 0
    pages_total: int = 0
    pages_done: int = 0  # finished by this run
    pages_cached: int = 0  # of those, answered by the result cache (DSOCR_CACHE__ENABLED=true)
    pages_skipped: int = 0  # finished by an earlier run
    pages_failed: int = 0  # failed in this run (retried on the next)
    failures: dict[str, int] = field(default_factory=dict)
    failed_files: list[FailedFile] = field(default_factory=list)
    duplicate_files: list[DuplicateFile] = field(default_factory=list)
    scan_s: float = 0.0
    elapsed_s: float = 0.0
    first_failure_exit: int = 0

    @property
    def pages_per_s(self) -> float:
        """Pages this run processed (done or failed) per second of the whole run."""
        processed = self.pages_done + self.pages_failed
        return processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 all done; 4 some failed; the failure's own code (2 input, 3 engine) if nothing is done."""
        if not self.failures:
            return 0
        if self.pages_done + self.pages_skipped > 0:
            return EXIT_PARTIAL
        return self.first_failure_exit or EXIT_INTERNAL

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``summary.json``)."""
        return {
            "runner": self.runner,
            "engine": self.engine,
            "documents": self.documents,
            "documents_failed": self.documents_failed,
            "duplicates": self.duplicates,
            "pages_total": self.pages_total,
            "pages_done": self.pages_done,
            "pages_cached": self.pages_cached,
            "pages_skipped": self.pages_skipped,
            "pages_failed": self.pages_failed,
            "failures": dict(sorted(self.failures.items())),
            "failed_files": [asdict(failed) for failed in self.sorted_failed_files()],
            "duplicate_files": [asdict(duplicate) for duplicate in self.duplicate_files],
            "scan_s": round(self.scan_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "pages_per_s": round(self.pages_per_s, 3),
            "exit_code": self.exit_code,
        }

    def sorted_failed_files(self) -> list[FailedFile]:
        """Failed files by path, then page (whole-file failures first)."""
        return sorted(self.failed_files, key=lambda f: (f.path, f.page or 0))

    def failure_lines(self, *, limit: int, summary_path: Path) -> list[str]:
        """Up to ``limit`` lines naming a failed file each, then how many more are in the summary."""
        lines = [f"failed: {failed.describe()}" for failed in self.sorted_failed_files()]
        return _capped(lines, limit, f"failed, see {summary_path}")

    def duplicate_lines(self, *, limit: int, out_dir: Path, summary_path: Path) -> list[str]:
        """Up to ``limit`` lines naming a duplicate and the output it shares."""
        lines = [
            printable(
                f"duplicate: {duplicate.path} has the same bytes as {duplicate.same_as}; "
                f"both are in {out_dir / duplicate.output}"
            )
            for duplicate in self.duplicate_files
        ]
        return _capped(lines, limit, f"duplicate(s), see {summary_path}")

    def describe(self) -> str:
        """One human line, e.g. for the CLI."""
        failures = ", ".join(f"{code}: {count}" for code, count in sorted(self.failures.items())) or "none"
        cached = f" ({self.pages_cached} from the result cache)" if self.pages_cached else ""
        return (
            f"{self.documents} document(s), {self.pages_total} page(s): {self.pages_done} done{cached}, "
            f"{self.pages_skipped} skipped (already done), {self.pages_failed} failed; "
            f"{self.elapsed_s:.1f} s, {self.pages_per_s:.2f} pages/s; failures: {failures}"
        )


def _capped(lines: list[str], limit: int, more: str) -> list[str]:
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"… and {len(lines) - limit} more {more}"]


class BatchWriter:
    """Writes pages as they come in (any order), commits them, and assembles finished documents.

    Used by both runners, so the local and the Ray path produce the same files and manifest.
    """

    def __init__(
        self,
        *,
        plan: RunPlan,
        manifest: Manifest,
        out_dir: Path,
        summary: BatchSummary,
        durable: bool = True,
        config: RunConfig | None = None,
        limits: LimitSettings | None = None,
    ) -> None:
        self._manifest = manifest
        self._out_dir = out_dir
        self._summary = summary
        self._durable = durable
        self._formats = config.formats if config is not None else ()
        self._prompt = config.request.prompt if config is not None else ""
        self._limits = limits
        self._documents = {doc.doc_key: doc for doc in plan.documents}
        self._remaining = {doc.doc_key: set(doc.todo) for doc in plan.documents if doc.error is None}
        for doc in plan.failed_documents:
            assert doc.error is not None
            self._count_failure(doc, None, doc.error.code, doc.error.message)

    def write(self, doc_key: str, artifacts: PageArtifacts) -> None:
        """Write one page's files, commit it and assemble its document when complete (blocking)."""
        self.write_files(doc_key, artifacts)
        if self.commit(doc_key, artifacts):
            self.assemble(self._documents[doc_key])

    def write_files(self, doc_key: str, artifacts: PageArtifacts) -> None:
        """Write one page's files atomically (blocking; any thread)."""
        write_page(self._out_dir / self._documents[doc_key].out_name, artifacts, durable=self._durable)

    def commit(self, doc_key: str, artifacts: PageArtifacts) -> bool:
        """Mark a written page in the manifest (the manifest's thread); True when its document is complete."""
        error = artifacts.error
        if error is None:
            self._manifest.mark_page(doc_key, artifacts.page, "done")
            self._summary.pages_done += 1
        else:
            self._manifest.mark_page(
                doc_key, artifacts.page, "failed", reason=str(error["type"]), message=str(error["message"])
            )
            self._summary.pages_failed += 1
            self._count_failure(
                self._documents[doc_key], artifacts.page, str(error["type"]), str(error["message"])
            )
        remaining = self._remaining[doc_key]
        remaining.discard(artifacts.page)
        return not remaining

    def assemble(self, doc: DocumentPlan, formats: Sequence[outputs.Output] | None = None) -> None:
        """(Re)write the document's joined markdown and its ``--formats`` files from its page files."""
        doc_dir = self._out_dir / doc.out_name
        assemble_document(doc_dir, doc.out_name, doc.pages, durable=self._durable)
        chosen = self._formats if formats is None else formats
        if chosen:
            isolate = None if self._limits is None else isolated_pdf_work(self._limits, pages=len(doc.pages))
            write_document_files(
                doc_dir,
                doc.out_name,
                doc.pages,
                source=doc.path,
                formats=chosen,
                prompt=self._prompt,
                isolate=isolate,
                durable=self._durable,
            )

    def finish(self) -> None:
        """Assemble documents this run had nothing to do for, if their markdown or a file of
        ``--formats`` is missing (a later run asked for more formats)."""
        for doc in self._documents.values():
            if doc.error is not None or doc.todo:
                continue
            doc_dir = self._out_dir / doc.out_name
            missing = [
                output
                for output in self._formats
                if not document_file_path(doc_dir, doc.out_name, output).exists()
            ]
            if missing or not (doc_dir / f"{doc.out_name}.md").exists():
                self.assemble(doc, missing)

    def _count_failure(self, doc: DocumentPlan, page: int | None, code: str, message: str) -> None:
        self._summary.failures[code] = self._summary.failures.get(code, 0) + 1
        self._summary.failed_files.append(
            FailedFile(
                path=display_path(doc.path), output=doc.out_name, page=page, reason=code, message=message
            )
        )
        if not self._summary.first_failure_exit:
            self._summary.first_failure_exit = exit_code_of_code(code)


@dataclass(slots=True, kw_only=True)
class PreparedRun:
    """Everything before the OCR step: config, open manifest, plan, writer, summary so far."""

    config: RunConfig
    manifest: Manifest
    plan: RunPlan
    writer: BatchWriter
    summary: BatchSummary
    started: float
    lock: IO[bytes]

    def close(self) -> None:
        """Close the manifest and release the output folder."""
        self.manifest.close()
        self.lock.close()


def prepare_run(
    job: BatchJob,
    settings: Settings,
    *,
    runner: Literal["local", "ray", "remote"],
    server: ServerEngine | None = None,
) -> PreparedRun:
    """Resolve the job, find and scan the inputs, open the manifest and plan the pages."""
    started = time.perf_counter()
    config = resolve_config(job, settings, server=server)
    paths = discover_inputs(job.inputs, exclude=job.out_dir)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_out_dir(job.out_dir)
    manifest = Manifest(job.manifest_path or job.out_dir / MANIFEST_NAME)
    try:
        manifest.record_settings(config.settings_key, config.fingerprint)
        plan = plan_run(
            paths,
            manifest=manifest,
            settings_key=config.settings_key,
            out_dir=job.out_dir,
            limits=settings.limits,
            dpi=config.dpi,
        )
        _remove_stale_temporaries(job.out_dir, plan)
    except BaseException:
        manifest.close()
        lock.close()
        raise
    summary = BatchSummary(
        runner=runner,
        engine=config.engine_kind,
        documents=len(plan.documents),
        documents_failed=len(plan.failed_documents),
        duplicates=len(plan.duplicates),
        duplicate_files=_duplicate_files(plan),
        pages_total=plan.pages_total,
        pages_skipped=plan.pages_total - plan.pages_todo,
        scan_s=time.perf_counter() - started,
    )
    writer = BatchWriter(
        plan=plan,
        manifest=manifest,
        out_dir=job.out_dir,
        summary=summary,
        config=config,
        limits=settings.limits,
    )
    return PreparedRun(
        config=config,
        manifest=manifest,
        plan=plan,
        writer=writer,
        summary=summary,
        started=started,
        lock=lock,
    )


def _duplicate_files(plan: RunPlan) -> list[DuplicateFile]:
    output_of = {doc.path: doc.out_name for doc in plan.documents}
    return [
        DuplicateFile(path=display_path(path), same_as=display_path(first), output=output_of[first])
        for path, first in plan.duplicates
    ]


def _lock_out_dir(out_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on OUT for the run: two runs into one folder would redo each other's
    pages. The kernel drops the lock when the process dies, even by kill -9."""
    handle = (out_dir / LOCK_NAME).open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise errors.InvalidInput(
            f"another dsocr batch run is writing to {out_dir}; wait for it or choose another --out",
            field="out",
        ) from None
    return handle


def _remove_stale_temporaries(out_dir: Path, plan: RunPlan) -> None:
    """Delete half-written temporary files a killed run left behind (never a finished file)."""
    for doc in plan.documents:
        doc_dir = out_dir / doc.out_name
        for stale in doc_dir.glob("*/.*.tmp"):
            stale.unlink(missing_ok=True)
        for stale in doc_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)


def finish_run(run: PreparedRun, out_dir: Path) -> BatchSummary:
    """Assemble what is left, stamp the time and write ``summary.json``."""
    run.writer.finish()
    run.summary.elapsed_s = time.perf_counter() - run.started
    body = json.dumps(run.summary.to_dict(), indent=2, ensure_ascii=False)
    write_text_atomic(out_dir / SUMMARY_NAME, body + "\n")
    return run.summary


def run_batch(job: BatchJob, settings: Settings) -> BatchSummary:
    """Run ``job`` on this machine with the engine ``settings.engine`` selects.

    Raises ``DsocrError`` only when nothing can run (bad option, no input, engine cannot start);
    page and document failures are in the summary. Interrupting it loses no finished page.
    """
    run = prepare_run(job, settings, runner="local")
    try:
        if run.plan.pages_todo:
            asyncio.run(_ocr_pages(run, job, settings))
        return finish_run(run, job.out_dir)
    finally:
        run.close()


async def _ocr_pages(run: PreparedRun, job: BatchJob, settings: Settings) -> None:
    config = run.config
    # Sequence number → (document, page): ocr_document numbers pages across the whole run.
    slots: dict[int, tuple[DocumentPlan, int, PageSource]] = {}
    sources: list[PageSource] = []

    def page_inputs() -> Iterator[PageInput]:
        sequence = 0
        for doc in run.plan.documents:
            if not doc.todo:
                continue
            source = PageSource(doc.path, sha256=doc.sha256, limits=settings.limits, dpi=config.dpi)
            sources.append(source)
            # Runs on the event loop thread, like every manifest write.
            run.manifest.mark_started(doc.doc_key, doc.todo)
            for page in doc.todo:
                sequence += 1
                slots[sequence] = (doc, page, source)
                yield PageInput(number=sequence, load=functools.partial(source.render, page))

    engine = create_engine(settings.engine)
    # Off unless DSOCR_CACHE__ENABLED=true: the manifest already skips finished pages.
    cache = await asyncio.to_thread(open_cache, settings, default=False)
    try:
        await engine.start()
        pipeline = Pipeline(engine, limits=settings.limits, fetch=settings.fetch, cache=cache)
        with progress_bar(run.plan.pages_todo, quiet=job.quiet) as advance:
            await _consume(pipeline, page_inputs(), slots, run, job, config, advance)
    finally:
        await engine.close()
        if cache is not None:
            await asyncio.to_thread(cache.close)
        for source in sources:
            await asyncio.to_thread(source.close)


async def _consume(
    pipeline: Pipeline,
    pages: Iterator[PageInput],
    slots: dict[int, tuple[DocumentPlan, int, PageSource]],
    run: PreparedRun,
    job: BatchJob,
    config: RunConfig,
    advance: Callable[[], None],
) -> None:
    results = pipeline.run_pages(config.request, pages, window=job.max_in_flight)
    async with contextlib.aclosing(results):
        async for result in results:
            doc, page, source = slots.pop(result.page)
            if result.cached:
                run.summary.pages_cached += 1
            artifacts = page_artifacts(result, page=page)
            # File writes (fsync) off the loop, so pages in flight keep running meanwhile; the
            # manifest commit follows on this thread, only once the files are on disk.
            await asyncio.to_thread(run.writer.write_files, doc.doc_key, artifacts)
            if run.writer.commit(doc.doc_key, artifacts):
                await asyncio.to_thread(source.close)
                await asyncio.to_thread(run.writer.assemble, doc)
            advance()
