"""The OCR pipeline: loaded pages → engine → grounding parser → optional renders.

No web framework types here: the HTTP server, the CLI and batch all call these
functions. The two entry points are

* :func:`ocr_page` — one image, one engine request; raises a :class:`~dsocr.errors.DsocrError`.
* :func:`ocr_document` / :func:`ocr_document_events` — many pages (a PDF), submitted
  concurrently with at most ``max_in_flight`` pages loaded and running at once (so the
  engine's continuous batching stays fed without holding a 500-page PDF in memory); results
  come back in page order, and a page that fails yields a :class:`PageResult` whose ``error``
  is set, never a dropped page.

Blocking work (page rasterising, parsing, crop/overlay drawing, PNG + base64 encoding) runs in
worker threads so the event loop keeps serving other requests. Cancelling a caller (client
disconnect, deadline) cancels the page tasks, and every cancelled engine request is aborted in
the engine by id.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import logging
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from PIL import Image

from dsocr import grounding
from dsocr.engine.base import Engine, EngineOutput, EngineRequest, FinishReason, SamplingOptions
from dsocr.errors import DsocrError, EngineError, EngineTimeout
from dsocr.inputs import Document
from dsocr.render.overlay import draw_blocks
from dsocr.types import Block, ParsedOutput

__all__ = [
    "OUTPUT_KINDS",
    "BlockFound",
    "OutputKind",
    "PageEvent",
    "PageInput",
    "PageResult",
    "PageStarted",
    "PageTimings",
    "Usage",
    "document_pages",
    "ocr_document",
    "ocr_document_events",
    "ocr_page",
]

logger = logging.getLogger(__name__)

OutputKind = Literal["markdown", "text", "blocks", "raw", "crops", "visualization"]
OUTPUT_KINDS: tuple[OutputKind, ...] = ("markdown", "text", "blocks", "raw", "crops", "visualization")

# A page whose output is at least this repetitive (share of text covered by repeated n-grams)
# is flagged, so clients can retry it with another mode instead of trusting a loop.
REPETITION_FLAG_THRESHOLD = 0.5

# Where a new grounded block starts: blocks before it are complete and can be streamed.
_REF_OPEN = re.compile(re.escape("<|ref|>"))

BlockCallback: TypeAlias = Callable[[Block], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts. ``vision_tokens`` is the part of ``prompt_tokens`` that the image took."""

    prompt_tokens: int = 0
    vision_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            vision_tokens=self.vision_tokens + other.vision_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PageTimings:
    """Seconds spent on one page. Engine figures are ``None`` where the engine cannot tell."""

    load_s: float = 0.0  # decode / rasterise (documents only; 0 for an image passed in)
    queue_s: float | None = None  # waiting in the engine before the first step
    first_token_s: float | None = None
    engine_s: float = 0.0  # the engine call as seen by the pipeline
    post_s: float = 0.0  # parse + crops + visualization
    total_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PageResult:
    """The outcome of one page. Exactly one of ``parsed`` and ``error`` is set.

    ``page`` is 1-based (1 for a single image). ``crops`` are base64 PNGs of the image blocks in
    ``parsed.crop_boxes_px`` order and ``visualization`` a base64 PNG of the page with its boxes
    drawn; both are empty unless requested through ``outputs``.
    """

    page: int
    request_id: str
    parsed: ParsedOutput | None = None
    error: DsocrError | None = None
    image_size: tuple[int, int] | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: FinishReason | None = None
    repetition_score: float | None = None
    repetitive: bool = False
    warnings: tuple[str, ...] = ()
    timings: PageTimings = field(default_factory=PageTimings)
    crops: tuple[str, ...] = ()
    visualization: str | None = None

    @property
    def ok(self) -> bool:
        """True when the page produced output."""
        return self.error is None


@dataclass(frozen=True, slots=True, kw_only=True)
class PageInput:
    """One page of a document, loaded only when its turn comes.

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


@dataclass(frozen=True, slots=True, kw_only=True)
class PageStarted:
    """Event: results for ``page`` follow (its blocks, then its :class:`PageResult`)."""

    page: int
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockFound:
    """Event: a grounded block of ``page`` is complete in the engine's output so far.

    Streamed blocks are previews; the authoritative list is the page's final ``parsed.blocks``.
    """

    page: int
    block: Block


PageEvent: TypeAlias = PageStarted | BlockFound | PageResult


@dataclass(frozen=True, slots=True, kw_only=True)
class _Job:
    """What every page of one call shares (so the page helpers take one argument, not five)."""

    prompt: str
    mode: str
    sampling: SamplingOptions
    model: str | None
    outputs: frozenset[OutputKind]


async def ocr_page(
    engine: Engine,
    image: Image.Image,
    *,
    prompt: str,
    mode: str,
    sampling: SamplingOptions,
    request_id: str,
    model: str | None = None,
    outputs: frozenset[OutputKind] = frozenset(),
    page: int = 1,
    timeout_s: float | None = None,
    on_block: BlockCallback | None = None,
) -> PageResult:
    """OCR one image. ``prompt`` is the full model prompt (with ``<image>``).

    Raises ``DsocrError`` subclasses: ``EngineTimeout`` after ``timeout_s`` (the request is
    aborted in the engine), engine errors as the engine raised them. With ``on_block`` the
    engine is streamed and each grounded block is passed to it as soon as it is complete.
    """
    started = time.perf_counter()
    job = _Job(prompt=prompt, mode=mode, sampling=sampling, model=model, outputs=outputs)
    work = _ocr_loaded_page(
        engine, image, job, request_id=request_id, page=page, on_block=on_block, started=started, load_s=0.0
    )
    if timeout_s is None:
        return await work
    try:
        return await asyncio.wait_for(work, timeout_s)
    except TimeoutError:
        raise EngineTimeout(_timeout_message(timeout_s)) from None


async def ocr_document(
    engine: Engine,
    pages: Iterable[PageInput],
    *,
    prompt: str,
    mode: str,
    sampling: SamplingOptions,
    request_id: str,
    model: str | None = None,
    outputs: frozenset[OutputKind] = frozenset(),
    max_in_flight: int = 8,
    timeout_s: float | None = None,
) -> AsyncGenerator[PageResult, None]:
    """OCR many pages concurrently; yield one :class:`PageResult` per page, in page order.

    A page that fails (cannot be rasterised, over a limit, engine error) yields a result with
    ``error`` set. Raises ``EngineTimeout`` when the whole document runs past ``timeout_s``
    (pages still running are aborted in the engine).
    """
    events = ocr_document_events(
        engine,
        pages,
        prompt=prompt,
        mode=mode,
        sampling=sampling,
        request_id=request_id,
        model=model,
        outputs=outputs,
        max_in_flight=max_in_flight,
        timeout_s=timeout_s,
        stream_blocks=False,
    )
    # Closing explicitly: when our consumer stops early, the pages still running are cancelled now.
    async with aclosing(events):
        async for event in events:
            if isinstance(event, PageResult):
                yield event


async def ocr_document_events(
    engine: Engine,
    pages: Iterable[PageInput],
    *,
    prompt: str,
    mode: str,
    sampling: SamplingOptions,
    request_id: str,
    model: str | None = None,
    outputs: frozenset[OutputKind] = frozenset(),
    max_in_flight: int = 8,
    timeout_s: float | None = None,
    stream_blocks: bool = True,
) -> AsyncGenerator[PageEvent, None]:
    """Like :func:`ocr_document`, as a stream of events in page order.

    For each page: :class:`PageStarted`, then (with ``stream_blocks``) a :class:`BlockFound`
    per grounded block as the engine produces it, then its :class:`PageResult`. Pages run
    concurrently; the blocks of later pages are held until their page's turn.
    Engine request ids are ``{request_id}-p{page}`` (``request_id`` itself for a one-page input
    would collide across documents, so pages always get the suffix).
    """
    if max_in_flight < 1:
        raise ValueError("max_in_flight must be at least 1")
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    page_iter = iter(pages)
    job = _Job(prompt=prompt, mode=mode, sampling=sampling, model=model, outputs=outputs)
    window: deque[tuple[PageInput, str, asyncio.Queue[PageEvent], asyncio.Task[None]]] = deque()

    def start_next() -> None:
        page = next(page_iter, None)
        if page is None:
            return
        page_request_id = f"{request_id}-p{page.number}"
        queue: asyncio.Queue[PageEvent] = asyncio.Queue()
        task = asyncio.create_task(
            _document_page(engine, page, queue, job, request_id=page_request_id, stream_blocks=stream_blocks),
            name=f"dsocr-page-{page_request_id}",
        )
        window.append((page, page_request_id, queue, task))

    try:
        for _ in range(max_in_flight):
            start_next()
        while window:
            page, page_request_id, queue, task = window[0]
            yield PageStarted(page=page.number, request_id=page_request_id)
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError
                    event = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    assert timeout_s is not None
                    raise EngineTimeout(_timeout_message(timeout_s)) from None
                yield event
                if isinstance(event, PageResult):
                    break
            window.popleft()
            start_next()
    finally:
        # Early exit (consumer stopped, deadline, client gone): cancel what is still running;
        # each cancelled page aborts its engine request (see _run_engine).
        tasks = [task for _, _, _, task in window]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _document_page(
    engine: Engine,
    page: PageInput,
    queue: asyncio.Queue[PageEvent],
    job: _Job,
    *,
    request_id: str,
    stream_blocks: bool,
) -> None:
    """Load and OCR one page, putting its events on ``queue``; never raises a page failure."""
    started = time.perf_counter()

    async def put_block(block: Block) -> None:
        queue.put_nowait(BlockFound(page=page.number, block=block))

    try:
        image = await page.render() if page.render is not None else await asyncio.to_thread(page.load)
        load_s = time.perf_counter() - started
        result = await _ocr_loaded_page(
            engine,
            image,
            job,
            request_id=request_id,
            page=page.number,
            on_block=put_block if stream_blocks else None,
            started=started,
            load_s=load_s,
        )
    except DsocrError as exc:
        result = _failed(page.number, request_id, exc, started)
    except Exception:
        # A bug, not a user error: log it with the ids, report a generic error for the page.
        logger.exception("unexpected error on page %d of request %s", page.number, request_id)
        result = _failed(
            page.number,
            request_id,
            DsocrError(f"Internal error while processing page {page.number}."),
            started,
        )
    queue.put_nowait(result)


def _failed(page: int, request_id: str, error: DsocrError, started: float) -> PageResult:
    return PageResult(
        page=page,
        request_id=request_id,
        error=error,
        timings=PageTimings(total_s=time.perf_counter() - started),
    )


async def _ocr_loaded_page(
    engine: Engine,
    image: Image.Image,
    job: _Job,
    *,
    request_id: str,
    page: int,
    on_block: BlockCallback | None,
    started: float,
    load_s: float,
) -> PageResult:
    request = EngineRequest(
        request_id=request_id,
        prompt=job.prompt,
        image=image,
        sampling=job.sampling,
        mode=job.mode,
        model=job.model,
    )
    width, height = image.size
    engine_started = time.perf_counter()
    output = await _run_engine(engine, request, width=width, height=height, on_block=on_block)
    engine_s = time.perf_counter() - engine_started

    post_started = time.perf_counter()
    parsed, crops, visualization = await asyncio.to_thread(
        _postprocess, image, output.text, prompt=job.prompt, outputs=job.outputs
    )
    post_s = time.perf_counter() - post_started

    repetitive = output.finish_reason == "repetition" or (
        output.repetition_score is not None and output.repetition_score >= REPETITION_FLAG_THRESHOLD
    )
    warnings: list[str] = []
    if output.finish_reason == "length":
        warnings.append(
            f"output truncated at max_tokens ({job.sampling.max_tokens}); "
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
        crops=crops,
        visualization=visualization,
    )


async def _run_engine(
    engine: Engine,
    request: EngineRequest,
    *,
    width: int,
    height: int,
    on_block: BlockCallback | None,
) -> EngineOutput:
    """Generate (or stream) one request; a cancelled caller aborts the request in the engine."""
    try:
        if on_block is None:
            return await engine.generate(request)
        return await _stream_blocks(engine, request, width=width, height=height, on_block=on_block)
    except asyncio.CancelledError:
        await _abort_quietly(engine, request.request_id)
        raise
    except DsocrError:
        raise
    except Exception as exc:
        # Engines map their own errors; anything left over is still an engine failure.
        logger.exception("engine failed on request %s", request.request_id)
        raise EngineError(f"The engine failed on request {request.request_id}.") from exc


async def _stream_blocks(
    engine: Engine,
    request: EngineRequest,
    *,
    width: int,
    height: int,
    on_block: BlockCallback,
) -> EngineOutput:
    """Stream the engine and report each grounded block once the next one starts."""
    text = ""
    emitted = 0
    refs_seen = 0
    final: EngineOutput | None = None
    deltas = engine.stream(request)
    try:
        async for delta in deltas:
            text += delta.text
            if delta.output is not None:
                final = delta.output
            refs = len(_REF_OPEN.findall(text))
            if refs > refs_seen and refs >= 2:
                refs_seen = refs
                # Everything before the last "<|ref|>" holds only complete blocks.
                complete = text[: text.rfind("<|ref|>")]
                emitted = await _emit_new_blocks(
                    complete, emitted, width=width, height=height, prompt=request.prompt, on_block=on_block
                )
    finally:
        # Closing the iterator early is how a stream is aborted (Engine.stream contract).
        aclose = getattr(deltas, "aclose", None)
        if aclose is not None:
            await aclose()
    if final is None:
        raise EngineError(f"The engine stream for request {request.request_id} ended without a result.")
    await _emit_new_blocks(
        final.text, emitted, width=width, height=height, prompt=request.prompt, on_block=on_block
    )
    return final


async def _emit_new_blocks(
    text: str, emitted: int, *, width: int, height: int, prompt: str, on_block: BlockCallback
) -> int:
    parsed = grounding.parse(text, width=width, height=height, prompt=prompt)
    for block in parsed.blocks[emitted:]:
        await on_block(block)
    return max(emitted, len(parsed.blocks))


async def _abort_quietly(engine: Engine, request_id: str) -> None:
    try:
        await asyncio.shield(engine.abort(request_id))
    except Exception:
        logger.exception("engine abort failed for request %s", request_id)


def _postprocess(
    image: Image.Image, raw: str, *, prompt: str, outputs: frozenset[OutputKind]
) -> tuple[ParsedOutput, tuple[str, ...], str | None]:
    """Parse the raw text and draw what was asked for (blocking; runs in a thread)."""
    width, height = image.size
    parsed = grounding.parse(raw, width=width, height=height, prompt=prompt)
    crops: tuple[str, ...] = ()
    if "crops" in outputs:
        crops = tuple(_png_base64(crop) for crop in grounding.crops(image, parsed))
    visualization = None
    if "visualization" in outputs:
        visualization = _png_base64(draw_blocks(image, parsed.blocks))
    return parsed, crops, visualization


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _timeout_message(timeout_s: float) -> str:
    return (
        f"The request ran past its deadline of {timeout_s:g} s and was aborted "
        "(DSOCR_LIMITS__REQUEST_TIMEOUT_S); send fewer pages or a smaller mode."
    )
