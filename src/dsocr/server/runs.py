"""The HTTP edge of a pipeline run, shared by every OCR route: reading a JSON body, starting and
collecting a run while watching for the client to leave, and streaming a run's events.

A client that leaves while its request waits or runs cancels the work, which aborts its engine
requests (:mod:`dsocr.pipeline`); the route then answers 499 to nobody, which the metrics count
as an abandoned request. An error inside an event stream, whose status was already 200, is
counted here and sent as the stream's last event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from dsocr.errors import DsocrError, EngineError, InvalidInput, UnsupportedMediaType
from dsocr.pipeline import Pipeline, Run
from dsocr.request import OcrRequest
from dsocr.results import PageResult
from dsocr.server.errors import unparsable_body
from dsocr.server.metrics import Metrics

__all__ = [
    "CACHE_HEADER",
    "CLIENT_CLOSED_REQUEST",
    "ClientGone",
    "ClosingStreamingResponse",
    "cache_headers",
    "client_gone_response",
    "collect",
    "read_json",
    "sse",
    "start_run",
    "stream_response",
    "watching_disconnect",
]

logger = logging.getLogger(__name__)

# nginx's code for "client closed the request": what the metrics record for an abandoned request.
CLIENT_CLOSED_REQUEST = 499
# Server-sent events must reach the client as produced: no caching, no proxy buffering (nginx).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Whether a non-streamed answer came from the result cache: hit (every page), partial (some),
# miss (none); absent when the request did not use the cache (dsocr.cache).
CACHE_HEADER = "X-Dsocr-Cache"

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


def client_gone_response() -> Response:
    """The answer nobody reads (counted as an abort by the metrics middleware)."""
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _until_disconnected(request: Request) -> None:
    # After the body is read, the next ASGI message is http.disconnect (client gone or response done).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def watching_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it if the client leaves (then ``ClientGone``)."""
    task: asyncio.Task[T] = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def sse(event: str, data: Any) -> bytes:
    """One server-sent event: its name and its data as compact JSON."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or ``InvalidInput`` / ``UnsupportedMediaType`` saying what is wrong."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"request body must be application/json, not {content_type!r}", field="content-type"
        )
    body = await request.body()
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        # json raises RecursionError for deep nesting (documented), ValueError for the rest.
        raise unparsable_body(exc) from None
    if not isinstance(payload, dict):
        raise InvalidInput("the request body must be a JSON object")
    return payload


async def start_run(request: Request, pipeline: Pipeline, ocr_request: OcrRequest) -> Run:
    """``pipeline.start`` (read, open, admit: it may wait for room), given up if the client leaves.

    The quick refusals (mode, no page slot free) come first, before anything is read.
    """
    pipeline.check(ocr_request)
    return await watching_disconnect(request, pipeline.start(ocr_request))


async def collect(request: Request, run: Run) -> list[PageResult]:
    """Every page result of ``run`` (see ``Run.results``), then the run closed, however it ends."""
    try:
        return await watching_disconnect(request, run.results())
    finally:
        await run.aclose()


def cache_headers(results: Sequence[PageResult]) -> dict[str, str]:
    """``X-Dsocr-Cache`` for an answer made of ``results``: ``hit``, ``partial`` or ``miss``; no
    header when no page looked the cache up."""
    looked_up = [result.cached for result in results if result.cached is not None]
    if not looked_up:
        return {}
    hits = sum(looked_up)
    status = "hit" if hits == len(looked_up) else "miss" if hits == 0 else "partial"
    return {CACHE_HEADER: status}


def stream_response(
    run: Run,
    encoded: AsyncIterator[bytes],
    *,
    metrics: Metrics,
    error_event: Callable[[DsocrError], bytes],
) -> ClosingStreamingResponse:
    """The response streaming ``encoded`` (a run's events as server-sent events); see ``_events``.

    Whether the stream ends, fails or its client leaves (even before the first byte), the run is
    closed: its pages stop, its engine requests are aborted, its admission is given back.
    """
    return ClosingStreamingResponse(
        _events(run, encoded, metrics=metrics, error_event=error_event),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        on_close=run.aclose,
    )


async def _events(
    run: Run,
    encoded: AsyncIterator[bytes],
    *,
    metrics: Metrics,
    error_event: Callable[[DsocrError], bytes],
) -> AsyncIterator[bytes]:
    """``encoded`` (a run's events in a wire format), then the run closed. An error after the first
    byte is counted and sent as ``error_event``, and the stream ends."""
    try:
        async for chunk in encoded:
            yield chunk
    except DsocrError as exc:
        metrics.observe_error(exc.code)
        yield error_event(exc)
    except Exception:
        logger.exception("stream of request %s failed", run.request.request_id)
        error = EngineError("Internal error while streaming.")
        metrics.observe_error(error.code)
        yield error_event(error)
    finally:
        await run.aclose()


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator when the response ends, however it ends, then runs ``on_close``.

    Starlette cancels the sending task on client disconnect but leaves the generator suspended;
    closing it runs its ``finally`` now (cancelling the pages and aborting them in the engine)
    instead of whenever it is garbage-collected. A generator that never started (the client left
    before the first byte) runs no ``finally`` at all, so what the request holds (admission,
    an open engine stream) is given back by ``on_close``, which must be idempotent.
    """

    def __init__(
        self, *args: Any, on_close: Callable[[], Awaitable[None]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            if self._on_close is not None:
                await self._on_close()
