"""The OCR pipeline: the only way from a request to the engine and back.

Every front end builds an :class:`~dsocr.request.OcrRequest` and hands it to a :class:`Pipeline`,
which does, once for all of them:

* checks against the engine (the resolution mode) and admission (page slots and pixels: the
  server's :class:`~dsocr.admission.AdmissionQueue`; none for local jobs) before any pixel is
  decoded;
* the pages, submitted concurrently with at most a window of them loaded and running at once, so
  the engine's continuous batching stays fed without holding a 500-page PDF in memory; results
  come back in page order as events (:class:`PageStarted`, :class:`TextDelta` or
  :class:`BlockFound` while the engine generates, then the :class:`PageResult`), and a page that
  fails yields a result whose ``error`` is set, never a dropped page;
* the deadline, abort (cancelling the consumer, because its client left or the deadline passed,
  aborts every engine request of the run, by id), per-page metrics (the ``observer``) and usage;
* the result cache (:mod:`dsocr.cache`), when given one and the request has a ``cache_scope``:
  each loaded page is looked up by its pixels, and a hit takes the place of the engine call and
  its retries; the stored output is then parsed and drawn exactly as a fresh one.

Blocking work (page rasterising, parsing, drawing, PNG + base64 encoding) runs in worker threads
so the event loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeAlias

from PIL import Image

from dsocr import grounding, outputs
from dsocr.admission import Ticket, page_cost
from dsocr.cache import PageCache, RequestCache
from dsocr.engine.base import Engine, EngineOutput, EngineRequest
from dsocr.errors import DsocrError, EngineError, EngineTimeout, InvalidInput
from dsocr.inputs import Document, load_document
from dsocr.request import OcrRequest, RetryPolicy
from dsocr.results import (
    BlockFound,
    PageEvent,
    PageResult,
    PageStarted,
    PageTimings,
    TextDelta,
    Usage,
)
from dsocr.settings import FetchSettings, LimitSettings
from dsocr.types import Block, ParsedOutput

__all__ = [
    "DOCUMENT_WINDOW",
    "Admission",
    "BlockFound",
    "PageEvent",
    "PageInput",
    "PageObserver",
    "PageResult",
    "PageStarted",
    "PageTimings",
    "Pipeline",
    "Run",
    "TextDelta",
    "Usage",
    "document_pages",
]

logger = logging.getLogger(__name__)

# Pages of one document kept loaded and running at once: enough to keep a batching engine busy
# alongside other requests, few enough that a 500-page PDF is never all in memory.
DOCUMENT_WINDOW = 16

# A page whose output is at least this repetitive (share of text covered by repeated n-grams)
# is flagged, so clients can retry it with another mode instead of trusting a loop.
REPETITION_FLAG_THRESHOLD = 0.5

# Where a new grounded block starts: blocks before it are complete and can be streamed.
_REF_OPEN = re.compile(re.escape("<|ref|>"))

BlockCallback: TypeAlias = Callable[[Block], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class PageInput:
    """One page, loaded only when its turn comes.

    ``load`` is blocking (it decodes or rasterises). ``render``, when given, is its awaitable
    form, which the pipeline prefers: cancelling it (client gone, deadline) stops the render
    (a PDF page's render worker is killed); otherwise ``load`` runs in a worker thread. Either may
    raise a ``DsocrError`` (over the pixel limit, over the render budget), which becomes that
    page's error.
    """

    number: int
    load: Callable[[], Image.Image]
    render: Callable[[], Awaitable[Image.Image]] | None = None


def document_pages(document: Document) -> list[PageInput]:
    """The selected pages of an opened document, each rendered only when the pipeline reaches it."""
    return [
        PageInput(
            number=index + 1,
            load=functools.partial(document.page_image, index),
            render=functools.partial(document.render, index),
        )
        for index in document.page_indices
    ]


class Admission(Protocol):
    """Room for a request's pages (the server's :class:`~dsocr.admission.AdmissionQueue`)."""

    def check_room(self) -> None:
        """Raise ``EngineOverloaded`` when no page slot is free (before the input is read)."""

    def try_admit(self, page_costs: Sequence[int], *, window: int = 1) -> Ticket | None:
        """A ticket at once, or ``None`` when the request would have to wait."""

    async def admit(self, page_costs: Sequence[int], *, window: int = 1, wait_s: float = 0.0) -> Ticket:
        """A ticket, waiting at most ``wait_s`` for room; else ``EngineOverloaded``."""


class PageObserver(Protocol):
    """Told every page's outcome (the server's metrics)."""

    def observe_page(self, result: PageResult) -> None:
        """Record one page."""


class Pipeline:
    """The way from requests to one engine: see the module docstring.

    ``admission`` (with ``admission_wait_s``) bounds what runs at once; ``observer`` sees every
    page; ``window`` is the most pages of one request loaded and running at once; ``cache``
    answers pages seen before, for requests that name a ``cache_scope``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        limits: LimitSettings,
        fetch: FetchSettings,
        admission: Admission | None = None,
        admission_wait_s: float = 0.0,
        observer: PageObserver | None = None,
        window: int = DOCUMENT_WINDOW,
        cache: PageCache | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.engine = engine
        self._limits = limits
        self._fetch = fetch
        self._admission = admission
        self._admission_wait_s = admission_wait_s
        self._observer = observer
        self._window = window
        self.cache = cache

    def check_mode(self, request: OcrRequest) -> None:
        """``InvalidInput`` naming ``mode`` when the engine does not serve the request's mode."""
        modes = self.engine.info.modes
        if request.mode not in modes:
            raise InvalidInput(
                f"mode {request.mode!r} is not served by the {self.engine.info.name} engine; "
                f"choose from {', '.join(modes)}",
                field="mode",
            )

    def check(self, request: OcrRequest) -> None:
        """What the engine and admission can refuse before the input is read (cheap, synchronous)."""
        self.check_mode(request)
        if self._admission is not None:
            self._admission.check_room()

    async def start(self, request: OcrRequest) -> Run:
        """Check the request, read and open its input (no pixel decoded), admit it; return the run.

        Raises ``DsocrError`` for what the whole request fails on. Cancelling this (client gone)
        gives back whatever it held. The caller must ``aclose`` the run (or use ``async with``).
        """
        if request.source is None:
            raise ValueError("a request without a source runs through run_pages")
        self.check(request)
        document = await load_document(
            request.source,
            limits=self._limits,
            fetch=self._fetch,
            pages=request.pages,
            dpi=request.dpi,
            pdf_advice=_PDF_ADVICE if request.single_image else None,
        )
        try:
            if request.pages is not None and document.kind != "pdf":
                raise InvalidInput("a page range applies to PDFs only; this input is an image", field="pages")
            ticket = await self._admit([page_cost(size, request.outputs) for size in document.page_sizes])
        except BaseException:
            await document.aclose()
            raise
        return Run(self, request, document, ticket)

    async def _admit(self, page_costs: list[int]) -> Ticket | None:
        if self._admission is None:
            return None
        ticket = self._admission.try_admit(page_costs, window=self._window)
        if ticket is not None:
            return ticket
        return await self._admission.admit(page_costs, window=self._window, wait_s=self._admission_wait_s)

    def run_pages(
        self, request: OcrRequest, pages: Iterable[PageInput], *, window: int | None = None
    ) -> AsyncGenerator[PageResult, None]:
        """Run pages the caller loads itself (batch: many documents, one stream), without
        admission; yields a :class:`PageResult` per page, in order. Close it to stop early."""
        return _results_only(self.page_events(request, pages, window=window))

    def page_events(
        self, request: OcrRequest, pages: Iterable[PageInput], *, window: int | None = None
    ) -> AsyncGenerator[PageEvent, None]:
        """Like :meth:`run_pages`, with every event (see :class:`Run`'s ``events``)."""
        self.check(request)
        return self._events(request, pages, window or self._window)

    async def _events(
        self, request: OcrRequest, pages: Iterable[PageInput], window: int
    ) -> AsyncGenerator[PageEvent, None]:
        """The events of ``pages``, in page order; each page's result is observed as it is yielded."""
        cache = None if self.cache is None else self.cache.for_request(request, engine=self.engine.info.name)
        async with aclosing(_page_events(self.engine, pages, request, window, cache)) as events:
            async for event in events:
                if isinstance(event, PageResult) and self._observer is not None:
                    self._observer.observe_page(event)
                yield event


class Run:
    """One admitted request: its events, once, then ``aclose`` (idempotent) gives back what it holds.

    ``kind`` is the input's (``image`` or ``pdf``). For an image, the page's failure is the
    request's: ``events`` raises it instead of yielding a failed result.
    """

    def __init__(
        self, pipeline: Pipeline, request: OcrRequest, document: Document, ticket: Ticket | None
    ) -> None:
        self.request = request
        self.kind = document.kind
        self._pipeline = pipeline
        self._document = document
        self._ticket = ticket
        self._closed = False
        self._events: AsyncGenerator[PageEvent, None] | None = None

    @property
    def render_context(self) -> outputs.RenderContext:
        """What output formats echo of this run."""
        return self.request.render_context(self.kind)

    @property
    def page_numbers(self) -> list[int]:
        """The 1-based numbers of the pages the run reads, in order."""
        return [index + 1 for index in self._document.page_indices]

    def page_image(self, number: int) -> Image.Image:
        """Page ``number`` (1-based) decoded again, while the run is open (blocking: a layout PDF's)."""
        return self._document.page_image(number - 1)

    def events(self) -> AsyncGenerator[PageEvent, None]:
        """The run's events in page order (see the module docstring); raises ``EngineTimeout`` at the
        deadline. Leaving early (or ``aclose``) cancels the pages still running and aborts them in
        the engine."""
        if self._events is not None:
            raise RuntimeError("a run's events are read once")
        self._events = self._page_events()
        return self._events

    async def _page_events(self) -> AsyncGenerator[PageEvent, None]:
        window = self._ticket.slots if self._ticket is not None else self._pipeline._window
        pages = document_pages(self._document)
        async with aclosing(self._pipeline._events(self.request, pages, window)) as events:
            async for event in events:
                if isinstance(event, PageResult) and event.error is not None and self.kind == "image":
                    raise event.error
                yield event

    async def results(self) -> list[PageResult]:
        """Every page's result. When no page of a document could be read (each over a limit, say),
        the input is at fault and nothing came out: the first page's error is raised."""
        results: list[PageResult] = []
        async with aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, PageResult):
                    results.append(event)
        input_errors = [r.error for r in results if isinstance(r.error, InvalidInput)]
        if results and len(input_errors) == len(results):
            raise input_errors[0]
        return results

    async def aclose(self) -> None:
        """Stop the pages still running (aborted in the engine), cancel renders (their workers are
        killed), drop the pages' pixels, then give the admission room back."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._events is not None:
                await self._events.aclose()
            await self._document.aclose()
        finally:
            if self._ticket is not None:
                self._ticket.release()

    async def __aenter__(self) -> Run:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# Where a door that reads one image points PDFs to.
_PDF_ADVICE = "send PDFs to POST /v1/ocr (one result per page)"


async def _results_only(events: AsyncGenerator[PageEvent, None]) -> AsyncGenerator[PageResult, None]:
    # Closing explicitly: when our consumer stops early, the pages still running are cancelled now.
    async with aclosing(events):
        async for event in events:
            if isinstance(event, PageResult):
                yield event


async def _page_events(
    engine: Engine, pages: Iterable[PageInput], request: OcrRequest, window: int, cache: RequestCache | None
) -> AsyncGenerator[PageEvent, None]:
    """Run ``pages`` concurrently, at most ``window`` at once; yield their events in page order.

    Engine request ids are ``{request_id}-p{page}`` (``request_id`` itself for a one-page input
    would collide across documents, so pages always get the suffix).
    """
    loop = asyncio.get_running_loop()
    timeout_s = request.timeout_s
    deadline = None if timeout_s is None else loop.time() + timeout_s
    page_iter = iter(pages)
    running: deque[tuple[PageInput, str, asyncio.Queue[PageEvent], asyncio.Task[None]]] = deque()

    def start_next() -> None:
        page = next(page_iter, None)
        if page is None:
            return
        page_request_id = f"{request.request_id}-p{page.number}"
        queue: asyncio.Queue[PageEvent] = asyncio.Queue()
        task = asyncio.create_task(
            _document_page(engine, page, queue, request, cache, request_id=page_request_id),
            name=f"dsocr-page-{page_request_id}",
        )
        running.append((page, page_request_id, queue, task))

    try:
        for _ in range(window):
            start_next()
        while running:
            page, page_request_id, queue, task = running[0]
            yield PageStarted(page=page.number, request_id=page_request_id)
            while True:
                if deadline is None:
                    event = await queue.get()
                else:
                    remaining = deadline - loop.time()
                    try:
                        if remaining <= 0:
                            raise TimeoutError
                        event = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        assert timeout_s is not None
                        raise EngineTimeout(_timeout_message(timeout_s)) from None
                yield event
                if isinstance(event, PageResult):
                    break
            running.popleft()
            start_next()
    finally:
        # Early exit (consumer stopped, deadline, client gone): cancel what is still running;
        # each cancelled page aborts its engine request (see _run_engine).
        tasks = [task for _, _, _, task in running]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class _CacheEntry:
    """A loaded page's place in the result cache: its key, what is stored there, the lookup's time."""

    cache: RequestCache
    key: str
    stored: EngineOutput | None
    lookup_s: float


async def _document_page(
    engine: Engine,
    page: PageInput,
    queue: asyncio.Queue[PageEvent],
    request: OcrRequest,
    cache: RequestCache | None,
    *,
    request_id: str,
) -> None:
    """Load and OCR one page, putting its events on ``queue``; never raises a page failure."""
    started = time.perf_counter()
    entry: _CacheEntry | None = None
    try:
        image = await page.render() if page.render is not None else await asyncio.to_thread(page.load)
        load_s = time.perf_counter() - started
        if cache is not None:
            lookup_started = time.perf_counter()
            key, stored = await asyncio.to_thread(cache.lookup, image)
            entry = _CacheEntry(
                cache=cache, key=key, stored=stored, lookup_s=time.perf_counter() - lookup_started
            )
        result = await _ocr_loaded_page(
            engine,
            image,
            request,
            queue,
            entry,
            request_id=request_id,
            page=page.number,
            started=started,
            load_s=load_s,
        )
    except DsocrError as exc:
        result = _failed(page.number, request_id, exc, started, entry)
    except Exception:
        # A bug, not a user error: log it with the ids, report a generic error for the page.
        logger.exception("unexpected error on page %d of request %s", page.number, request_id)
        result = _failed(
            page.number,
            request_id,
            DsocrError(f"Internal error while processing page {page.number}."),
            started,
            entry,
        )
    queue.put_nowait(result)


def _failed(
    page: int, request_id: str, error: DsocrError, started: float, entry: _CacheEntry | None = None
) -> PageResult:
    return PageResult(
        page=page,
        request_id=request_id,
        error=error,
        timings=PageTimings(total_s=time.perf_counter() - started),
        cached=None if entry is None else entry.stored is not None,
    )


async def _ocr_loaded_page(
    engine: Engine,
    image: Image.Image,
    request: OcrRequest,
    queue: asyncio.Queue[PageEvent],
    entry: _CacheEntry | None,
    *,
    request_id: str,
    page: int,
    started: float,
    load_s: float,
) -> PageResult:
    engine_request = EngineRequest(
        request_id=request_id,
        prompt=request.prompt,
        image=image,
        sampling=request.sampling,
        mode=request.mode,
        model=request.model,
    )
    width, height = image.size
    engine_started = time.perf_counter()
    if entry is not None and entry.stored is not None:
        output = replace(entry.stored, request_id=request_id)
        _replay(output.text, request, queue, page=page, width=width, height=height)
    else:
        output = await _run_engine(
            engine, engine_request, request, queue, page=page, width=width, height=height
        )
        # Text already streamed to a client cannot be taken back: streamed text is not retried,
        # and so not stored either (a cached page stands for the retried output).
        if request.stream != "text":
            output = await _retried(engine, engine_request, output, request.retries)
            if entry is not None:
                await asyncio.to_thread(entry.cache.store, entry.key, output)
    engine_s = time.perf_counter() - engine_started + (entry.lookup_s if entry is not None else 0.0)

    post_started = time.perf_counter()
    parsed, drawn = await asyncio.to_thread(_postprocess, image, output.text, request)
    post_s = time.perf_counter() - post_started

    repetitive = output.finish_reason == "repetition" or (
        output.repetition_score is not None and output.repetition_score >= REPETITION_FLAG_THRESHOLD
    )
    warnings: list[str] = []
    if output.finish_reason == "length":
        warnings.append(
            f"output truncated at max_tokens ({request.sampling.max_tokens}); "
            "raise max_tokens or use a smaller mode for this page"
        )
    if repetitive:
        score = "" if output.repetition_score is None else f" (score {output.repetition_score:.2f})"
        warnings.append(f"repetitive output detected{score}; the page text may contain a loop")
    if output.finish_reason == "abort":
        warnings.append("generation was aborted by the engine; the output is incomplete")
    warnings.extend(parsed.warnings)

    return PageResult(
        page=page,
        request_id=request_id,
        parsed=parsed,
        image_size=(width, height),
        usage=Usage(
            prompt_tokens=output.prompt_tokens,
            vision_tokens=output.vision_tokens,
            completion_tokens=output.completion_tokens,
        ),
        finish_reason=output.finish_reason,
        repetition_score=output.repetition_score,
        repetitive=repetitive,
        warnings=tuple(warnings),
        timings=PageTimings(
            load_s=load_s,
            queue_s=output.queue_s,
            first_token_s=output.first_token_s,
            engine_s=engine_s,
            post_s=post_s,
            total_s=time.perf_counter() - started,
        ),
        drawn=drawn,
        cached=None if entry is None else entry.stored is not None,
    )


def _flagged(output: EngineOutput, policy: RetryPolicy) -> bool:
    if output.finish_reason == "length":
        return True
    score = output.repetition_score
    return score is not None and score >= policy.repetition_threshold


async def _retried(
    engine: Engine, engine_request: EngineRequest, output: EngineOutput, policy: RetryPolicy
) -> EngineOutput:
    """``output``, or that of a retry when the page is flagged (see :class:`RetryPolicy`)."""
    attempt = 0
    while attempt < policy.attempts and _flagged(output, policy):
        sampling = engine_request.sampling
        if attempt == 0:
            # A smaller n-gram window catches shorter loops sooner.
            size = min(sampling.ngram_size or policy.ngram_size, policy.ngram_size)
            sampling = replace(sampling, ngram_size=size, ngram_window=policy.ngram_window)
        else:
            temperatures = policy.temperatures
            sampling = replace(sampling, temperature=temperatures[min(attempt - 1, len(temperatures) - 1)])
        retry = replace(
            engine_request, request_id=f"{engine_request.request_id}-retry{attempt + 1}", sampling=sampling
        )
        logger.info(
            "retrying %s (attempt %d): finish=%s repetition=%s",
            engine_request.request_id,
            attempt + 1,
            output.finish_reason,
            output.repetition_score,
        )
        try:
            output = await engine.generate(retry)
        except asyncio.CancelledError:
            await _abort_quietly(engine, retry.request_id)
            raise
        attempt += 1
    return output


async def _run_engine(
    engine: Engine,
    engine_request: EngineRequest,
    request: OcrRequest,
    queue: asyncio.Queue[PageEvent],
    *,
    page: int,
    width: int,
    height: int,
) -> EngineOutput:
    """Generate (or stream) one page; a cancelled caller aborts the request in the engine."""
    try:
        if request.stream == "pages":
            return await engine.generate(engine_request)
        return await _stream(engine, engine_request, request, queue, page=page, width=width, height=height)
    except asyncio.CancelledError:
        await _abort_quietly(engine, engine_request.request_id)
        raise
    except DsocrError:
        raise
    except Exception as exc:
        # Engines map their own errors; anything left over is still an engine failure.
        logger.exception("engine failed on request %s", engine_request.request_id)
        raise EngineError(f"The engine failed on request {engine_request.request_id}.") from exc


async def _stream(
    engine: Engine,
    engine_request: EngineRequest,
    request: OcrRequest,
    queue: asyncio.Queue[PageEvent],
    *,
    page: int,
    width: int,
    height: int,
) -> EngineOutput:
    """Stream the engine: pass on text deltas, or report each grounded block once the next starts."""
    text = ""
    emitted = 0
    refs_seen = 0
    final: EngineOutput | None = None
    deltas = engine.stream(engine_request)
    try:
        async for delta in deltas:
            if delta.output is not None:
                final = delta.output
            if request.stream == "text":
                if delta.text:
                    queue.put_nowait(TextDelta(page=page, text=delta.text))
                continue
            text += delta.text
            refs = len(_REF_OPEN.findall(text))
            if refs > refs_seen and refs >= 2:
                refs_seen = refs
                # Everything before the last "<|ref|>" holds only complete blocks.
                complete = text[: text.rfind("<|ref|>")]
                emitted = _emit_new_blocks(
                    complete, emitted, page, width, height, engine_request.prompt, queue
                )
    finally:
        # Closing the iterator early is how a stream is aborted (Engine.stream contract).
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()
    if final is None:
        raise EngineError(
            f"The engine stream for request {engine_request.request_id} ended without a result."
        )
    if request.stream == "blocks":
        _emit_new_blocks(final.text, emitted, page, width, height, engine_request.prompt, queue)
    return final


def _replay(
    text: str, request: OcrRequest, queue: asyncio.Queue[PageEvent], *, page: int, width: int, height: int
) -> None:
    """The events a streaming request would have seen while a cached page was generated."""
    if request.stream == "text" and text:
        queue.put_nowait(TextDelta(page=page, text=text))
    elif request.stream == "blocks":
        _emit_new_blocks(text, 0, page, width, height, request.prompt, queue)


def _emit_new_blocks(
    text: str, emitted: int, page: int, width: int, height: int, prompt: str, queue: asyncio.Queue[PageEvent]
) -> int:
    parsed = grounding.parse(text, width=width, height=height, prompt=prompt)
    for block in parsed.blocks[emitted:]:
        queue.put_nowait(BlockFound(page=page, block=block))
    return max(emitted, len(parsed.blocks))


async def _abort_quietly(engine: Engine, request_id: str) -> None:
    try:
        await asyncio.shield(engine.abort(request_id))
    except Exception:
        logger.exception("engine abort failed for request %s", request_id)


def _postprocess(image: Image.Image, raw: str, request: OcrRequest) -> tuple[ParsedOutput, dict[str, Any]]:
    """Parse the raw text and draw what the request's formats need (blocking; runs in a thread)."""
    width, height = image.size
    parsed = grounding.parse(raw, width=width, height=height, prompt=request.prompt)
    return parsed, outputs.draw(image, parsed, request.outputs)


def _timeout_message(timeout_s: float) -> str:
    return (
        f"The request ran past its deadline of {timeout_s:g} s and was aborted "
        "(DSOCR_LIMITS__REQUEST_TIMEOUT_S); send fewer pages or a smaller mode."
    )
