"""Jobs: OCR requests the pipeline runs in the background, kept on disk until they expire.

A job is the request ``POST /v1/ocr`` takes, run by the same pipeline. Its input is read when it
is submitted (limits, SSRF guard) and stored; the server then answers at once. Worker tasks take
queued jobs from the store (:mod:`dsocr.jobs.store`), owners taking turns, and run each with at
most half the engine's batch in the engine at once (:func:`job_window`), so interactive requests
keep their place in the batch. Each finished page is stored as it comes, so a job whose server was killed is
taken over (lease expired, or its process is gone) and goes on with the pages not done yet.

Cancelling a running job cancels its run, which aborts its pages in the engine. A finished job
sends its completion callback (:mod:`dsocr.jobs.webhooks`), and is deleted ``jobs.ttl_s`` later.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from dsocr import outputs
from dsocr.engine.base import EngineInfo
from dsocr.errors import (
    ConfigError,
    DsocrError,
    EngineOverloaded,
    EngineUnavailable,
    InvalidInput,
    JobNotFinished,
    JobNotFound,
    StorageFull,
    TooManyJobs,
)
from dsocr.inputs import BytesSource, Source
from dsocr.inputs.sources import read_source
from dsocr.jobs import webhooks
from dsocr.jobs.store import JobRecord, JobStatus, JobStore, StoredInput
from dsocr.pipeline import DOCUMENT_WINDOW, Pipeline
from dsocr.request import OcrRequest, build_request
from dsocr.results import PageResult
from dsocr.settings import JobSettings, Settings

__all__ = ["JobManager", "JobParams", "job_json", "job_window", "page_ranges"]

logger = logging.getLogger(__name__)

# How often an idle worker looks for work that another process queued.
_POLL_S = 1.0
# An event stream with nothing new says so this often (an SSE comment), so proxies keep it open.
_HEARTBEAT_S = 15.0
# How often expired jobs are deleted.
_SWEEP_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class JobParams:
    """A job's request fields, as ``/v1/ocr`` takes them (the source aside)."""

    preset: str | None = None
    prompt: str | None = None
    target: str | None = None
    mode: str = "gundam"
    model: str | None = None
    outputs: tuple[str, ...] | None = None
    max_tokens: int | None = None
    pages: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The fields as stored."""
        return {
            "preset": self.preset,
            "prompt": self.prompt,
            "target": self.target,
            "mode": self.mode,
            "model": self.model,
            "outputs": None if self.outputs is None else list(self.outputs),
            "max_tokens": self.max_tokens,
            "pages": self.pages,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobParams:
        """The fields as stored, read back."""
        listed = data.get("outputs")
        return cls(**{**data, "outputs": None if listed is None else tuple(listed)})


def job_json(job: JobRecord) -> dict[str, Any]:
    """A job as the API shows it."""
    total = len(job.page_numbers) if job.page_numbers is not None else None
    return {
        "id": job.id,
        "object": "ocr.job",
        "status": job.status,
        "filename": job.input.filename,
        "pages": job.page_numbers,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "expires_at": job.expires_at,
        "progress": {
            "pages_total": total,
            "pages_done": job.pages_done,
            "pages_failed": job.pages_failed,
        },
        "error": job.error,
        "callback": None if job.callback_url is None else {"url": job.callback_url, "delivery": job.callback},
        "links": {
            "self": f"/v1/jobs/{job.id}",
            "result": f"/v1/jobs/{job.id}/result",
            "events": f"/v1/jobs/{job.id}/events",
        },
    }


def job_window(jobs: JobSettings, engine: EngineInfo) -> int:
    """Pages of one job in the engine at once: ``jobs.window``; else a share of half the engine's
    batch, split between the jobs that may run at once (jobs fill what interactive requests leave
    idle, never the whole batch); else, with no fixed batch, the window of one ``/v1/ocr`` document."""
    if jobs.window is not None:
        return jobs.window
    if engine.batch_size is not None:
        return max(1, engine.batch_size // (2 * jobs.concurrency))
    return DOCUMENT_WINDOW


def page_ranges(pages: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` as the page selection ``"1-3,7"``."""
    spans: list[list[int]] = []
    for page in sorted(pages):
        if spans and page == spans[-1][1] + 1:
            spans[-1][1] = page
        else:
            spans.append([page, page])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class JobManager:
    """The jobs of one server process: submitting, reading, cancelling, and the workers that run them.

    ``pipeline`` gives the pipeline to run jobs through, or raises ``EngineUnavailable`` while the
    engine is not ready (workers wait). Blocking store calls run in worker threads.
    """

    def __init__(self, settings: Settings, pipeline: Callable[[], Pipeline]) -> None:
        self._settings = settings
        self._jobs = settings.jobs
        if self._jobs.webhook_secret is not None:
            try:
                webhooks.webhook_key(self._jobs.webhook_secret.get_secret_value())
            except ValueError as exc:
                raise ConfigError(f"DSOCR_JOBS__WEBHOOK_SECRET: {exc}") from None
        self._pipeline = pipeline
        self.store = JobStore(self._jobs.dir)
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tasks: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._wakeup = asyncio.Event()
        # Woken when a job of this process changes, for its event streams.
        # One event per job that an events stream follows, dropped when its last stream ends.
        self._changed: dict[str, asyncio.Event] = {}
        self._followers: collections.Counter[str] = collections.Counter()
        self._callbacks: set[asyncio.Task[None]] = set()
        # Set when the server is told to stop: event streams end so that it can (clients reconnect).
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the workers, the lease keeper and the sweeper; resend callbacks left unsent."""
        self._loop = asyncio.get_running_loop()
        for index in range(self._jobs.concurrency):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"dsocr-job-worker-{index}"))
        self._tasks.append(asyncio.create_task(self._keep_leases(), name="dsocr-job-leases"))
        self._tasks.append(asyncio.create_task(self._sweep(), name="dsocr-job-sweeper"))
        for job in await asyncio.to_thread(self.store.undelivered):
            self._send_callback(job)

    def stop_streams(self) -> None:
        """End every job event stream now (the server is stopping: a stream that lasts as long
        as its job would hold the shutdown); callable from any thread or a signal handler."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    async def close(self) -> None:
        """Stop the workers; jobs they were running go back to the queue (done pages stay done)."""
        for task in [*self._tasks, *self._callbacks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._callbacks, return_exceptions=True)
        self._tasks.clear()
        await asyncio.to_thread(self.store.close)

    # ------------------------------------------------------------------ the API

    async def submit(
        self, *, owner: str, params: JobParams, source: Source, callback_url: str | None
    ) -> JobRecord:
        """Check the request as ``/v1/ocr`` would, read and store its input, queue it.

        Raises ``InvalidInput`` (the request), ``TooManyJobs`` (429) and ``StorageFull`` (507).
        """
        job_id = uuid.uuid4().hex
        # Built now so that a bad prompt, mode, model, output or page range is refused at once.
        request = self._request(job_id, params, source, scope=owner)
        self._pipeline_or_none(request)
        if callback_url is not None:
            await webhooks.check_callback_url(callback_url, fetch=self._settings.fetch)
        raw = await read_source(source, limits=self._settings.limits, fetch=self._settings.fetch)
        free = (await asyncio.to_thread(shutil.disk_usage, self.store.root)).free
        if free - len(raw.data) < self._jobs.min_free_bytes:
            raise StorageFull(
                f"the disk holding the jobs has {free:,} bytes free; storing this job would pass the "
                f"reserve of {self._jobs.min_free_bytes:,} (DSOCR_JOBS__MIN_FREE_BYTES)",
                field="file" if raw.field == "file" else raw.field,
            )
        created = await asyncio.to_thread(
            self.store.create,
            job_id=job_id,
            owner=owner,
            request=params.as_json(),
            data=raw.data,
            stored=StoredInput(filename=raw.name, content_type=raw.declared_type, field=raw.field),
            callback_url=callback_url,
            max_active=self._jobs.max_queued,
            max_active_per_owner=self._jobs.max_queued_per_key,
            max_disk_bytes=self._jobs.max_disk_bytes,
        )
        if created == "queue":
            raise TooManyJobs(
                f"the server has {self._jobs.max_queued} jobs queued or running (DSOCR_JOBS__MAX_QUEUED); "
                "retry when some have finished",
                retry_after=30,
            )
        if created == "owner":
            raise TooManyJobs(
                f"this API key has {self._jobs.max_queued_per_key} jobs queued or running "
                "(DSOCR_JOBS__MAX_QUEUED_PER_KEY); retry when some have finished",
                retry_after=30,
            )
        if created == "disk":
            raise StorageFull(
                f"stored jobs would pass their quota of {self._jobs.max_disk_bytes:,} bytes "
                "(DSOCR_JOBS__MAX_DISK_BYTES); retry when finished jobs have expired or been deleted",
                field=raw.field,
            )
        assert isinstance(created, JobRecord)
        self._wakeup.set()
        return created

    async def get(self, job_id: str, owner: str) -> JobRecord:
        """The caller's job; ``JobNotFound`` for an unknown id, an expired job or another key's."""
        job = await asyncio.to_thread(self.store.get, job_id, owner)
        if job is None:
            raise JobNotFound(
                f"no job {job_id!r} (it never existed, expired, or belongs to another key)", field="id"
            )
        return job

    async def owned(self, owner: str, limit: int = 100) -> list[JobRecord]:
        """The caller's jobs, newest first."""
        return await asyncio.to_thread(self.store.owned, owner, limit=limit)

    async def cancel(self, job_id: str, owner: str, *, delete_finished: bool) -> JobRecord:
        """Cancel an unfinished job (its pages stop in the engine); a finished one is deleted with
        its result when ``delete_finished``, else left as it is. Returns the job."""
        job = await self.get(job_id, owner)
        if job.finished:
            if delete_finished:
                await asyncio.to_thread(self.store.delete, job_id)
                self._notify(job_id)
            return job
        updated = await asyncio.to_thread(self.store.request_cancel, job_id, ttl_s=self._jobs.ttl_s)
        task = self._running.get(job_id)
        if task is not None:
            self._cancelled.add(job_id)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.wait({task}))
            updated = await asyncio.to_thread(self.store.get, job_id)
        self._notify(job_id)
        if task is None and job.status == "queued" and updated is not None and updated.status == "cancelled":
            # Ended here; a running job's callback is sent by the run that ends it.
            self._send_callback(updated)
        return updated or job

    def request_of(self, job: JobRecord) -> OcrRequest:
        """The job's request (for its render context and outputs); no source attached."""
        return self._request(job.id, JobParams.from_json(job.request), None)

    async def results(self, job: JobRecord) -> list[PageResult]:
        """A succeeded job's page results; ``JobNotFinished`` (409) for any other job."""
        if job.status != "succeeded":
            detail = f": {job.error['message']}" if job.error else ""
            raise JobNotFinished(
                f"job {job.id} is {job.status}{detail}; its result is ready once it has succeeded "
                f"(GET /v1/jobs/{job.id})",
                field="id",
            )
        return await asyncio.to_thread(self._read_results, job)

    async def input_bytes(self, job: JobRecord) -> bytes:
        """The job's input as it was sent (a searchable PDF keeps a PDF's own pages)."""
        return await asyncio.to_thread(self.store.input_path(job.id).read_bytes)

    def _read_results(self, job: JobRecord) -> list[PageResult]:
        prompt = self.request_of(job).prompt
        return [
            outputs.page_from_json(self.store.read_page(job.id, page), prompt=prompt)
            for page in self.store.done_pages(job.id)
        ]

    async def events(self, job_id: str, owner: str) -> AsyncIterator[tuple[str, Any]]:
        """The job's progress as ``(event, data)``: ``job`` when its status or page count changes,
        ``page.done`` per finished page in order (those done before first), then ``done`` or
        ``error``; ``ping`` (nothing new) every ``_HEARTBEAT_S``, so that proxies keep the stream
        open. Ends early, without a last event, when the server stops (``stop_streams``)."""
        job = await self.get(job_id, owner)
        self._followers[job_id] += 1
        try:
            async for item in self._follow(job, owner):
                yield item
        finally:
            self._followers[job_id] -= 1
            if not self._followers[job_id]:
                del self._followers[job_id]
                self._changed.pop(job_id, None)

    async def _follow(self, job: JobRecord, owner: str) -> AsyncIterator[tuple[str, Any]]:
        job_id = job.id
        context = self.request_of(job)
        names = context.outputs
        sent: set[int] = set()
        shown: tuple[str, int | None] | None = None
        quiet_since = time.monotonic()
        while not self._stopping.is_set():
            changed = self._changed.setdefault(job_id, asyncio.Event())
            changed.clear()
            current = await asyncio.to_thread(self.store.get, job_id, owner)
            if current is None:
                yield "error", {"code": "job_not_found", "message": f"job {job_id} was deleted"}
                return
            state = (current.status, None if current.page_numbers is None else len(current.page_numbers))
            if state != shown:
                shown = state
                quiet_since = time.monotonic()
                yield "job", job_json(current)
            pages = [p for p in await asyncio.to_thread(self.store.done_pages, job_id) if p not in sent]
            results = await asyncio.to_thread(self._read_pages, current, pages)
            render = context.render_context(_kind(current))
            for result in results:
                sent.add(result.page)
                quiet_since = time.monotonic()
                yield "page.done", outputs.page_json(result, names, render)
            if current.finished:
                if current.status == "succeeded":
                    all_results = await asyncio.to_thread(self._read_results, current)
                    done = outputs.document_json(all_results, names, render)
                    summary = {k: done[k] for k in ("request_id", "page_count", "failed_pages", "usage")}
                    for key in ("markdown", "text"):
                        if key in done:
                            summary[key] = done[key]
                    yield "done", summary
                else:
                    yield (
                        "error",
                        current.error or {"code": "job_cancelled", "message": f"job {job_id} was cancelled"},
                    )
                return
            if time.monotonic() - quiet_since >= _HEARTBEAT_S:
                quiet_since = time.monotonic()
                yield "ping", None
            waits = {asyncio.ensure_future(changed.wait()), asyncio.ensure_future(self._stopping.wait())}
            try:
                await asyncio.wait(waits, timeout=_POLL_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    def _read_pages(self, job: JobRecord, pages: list[int]) -> list[PageResult]:
        prompt = self.request_of(job).prompt
        return [outputs.page_from_json(self.store.read_page(job.id, page), prompt=prompt) for page in pages]

    # ------------------------------------------------------------------ running jobs

    def _request(
        self,
        job_id: str,
        params: JobParams,
        source: Source | None,
        pages: str | None = None,
        *,
        scope: str | None = None,
    ) -> OcrRequest:
        return build_request(
            self._settings,
            source=source,
            request_id=job_id,
            preset=params.preset,
            prompt=params.prompt,
            target=params.target,
            mode=params.mode,
            model=params.model,
            outputs=params.outputs,
            max_tokens=params.max_tokens,
            pages=pages if pages is not None else params.pages,
            # A job is as long as its document; cancelling it is how it is stopped.
            deadline=False,
            # Pages its owner sent before come from the result cache, as for direct requests.
            cache_scope=scope,
        )

    def _pipeline_or_none(self, request: OcrRequest) -> None:
        """The engine's checks (mode), when it is ready; a job may be queued while it starts."""
        try:
            pipeline = self._pipeline()
        except EngineUnavailable:
            return
        # Not Pipeline.check: a full server queues a job rather than refusing it.
        pipeline.check_mode(request)

    def _notify(self, job_id: str) -> None:
        event = self._changed.get(job_id)
        if event is not None:
            event.set()

    async def _ready_pipeline(self) -> Pipeline:
        while True:
            try:
                return self._pipeline()
            except EngineUnavailable:
                await asyncio.sleep(_POLL_S)

    async def _worker(self) -> None:
        while True:
            await self._ready_pipeline()
            await asyncio.to_thread(self._release_dead_workers)
            job = await asyncio.to_thread(self.store.claim, self._worker_id, self._jobs.lease_s)
            if job is None:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), _POLL_S)
                continue
            task = asyncio.create_task(self._run(job), name=f"dsocr-job-{job.id}")
            self._running[job.id] = task
            try:
                await task
            except asyncio.CancelledError:
                if job.id not in self._cancelled:
                    # This process is stopping: the job goes back to the queue for the next one.
                    await asyncio.shield(asyncio.to_thread(self.store.requeue, job.id))
                    raise
            finally:
                self._running.pop(job.id, None)
                self._cancelled.discard(job.id)
                self._notify(job.id)

    def _release_dead_workers(self) -> None:
        """Running jobs whose process on this host is gone go back to the queue at once (instead
        of after their lease), e.g. when a killed server is started again."""
        host, pid = socket.gethostname(), os.getpid()
        for job_id, worker in self.store.running_workers():
            if worker == self._worker_id:
                continue
            worker_host, _, rest = worker.partition(":")
            worker_pid = int(rest.partition(":")[0] or 0)
            if worker_host == host and (worker_pid == pid or not _alive(worker_pid)):
                self.store.release(job_id, worker)

    async def _run(self, job: JobRecord) -> None:
        """Run the pages of ``job`` not done yet, storing each as it finishes; then end the job."""
        status: JobStatus
        error: dict[str, Any] | None = None
        try:
            status, error = await self._run_pages(job)
        except asyncio.CancelledError:
            if job.id not in self._cancelled:
                raise
            status = "cancelled"
        ended = await asyncio.to_thread(
            self.store.finish, job.id, status, ttl_s=self._jobs.ttl_s, error=error
        )
        self._notify(job.id)
        if ended:
            finished = await asyncio.to_thread(self.store.get, job.id)
            if finished is not None:
                self._send_callback(finished)

    async def _run_pages(self, job: JobRecord) -> tuple[JobStatus, dict[str, Any] | None]:
        done = set(await asyncio.to_thread(self.store.done_pages, job.id))
        pages = None
        if job.page_numbers is not None:
            remaining = [p for p in job.page_numbers if p not in done]
            if not remaining:
                return "succeeded", None
            pages = page_ranges(remaining) if job.kind == "pdf" else None
        data = await asyncio.to_thread(self.store.input_path(job.id).read_bytes)
        stored = job.input
        source = BytesSource(
            data, filename=stored.filename, content_type=stored.content_type, field=stored.field
        )
        request = self._request(job.id, JobParams.from_json(job.request), source, pages, scope=job.owner)
        names = request.outputs | {"raw"}
        while True:
            pipeline = await self._ready_pipeline()
            try:
                run = await pipeline.start(request)
                break
            except EngineOverloaded as exc:
                # The engine is full of other work: a job waits its turn rather than failing.
                await asyncio.sleep(exc.retry_after or _POLL_S)
            except DsocrError as exc:
                return "failed", _error_json(exc)
        async with run:
            if job.page_numbers is None:
                await asyncio.to_thread(self.store.opened, job.id, run.kind, run.page_numbers)
                self._notify(job.id)
            context = run.render_context
            failures: list[DsocrError] = []
            try:
                async with aclosing(run.events()) as events:
                    async for event in events:
                        if not isinstance(event, PageResult):
                            continue
                        if event.error is not None:
                            failures.append(event.error)
                        body = json.dumps(
                            outputs.page_json(event, names, context), ensure_ascii=False
                        ).encode()
                        await asyncio.to_thread(self.store.save_page, job.id, event.page, event.ok, body)
                        self._notify(job.id)
            except DsocrError as exc:  # an image that could not be read: the job's failure
                return "failed", _error_json(exc)
        read = len(run.page_numbers)
        if read and len(failures) == read and all(isinstance(e, InvalidInput) for e in failures) and not done:
            # No page could be read: the input is at fault, as /v1/ocr answers it.
            return "failed", _error_json(failures[0])
        return "succeeded", None

    async def _keep_leases(self) -> None:
        """Renew this process's leases; stop jobs that another process was asked to cancel."""
        while True:
            await asyncio.sleep(self._jobs.lease_s / 3)
            for job_id in await asyncio.to_thread(self.store.renew, self._worker_id, self._jobs.lease_s):
                task = self._running.get(job_id)
                if task is not None and job_id not in self._cancelled:
                    self._cancelled.add(job_id)
                    task.cancel()

    async def _sweep(self) -> None:
        while True:
            for job_id in await asyncio.to_thread(self.store.expired, time.time()):
                await asyncio.to_thread(self.store.delete, job_id)
                self._notify(job_id)
            await asyncio.sleep(min(_SWEEP_S, self._jobs.ttl_s / 2))

    # ------------------------------------------------------------------ callbacks

    def _send_callback(self, job: JobRecord) -> None:
        if job.callback_url is None:
            return
        task = asyncio.create_task(self._deliver(job), name=f"dsocr-job-callback-{job.id}")
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    async def _deliver(self, job: JobRecord) -> None:
        assert job.callback_url is not None
        secret = self._jobs.webhook_secret
        payload = {"type": f"job.{job.status}", "timestamp": _iso(time.time()), "data": job_json(job)}
        result = await webhooks.deliver(
            job.callback_url,
            payload,
            secret=None if secret is None else secret.get_secret_value(),
            message_id=f"{job.id}-{job.status}",
            fetch=self._settings.fetch,
            attempts=self._jobs.webhook_attempts,
            backoff_s=self._jobs.webhook_backoff_s,
        )
        delivery = {
            "delivered": result.delivered,
            "attempts": result.attempts,
            "last_status": result.last_status,
            "error": result.error,
        }
        if not result.delivered:
            logger.warning("job %s: callback to %s failed: %s", job.id, job.callback_url, result.error)
        await asyncio.to_thread(self.store.set_callback, job.id, delivery)
        self._notify(job.id)


def _kind(job: JobRecord) -> Any:
    return job.kind if job.kind in ("image", "pdf") else "image"


def _error_json(error: DsocrError) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "field": error.field}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
