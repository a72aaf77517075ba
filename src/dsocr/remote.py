"""A client for a running dsocr server: what ``dsocr ocr --server`` and ``dsocr batch --server`` use.

The work goes where the GPU is; everything else stays here. An image is one ``POST /v1/ocr``
(multipart upload); a PDF becomes a job (``POST /v1/jobs``) whose pages come back as they finish,
through ``GET /v1/jobs/{id}/events`` (server-sent events). The pages are asked for with the
``raw`` output, so :func:`dsocr.outputs.page_from_json` rebuilds the same page results the local
pipeline makes, and the same file writers turn them into the same files.

A server that goes away (restarted, a proxy's 502, 429/503 with ``Retry-After``) is retried with
backoff for ``retry_s`` seconds, then the last error is raised. A job outlives its server (jobs are
durable): the client reconnects to its events and carries on; a job the new server does not know
(404) is submitted again for the pages not received yet. A stream that keeps ending without its
last event (a proxy that cuts long responses) gives way to polling ``GET /v1/jobs/{id}``.

Errors the server answers (its JSON envelope) become the :class:`~dsocr.errors.DsocrError` of
their ``code``, so front ends treat them as their own (the CLI's exit codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from dsocr import __version__
from dsocr.errors import (
    DsocrError,
    EngineError,
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
    JobNotFound,
    Unauthorized,
    error_class,
)
from dsocr.inputs.formats import sniff_format
from dsocr.jobs.webhooks import retry_delay
from dsocr.settings import RemoteSettings

__all__ = ["RemoteServer", "ServerEngine", "Upload", "page_ranges", "request_fields"]

# Statuses a busy or restarting server (or the proxy in front of it) answers: retried.
_RETRIED_STATUSES = frozenset({429, 502, 503})
_CONNECT_TIMEOUT_S = 10.0
# A job's event stream with nothing on it this long is opened again: a server host that vanished
# without closing the connection is noticed. Each connection replays the pages already done.
_EVENTS_IDLE_S = 120.0
# Event streams in a row that end without the job's last event before polling takes over.
_STREAM_ENDS_BEFORE_POLLING = 3
_BACKOFF_S = 0.5
_MAX_DELAY_S = 30.0
_CANCEL_TIMEOUT_S = 5.0
_FIELD = "server"
# The multipart field the server reads the file from.
_UPLOAD_FIELD = "file"
# How the client waits between tries (a seam: tests record the waits instead of waiting).
_sleep = asyncio.sleep


@dataclass(frozen=True, slots=True, kw_only=True)
class Upload:
    """A file to send: its bytes and name (the server echoes the name in its messages)."""

    data: bytes
    filename: str
    content_type: str | None = None
    # What the caller calls this input: errors the server lays at its upload field (``file``)
    # name this instead, so that they read as a local run's (``source``, ``inputs``).
    field: str = "file"

    @property
    def is_pdf(self) -> bool:
        """True for a PDF (run as a job), False for an image (one request)."""
        return sniff_format(self.data) == "PDF"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerEngine:
    """The engine a server runs (``GET /ready``): what its answers depend on."""

    name: str  # vllm, cpu, fake
    model: str  # the served model's public name


def page_ranges(pages: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` as the page selection ``"1-3,7"``."""
    spans: list[list[int]] = []
    for page in sorted(set(pages)):
        if spans and page == spans[-1][1] + 1:
            spans[-1][1] = page
        else:
            spans.append([page, page])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def request_fields(
    *,
    outputs: Sequence[str],
    preset: str | None = None,
    prompt: str | None = None,
    mode: str | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    pages: str | None = None,
) -> dict[str, str]:
    """``/v1/ocr``'s (and ``/v1/jobs``') form fields; those not given are left to the server."""
    fields = {
        "preset": preset,
        "prompt": prompt,
        "mode": mode,
        "model": model,
        "max_tokens": None if max_tokens is None else str(max_tokens),
        "pages": pages,
        "outputs": ",".join(dict.fromkeys(outputs)),
    }
    return {name: value for name, value in fields.items() if value is not None}


PageCallback = Callable[[dict[str, Any]], Awaitable[None]]
# (pages finished, pages in the job or None while the server has not opened the document yet)
ProgressCallback = Callable[[int, int | None], None]


class _JobGone(Exception):
    """The server does not know the job (any more): a new server with other storage, or expired."""


class _NoSuchRoute(InvalidInput):
    """The server has no such route (``/v1/jobs`` on a server with jobs turned off)."""


@dataclass(slots=True)
class _Job:
    """A job being followed: its id, and whether it reached an end the server reported."""

    id: str
    ended: bool = False
    total: int | None = None
    seen: set[int] = field(default_factory=set)


class _Outage:
    """Retries while a server is unreachable or busy; past ``retry_s`` the last error is raised."""

    def __init__(self, retry_s: float) -> None:
        self._retry_s = retry_s
        self._since: float | None = None
        self._tries = 0

    def clear(self) -> None:
        """The server answered: the next outage starts a new count."""
        self._since = None
        self._tries = 0

    async def wait(self, error: DsocrError, retry_after: str | None = None) -> None:
        """Sleep before the next try, or raise ``error`` when the server has been away too long."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
        remaining = self._retry_s - (now - self._since)
        if remaining <= 0:
            raise error
        delay = retry_delay(self._tries, backoff_s=_BACKOFF_S, retry_after=retry_after, cap=_MAX_DELAY_S)
        self._tries += 1
        await _sleep(min(delay, remaining))


class RemoteServer:
    """An async client for one dsocr server (``url``, the server's root).

    ``api_key`` goes as ``Authorization: Bearer``. ``timeout_s`` bounds the wait for one answer,
    ``retry_s`` how long an unreachable or busy server is retried. Use as ``async with``.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 900.0,
        retry_s: float = 300.0,
        poll_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._poll_s = poll_s
        headers = {"User-Agent": f"dsocr/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=_CONNECT_TIMEOUT_S),
            transport=transport,
        )

    @classmethod
    def from_settings(cls, remote: RemoteSettings) -> RemoteServer:
        """The server ``DSOCR_REMOTE__*`` (or ``--server`` / ``--api-key``) names."""
        if remote.url is None:
            raise InvalidInput("no server given (--server or DSOCR_REMOTE__URL)", field=_FIELD)
        key = remote.api_key.get_secret_value() if remote.api_key is not None else None
        return cls(remote.url, api_key=key, timeout_s=remote.timeout_s, retry_s=remote.retry_s)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def __aenter__(self) -> RemoteServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ the calls

    async def engine(self) -> ServerEngine:
        """The server's engine, once it is ready (``GET /ready``; a loading engine is waited for
        up to ``retry_s``)."""
        response = await self._send("GET", "/ready", ready=True)
        engine = response.json().get("engine") or {}
        return ServerEngine(
            name=str(engine.get("name") or engine.get("kind")), model=str(engine.get("model"))
        )

    async def ocr(self, upload: Upload, fields: Mapping[str, str]) -> dict[str, Any]:
        """``POST /v1/ocr`` with the file: the document's JSON (a failed image raises its error)."""
        with _naming(upload):
            response = await self._send("POST", "/v1/ocr", data=dict(fields), files=_files(upload))
        body: dict[str, Any] = response.json()
        for page in body["pages"]:
            _name_page_error(page, upload)
        return body

    async def document(
        self,
        upload: Upload,
        fields: Mapping[str, str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """The document's JSON, as ``/v1/ocr`` answers it: an image in one request, a PDF as a job
        (``on_progress`` hears of its pages as they finish). The job is deleted once read."""
        if not upload.is_pdf:
            return await self.ocr(upload, fields)

        async def ignore(page: dict[str, Any]) -> None:
            return None

        job_id = await self._run_job(upload, fields, on_page=ignore, on_progress=on_progress)
        if isinstance(job_id, dict):
            return job_id  # the server has no jobs: this is its answer to /v1/ocr
        try:
            response = await self._send("GET", f"/v1/jobs/{job_id}/result")
            body: dict[str, Any] = response.json()
            for page in body["pages"]:
                _name_page_error(page, upload)
            return body
        finally:
            await self.delete_job(job_id)

    async def run_job(
        self,
        upload: Upload,
        fields: Mapping[str, str],
        *,
        on_page: PageCallback,
        pages: Sequence[int] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> str | None:
        """Run ``upload`` as a job; ``on_page`` gets each finished page's JSON once, in the order
        they finish. Returns the job's id once it succeeded; raises the job's error if it failed.
        A server with jobs turned off gets the document in one ``/v1/ocr`` request (returns None).

        ``pages`` (the PDF pages ``fields`` select, when the caller knows them) lets a job the
        server lost be submitted again for the pages not received yet; without it, the whole
        selection is. Leaving early (an error, a cancelled task, Ctrl-C) cancels the job.
        """
        job_id = await self._run_job(upload, fields, on_page=on_page, pages=pages, on_progress=on_progress)
        return job_id if isinstance(job_id, str) else None

    async def _run_job(
        self,
        upload: Upload,
        fields: Mapping[str, str],
        *,
        on_page: PageCallback,
        pages: Sequence[int] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> str | dict[str, Any]:
        """``run_job``; a server without jobs answers ``/v1/ocr``, whose JSON is returned."""
        with _naming(upload):
            try:
                job = _Job(await self._submit(upload, fields))
            except _NoSuchRoute:
                # A server with jobs turned off: the document in one request instead.
                return await self._without_job(upload, fields, on_page, on_progress)

        async def deliver(page: dict[str, Any]) -> None:
            number = int(page["page"])
            if number in job.seen:
                return  # a reconnected stream replays the pages it sent before
            job.seen.add(number)
            _name_page_error(page, upload)
            await on_page(page)
            if on_progress is not None:
                if job.total is None:
                    job.total = await self._total(job.id)
                on_progress(len(job.seen), job.total)

        try:
            with _naming(upload):
                while True:
                    try:
                        await self._follow(job, deliver, on_progress)
                        return job.id
                    except _JobGone:
                        todo = None if pages is None else [p for p in pages if p not in job.seen]
                        if todo == []:
                            job.ended = True
                            return job.id
                        again = dict(fields)
                        if todo is not None:
                            again["pages"] = page_ranges(todo)
                        job.id = await self._submit(upload, again)
                        job.total = None
        finally:
            if not job.ended:
                await self._cancel_quietly(job.id)

    async def delete_job(self, job_id: str | None) -> None:
        """Delete a finished job (or cancel an unfinished one); errors are ignored."""
        if job_id is not None:
            await self._cancel_quietly(job_id)

    async def _without_job(
        self,
        upload: Upload,
        fields: Mapping[str, str],
        on_page: PageCallback,
        on_progress: ProgressCallback | None,
    ) -> dict[str, Any]:
        document = await self.ocr(upload, fields)
        pages = document["pages"]
        for done, page in enumerate(pages, start=1):
            await on_page(page)
            if on_progress is not None:
                on_progress(done, len(pages))
        return document

    # ------------------------------------------------------------------ jobs

    async def _submit(self, upload: Upload, fields: Mapping[str, str]) -> str:
        response = await self._send("POST", "/v1/jobs", data=dict(fields), files=_files(upload))
        return str(response.json()["id"])

    async def _total(self, job_id: str) -> int | None:
        try:
            response = await self._send("GET", f"/v1/jobs/{job_id}")
        except DsocrError:
            return None
        total = response.json().get("progress", {}).get("pages_total")
        return int(total) if total is not None else None

    async def _follow(self, job: _Job, deliver: PageCallback, on_progress: ProgressCallback | None) -> None:
        """Deliver the job's pages from its event stream until it ends; reconnects as needed."""
        outage = _Outage(self._retry_s)
        empty_ends = 0
        timeout = httpx.Timeout(_EVENTS_IDLE_S, connect=_CONNECT_TIMEOUT_S)
        while True:
            before = len(job.seen)
            try:
                async with self._client.stream(
                    "GET",
                    f"/v1/jobs/{job.id}/events",
                    headers={"Accept": "text/event-stream"},
                    timeout=timeout,
                ) as response:
                    status = response.status_code
                    if status != 200 or not _is_event_stream(response):
                        await response.aread()
                        error = self._error(response)
                        if isinstance(error, JobNotFound):
                            raise _JobGone
                        if status in _RETRIED_STATUSES:
                            await outage.wait(error, response.headers.get("retry-after"))
                            continue
                        if isinstance(error, Unauthorized):
                            raise error
                        # Something in between that does not pass event streams on.
                        await self._poll(job, deliver, on_progress)
                        return
                    outage.clear()
                    async for name, data in _events(response.aiter_lines()):
                        if name == "page.done":
                            await deliver(json.loads(data))
                        elif name == "done":
                            job.ended = True
                            return
                        elif name == "error":
                            payload = json.loads(data)  # the error envelope: {"error": {...}}
                            self._job_failed(job, payload.get("error", payload))
            except httpx.ReadTimeout:
                continue  # a quiet stream: open it again
            except httpx.TransportError as exc:
                await outage.wait(self._unreachable(exc))
                continue
            # The stream ended without the job's end: its server stopped, or a proxy cut it.
            empty_ends = 0 if len(job.seen) > before else empty_ends + 1
            if empty_ends >= _STREAM_ENDS_BEFORE_POLLING:
                await self._poll(job, deliver, on_progress)
                return

    async def _poll(self, job: _Job, deliver: PageCallback, on_progress: ProgressCallback | None) -> None:
        """Follow the job by its status alone; its pages come with its result."""
        while True:
            try:
                status = (await self._send("GET", f"/v1/jobs/{job.id}")).json()
                if status["status"] == "succeeded":
                    result = (await self._send("GET", f"/v1/jobs/{job.id}/result")).json()
                    for page in result["pages"]:
                        await deliver(page)
                    job.ended = True
                    return
            except JobNotFound:
                raise _JobGone from None
            if status["status"] in ("failed", "cancelled"):
                self._job_failed(job, status.get("error") or {"code": "job_cancelled"})
            progress = status.get("progress") or {}
            if on_progress is not None and progress.get("pages_total") is not None:
                job.total = int(progress["pages_total"])
                on_progress(int(progress["pages_done"]) + int(progress["pages_failed"]), job.total)
            await asyncio.sleep(self._poll_s)

    def _job_failed(self, job: _Job, error: Mapping[str, Any]) -> None:
        code = str(error.get("code") or "")
        if code == "job_not_found":
            raise _JobGone
        job.ended = True
        if code == "job_cancelled":
            raise DsocrError(f"job {job.id} was cancelled on the server at {self.url}", field=_FIELD)
        raise error_class(code)(str(error.get("message") or "the job failed"), field=error.get("field"))

    async def _cancel_quietly(self, job_id: str) -> None:
        # Shielded: this runs while the caller is being cancelled (Ctrl-C), and must still be sent.
        with contextlib.suppress(Exception):
            await asyncio.shield(self._client.delete(f"/v1/jobs/{job_id}", timeout=_CANCEL_TIMEOUT_S))

    # ------------------------------------------------------------------ requests

    async def _send(self, method: str, path: str, *, ready: bool = False, **kwargs: Any) -> httpx.Response:
        """One request, retried while the server is unreachable or busy; an error answer raises
        its ``DsocrError``. With ``ready``, 503 is ``/ready``'s "not yet" and is waited out."""
        outage = _Outage(self._retry_s)
        while True:
            try:
                response = await self._client.request(method, path, **kwargs)
            except httpx.ReadTimeout as exc:
                if method != "GET":
                    raise EngineTimeout(
                        f"the server at {self.url} did not answer {method} {path} in "
                        f"{self._timeout_s:g} s (DSOCR_REMOTE__TIMEOUT_S)",
                        field=_FIELD,
                    ) from exc
                await outage.wait(self._unreachable(exc))
                continue
            except httpx.TransportError as exc:
                await outage.wait(self._unreachable(exc))
                continue
            if response.is_success:
                return response
            if ready and response.status_code == 503:
                reason = (response.json() if _is_json(response) else {}).get("reason") or "not ready"
                error: DsocrError = EngineUnavailable(
                    f"the server at {self.url} is not ready after {self._retry_s:g} s: {reason} "
                    "(DSOCR_REMOTE__RETRY_S)",
                    field=_FIELD,
                )
                await outage.wait(error, response.headers.get("retry-after"))
                continue
            error = self._error(response)
            if response.status_code in _RETRIED_STATUSES:
                await outage.wait(error, response.headers.get("retry-after"))
                continue
            raise error

    def _unreachable(self, exc: httpx.TransportError) -> EngineUnavailable:
        reason = str(exc) or type(exc).__name__
        return EngineUnavailable(
            f"cannot reach the dsocr server at {self.url} ({reason}); retried for {self._retry_s:g} s "
            "(DSOCR_REMOTE__RETRY_S)",
            field=_FIELD,
        )

    def _error(self, response: httpx.Response) -> DsocrError:
        """The ``DsocrError`` of an error answer: its envelope's ``code``, else by status."""
        status = response.status_code
        detail: Mapping[str, Any] = {}
        if _is_json(response):
            with contextlib.suppress(ValueError):
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get("error"), dict):
                    detail = body["error"]
        code = str(detail.get("code") or "")
        message = detail.get("message")
        if not isinstance(message, str) or not message:
            text = response.text.strip().replace("\n", " ")[:200]
            message = f"the server at {self.url} answered HTTP {status}" + (f": {text}" if text else "")
        cls = error_class(code) if code else DsocrError
        if status == 404 and code == "not_found":
            cls = _NoSuchRoute
        elif cls is DsocrError and code != "internal_error":
            # Not one of dsocr's codes (validation_error, not_found, a proxy's page): by status.
            cls = Unauthorized if status == 401 else InvalidInput if status < 500 else EngineError
        if cls is Unauthorized:
            message = (
                f"{message} (the server at {self.url}: give its key with --api-key or DSOCR_REMOTE__API_KEY)"
            )
        field_name = detail.get("field")
        retry_after = response.headers.get("retry-after")
        return cls(
            message,
            field=field_name if isinstance(field_name, str) else None,
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )


@contextlib.contextmanager
def _naming(upload: Upload) -> Iterator[None]:
    """Errors the server lays at its upload field name the caller's field for the input."""
    try:
        yield
    except DsocrError as exc:
        if exc.field == _UPLOAD_FIELD:
            exc.field = upload.field
        raise


def _name_page_error(page: dict[str, Any], upload: Upload) -> None:
    error = page.get("error")
    if isinstance(error, dict) and error.get("field") == _UPLOAD_FIELD:
        error["field"] = upload.field


def _files(upload: Upload) -> dict[str, tuple[str, bytes, str]]:
    media_type = upload.content_type or ("application/pdf" if upload.is_pdf else "application/octet-stream")
    return {_UPLOAD_FIELD: (upload.filename, upload.data, media_type)}


def _media_type(response: httpx.Response) -> str:
    return str(response.headers.get("content-type", "")).split(";")[0].strip().lower()


def _is_json(response: httpx.Response) -> bool:
    media_type = _media_type(response)
    return media_type == "application/json" or media_type.endswith("+json")


def _is_event_stream(response: httpx.Response) -> bool:
    return _media_type(response) == "text/event-stream"


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as (name, data) (the WHATWG rules: ``data`` lines joined by newlines,
    one leading space dropped, ``:`` comments skipped, an event without data not dispatched)."""
    name, data = "", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield name or "message", "\n".join(data)
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
