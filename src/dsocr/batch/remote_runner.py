"""``dsocr batch --server``: the pages run on a dsocr server, everything else here.

The run is the local runner's (:mod:`dsocr.batch.runner`) but for its middle step. The inputs are
scanned and planned here, against the same manifest; then each document with pages to do goes to
the server (:mod:`dsocr.remote`) — a PDF as a job for those pages, an image as one request —, a
few documents at once (``--concurrency``) so that the server's batch stays fed. Each page that
comes back is rebuilt from its raw output (:func:`dsocr.outputs.page_from_json`), then written and
committed by the same :class:`~dsocr.batch.runner.BatchWriter` as soon as it arrives: the same
files, manifest, resume, summary and progress bar as a local run.

A page the server could not do, or a document it refused, is a failed page, as locally; a server
that cannot be reached (for ``DSOCR_REMOTE__RETRY_S``) or that refuses the key ends the run, the
pages finished so far kept.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Collection, Iterator
from typing import Any

from dsocr import outputs
from dsocr.batch.names import display_path
from dsocr.batch.outputs import PageArtifacts, failed_artifacts, page_artifacts
from dsocr.batch.plan import DocumentPlan
from dsocr.batch.runner import BatchJob, BatchSummary, PreparedRun, finish_run, prepare_run
from dsocr.errors import (
    ConfigError,
    DsocrError,
    EngineOverloaded,
    EngineUnavailable,
    ServerBusy,
    StorageFull,
    TooManyJobs,
    Unauthorized,
    UndecodableInput,
)
from dsocr.inputs.sources import read_local_file
from dsocr.progress import progress_bar
from dsocr.remote import RemoteServer, ServerEngine, Upload, page_ranges, request_fields
from dsocr.settings import LimitSettings, Settings

__all__ = ["run_batch_remote"]

# Errors about the server rather than one document: they end the run.
_RUN_ERRORS = (
    Unauthorized,
    EngineUnavailable,
    EngineOverloaded,
    ServerBusy,
    TooManyJobs,
    StorageFull,
    ConfigError,
)
_FIELD = "inputs"


def run_batch_remote(job: BatchJob, settings: Settings) -> BatchSummary:
    """Run ``job`` on the server ``settings.remote`` names; see :func:`dsocr.batch.run_batch`."""
    engine = asyncio.run(_server_engine(settings))
    run = prepare_run(job, settings, runner="remote", server=engine)
    try:
        if run.plan.pages_todo:
            asyncio.run(_ocr_documents(run, job, settings))
        return finish_run(run, job.out_dir)
    finally:
        run.close()


async def _server_engine(settings: Settings) -> ServerEngine:
    async with RemoteServer.from_settings(settings.remote) as server:
        return await server.engine()


async def _ocr_documents(run: PreparedRun, job: BatchJob, settings: Settings) -> None:
    fields = request_fields(
        outputs=["raw", *sorted(run.config.request.outputs)],
        preset=job.preset,
        prompt=job.prompt,
        mode=job.mode,
        model=job.model,
        max_tokens=job.max_tokens,
    )
    documents: Iterator[DocumentPlan] = iter([doc for doc in run.plan.documents if doc.todo])
    workers = min(settings.remote.concurrency, sum(1 for doc in run.plan.documents if doc.todo))
    async with RemoteServer.from_settings(settings.remote) as server:
        with progress_bar(run.plan.pages_todo, quiet=job.quiet) as advance:

            async def worker() -> None:
                # One shared iterator: each document is taken by the first free worker.
                for doc in documents:
                    await _document(server, run, doc, fields, settings.limits, advance)

            tasks = [asyncio.create_task(worker()) for _ in range(workers)]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            finally:
                # On the first error (or Ctrl-C) the other documents stop: their jobs are cancelled.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def _document(
    server: RemoteServer,
    run: PreparedRun,
    doc: DocumentPlan,
    fields: dict[str, str],
    limits: LimitSettings,
    advance: Callable[[], None],
) -> None:
    """Send one document's pages still to do; write each page as it comes back."""
    left = set(doc.todo)
    try:
        data = await asyncio.to_thread(_read, doc, limits)
    except DsocrError as exc:
        await _fail(run, doc, left, exc, advance)
        return
    run.manifest.mark_started(doc.doc_key, doc.todo)
    prompt = run.config.request.prompt

    async def commit(page: dict[str, Any]) -> None:
        number = int(page["page"])
        if number not in left:
            return
        left.discard(number)
        result = outputs.page_from_json(page, prompt=prompt)
        await _commit(run, doc, page_artifacts(result, page=number), advance)

    upload = Upload(data=data, filename=doc.path.name, field=_FIELD)
    try:
        if upload.is_pdf:
            job_id = await server.run_job(
                upload, {**fields, "pages": page_ranges(doc.todo)}, pages=doc.todo, on_page=commit
            )
            await server.delete_job(job_id)
        else:
            for page in (await server.ocr(upload, fields))["pages"]:
                await commit(page)
    except _RUN_ERRORS:
        raise
    except DsocrError as exc:  # this document's: its pages fail, the run goes on
        await _fail(run, doc, left, exc, advance)
        return
    if left:
        await _fail(run, doc, left, DsocrError("the server answered without this page"), advance)


def _read(doc: DocumentPlan, limits: LimitSettings) -> bytes:
    """The document's bytes, as scanned: a file changed since fails instead of mixing versions."""
    data = read_local_file(doc.path, limits=limits, field=_FIELD).data
    if hashlib.sha256(data).hexdigest() != doc.sha256:
        raise UndecodableInput(
            f"{display_path(doc.path)} changed since the run started; run the batch again", field=_FIELD
        )
    return data


async def _commit(
    run: PreparedRun, doc: DocumentPlan, artifacts: PageArtifacts, advance: Callable[[], None]
) -> None:
    # Files off the loop (fsync); the manifest commit on this thread once they are on disk.
    await asyncio.to_thread(run.writer.write_files, doc.doc_key, artifacts)
    if run.writer.commit(doc.doc_key, artifacts):
        await asyncio.to_thread(run.writer.assemble, doc)
    advance()


async def _fail(
    run: PreparedRun,
    doc: DocumentPlan,
    pages: Collection[int],
    error: DsocrError,
    advance: Callable[[], None],
) -> None:
    for page in sorted(pages):
        await _commit(run, doc, failed_artifacts(page, error), advance)
