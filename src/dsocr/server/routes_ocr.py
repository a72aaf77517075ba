"""``POST /predict`` (the seed Truss contract) and ``POST /v1/ocr`` (the native typed API).

Both routes: API key → ready engine → parse and validate the body → read the input and its
header (an image's size, a PDF's page sizes; no pixel decoded) → admission by pages and pixels
(``dsocr.server.admission``: 429 when full, or after waiting for room) → pipeline with the
request deadline, decoding pages as it goes, while watching for the client to go away (then every
engine request of this HTTP request is aborted). ``/v1/ocr`` streams server-sent
events on ``stream: true`` or ``Accept: text/event-stream``::

    event: page.start   data: {"page": 1, "request_id": "…-p1"}
    event: block        data: {"page": 1, "block": {...}}          (grounded prompts, as produced)
    event: page.done    data: {page result, same shape as in the JSON response}
    event: error        data: {"error": {...}}                      (after the first byte only)
    event: done         data: {"request_id", "page_count", "failed_pages", "usage", "markdown"?}
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.types import Receive, Scope, Send

from dsocr import service
from dsocr.engine.base import Engine
from dsocr.errors import DsocrError, InvalidInput, UnsupportedMediaType
from dsocr.inputs import Base64Source, BytesSource, PathSource, Source, UrlSource, load_document
from dsocr.pipeline import (
    BlockFound,
    PageInput,
    PageResult,
    PageStarted,
    document_pages,
    ocr_document,
    ocr_document_events,
)
from dsocr.prompts import build_prompt
from dsocr.server.admission import AdmissionQueue, Ticket, page_cost
from dsocr.server.deps import AppState, app_state, ready_engine, require_api_key
from dsocr.server.errors import dsocr_error_body, error_body, http_status, request_id_of, unparsable_body
from dsocr.server.openapi import error_responses
from dsocr.server.schemas import (
    OcrRequest,
    OcrResponse,
    PredictRequest,
    block_json,
    document_json,
    ocr_form_schema,
    page_json,
    parse_outputs,
)

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "SSE_HEADERS",
    "ClosingStreamingResponse",
    "admit_watching",
    "read_json",
    "router",
    "run_watching_disconnect",
]

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ocr"], dependencies=[Depends(require_api_key)])

# nginx's code for "client closed the request": what the metrics record for an abandoned request.
CLIENT_CLOSED_REQUEST = 499
# Pages of one document kept loaded and running at once: enough to keep a batching engine busy
# alongside other requests, few enough that a 500-page PDF is never all in memory.
DOCUMENT_WINDOW = 16
# Server-sent events must reach the client as produced: no caching, no proxy buffering (nginx).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Multipart: one file plus the handful of fields OcrRequest has.
_MAX_FORM_FIELDS = 32

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


async def _until_disconnected(request: Request) -> None:
    # After the body is read, the next ASGI message is http.disconnect (client gone or response done).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_watching_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it (and so aborting its engine requests) if the client leaves.

    Raises ``ClientGone`` in that case; the route then answers 499 to nobody.
    """
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


async def read_json(request: Request) -> Any:
    """The body as JSON, or ``InvalidInput`` / ``UnsupportedMediaType`` saying what is wrong."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"request body must be application/json, not {content_type!r}", field="content-type"
        )
    body = await request.body()
    if not body:
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        # json raises RecursionError for deep nesting (documented), ValueError for the rest.
        raise unparsable_body(exc) from None


def _client_gone_response() -> Response:
    # The metrics middleware counts the 499 as an abort (dsocr.server.metrics).
    return Response(status_code=CLIENT_CLOSED_REQUEST)


@router.post(
    "/predict",
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
        }
    },
    responses=error_responses(400, 401, 413, 415, 422, 429, 500, 503, 504),
    summary="OCR one image (the original Truss /predict contract)",
)
async def predict(
    request: Request,
    state: Annotated[AppState, Depends(app_state)],
    engine: Annotated[Engine, Depends(ready_engine)],
) -> Response:
    """The seed server's contract: ``image_url`` | ``image_base64`` | ``image`` + ``prompt``.

    Answers the seed's keys (``extracted_text``, ``raw_output``, ``references``, …) plus typed
    additions under new keys; failures are real HTTP errors.
    """
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise InvalidInput("the request body must be a JSON object")
    request_id = request_id_of(request) or service.new_request_id()
    pages: list[PageResult] = []
    admission = state.admission
    admission.check_room()  # no page slot free: 429 before the image is even read
    tickets: list[Ticket] = []

    async def admit(size: tuple[int, int]) -> None:
        # Runs inside run_watching_disconnect: a client leaving while this waits cancels it.
        wait_s = state.settings.limits.admission_wait_s
        tickets.append(await admission.admit([page_cost(size)], wait_s=wait_s))

    try:
        body = await run_watching_disconnect(
            request,
            service.predict(
                payload,
                engine=engine,
                settings=state.settings,
                request_id=request_id,
                observe=pages.append,
                before_decode=admit,
            ),
        )
    except ClientGone:
        return _client_gone_response()
    finally:
        for ticket in tickets:
            ticket.release()
        for page in pages:
            state.metrics.observe_page(page)
    return JSONResponse(body)


async def admit_watching(
    request: Request, admission: AdmissionQueue, page_costs: list[int], *, window: int, wait_s: float
) -> Ticket:
    """Admission for ``page_costs``; while it waits for room, a client that leaves raises ``ClientGone``."""
    ticket = admission.try_admit(page_costs, window=window)
    if ticket is not None:
        return ticket
    return await run_watching_disconnect(request, admission.admit(page_costs, window=window, wait_s=wait_s))


def _source_of(form_file: UploadFile | None, data: bytes | None, request: OcrRequest) -> Source:
    if form_file is not None:
        if request.image_url or request.image_base64 or request.path:
            raise InvalidInput(
                "send either a file upload or image_url/image_base64/path, not both", field="file"
            )
        assert data is not None
        return BytesSource(
            data, filename=form_file.filename, content_type=form_file.content_type, field="file"
        )
    given = [name for name in ("image_url", "image_base64", "path") if getattr(request, name)]
    if len(given) > 1:
        raise InvalidInput(f"send only one source; got {', '.join(given)}", field=given[1])
    if request.image_url:
        return UrlSource(request.image_url, field="image_url")
    if request.image_base64:
        return Base64Source(request.image_base64, field="image_base64")
    if request.path:
        return PathSource(request.path, field="path")
    raise InvalidInput("send an image or PDF: a 'file' upload, image_url, image_base64 or path", field="file")


def _validated(data: dict[str, Any], *, loc_prefix: str) -> OcrRequest:
    try:
        return OcrRequest.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": (loc_prefix, *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def _parse_ocr_request(request: Request) -> tuple[OcrRequest, Source, bool]:
    """Body (JSON or multipart) → validated request, its source, and whether to stream."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
        try:
            fields: dict[str, Any] = {}
            upload: UploadFile | None = None
            outputs: list[str] = []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "file":
                        raise InvalidInput(f"upload the file as field 'file', not {key!r}", field=key)
                    upload = value
                elif key == "outputs":
                    outputs.append(value)
                else:
                    fields[key] = value
            fields["outputs"] = sorted(parse_outputs(outputs))
            parsed = _validated(fields, loc_prefix="form")
            data = await upload.read() if upload is not None else None
        finally:
            await form.close()
        source = _source_of(upload, data, parsed)
    elif content_type in ("application/json", "") or content_type.endswith("+json"):
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise InvalidInput("the request body must be a JSON object")
        parsed = _validated(payload, loc_prefix="body")
        source = _source_of(None, None, parsed)
    else:
        raise UnsupportedMediaType(
            f"send application/json or multipart/form-data, not {content_type!r}", field="content-type"
        )
    wants_stream = parsed.stream or "text/event-stream" in request.headers.get("accept", "")
    return parsed, source, wants_stream


@router.post(
    "/v1/ocr",
    response_model=OcrResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": OcrRequest.model_json_schema()},
                "multipart/form-data": {"schema": ocr_form_schema()},
            },
        }
    },
    responses={
        200: {"content": {"text/event-stream": {}}},
        **error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
    },
    summary="OCR an image or a PDF (JSON, multipart, or server-sent events)",
)
async def ocr(
    request: Request,
    state: Annotated[AppState, Depends(app_state)],
    engine: Annotated[Engine, Depends(ready_engine)],
) -> Response:
    """The native API: one image or PDF in, per-page typed results out (see the module docstring)."""
    settings = state.settings
    body, source, wants_stream = await _parse_ocr_request(request)
    request_id = request_id_of(request) or service.new_request_id()
    prompt = build_prompt(body.preset, prompt=body.prompt, target=body.target)
    if body.mode not in engine.info.modes:
        raise InvalidInput(
            f"mode {body.mode!r} is not served by this engine; choose from {', '.join(engine.info.modes)}",
            field="mode",
        )
    sampling = service.sampling_options(settings.engine, settings.limits, max_tokens=body.max_tokens)
    outputs = frozenset(body.outputs)
    model = service.model_name(settings.engine) if body.model is None else body.model

    state.admission.check_room()  # no page slot free: 429 before the input is read or opened
    # Opening reads an image's header or a PDF's page sizes: no pixel is decoded before admission.
    document = await load_document(source, limits=settings.limits, fetch=settings.fetch, pages=body.pages)
    try:
        service.check_page_range(document, body.pages)
        pages = document_pages(document)
        costs = [page_cost(size, outputs) for size in document.page_sizes]
        ticket = await admit_watching(
            request,
            state.admission,
            costs,
            window=DOCUMENT_WINDOW,
            wait_s=settings.limits.admission_wait_s,
        )
    except ClientGone:
        await document.aclose()
        return _client_gone_response()
    except BaseException:
        await document.aclose()
        raise
    window = ticket.slots
    run_args: dict[str, Any] = {
        "prompt": prompt,
        "mode": body.mode,
        "sampling": sampling,
        "request_id": request_id,
        "model": body.model,
        "outputs": outputs,
        "max_in_flight": window,
        "timeout_s": settings.limits.request_timeout_s,
    }
    meta: dict[str, Any] = {
        "request_id": request_id,
        "model": model,
        "prompt": prompt,
        "mode": body.mode,
        "kind": document.kind,
    }

    if wants_stream:

        def cleanup() -> None:
            document.close()
            ticket.release()

        async def on_close() -> None:
            cleanup()

        return ClosingStreamingResponse(
            _sse_events(state, engine, pages, run_args, meta, cleanup),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
            on_close=on_close,
        )

    async def collect() -> list[PageResult]:
        results: list[PageResult] = []
        async with aclosing(ocr_document(engine, pages, **run_args)) as results_so_far:
            async for result in results_so_far:
                state.metrics.observe_page(result)
                results.append(result)
        return results

    try:
        results = await run_watching_disconnect(request, collect())
    except ClientGone:
        return _client_gone_response()
    finally:
        # Cancels renders still running (their render workers are killed) and drops the pages'
        # pixels; only then is their room in the admission budget given back.
        await document.aclose()
        ticket.release()
    if document.kind == "image" and results[0].error is not None:
        # One image: its failure is the request's failure, with the right status.
        raise results[0].error
    input_errors = [r.error for r in results if r.error is not None and http_status(r.error) < 500]
    if results and len(input_errors) == len(results):
        # No page of the PDF could be read (e.g. each over its render budget): the input is at
        # fault and nothing came out, so the request fails with the first page's error and status.
        raise input_errors[0]
    return JSONResponse(document_json(results, outputs=outputs, **meta))


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


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def _sse_events(
    state: AppState,
    engine: Engine,
    pages: list[PageInput],
    run_args: dict[str, Any],
    meta: dict[str, Any],
    cleanup: Callable[[], None],
) -> AsyncIterator[bytes]:
    """The SSE body. Errors after the first byte become an ``error`` event, then the stream ends."""
    request_id = meta["request_id"]
    outputs = run_args["outputs"]
    results: list[PageResult] = []
    try:
        async with aclosing(ocr_document_events(engine, pages, stream_blocks=True, **run_args)) as events:
            async for event in events:
                if isinstance(event, PageStarted):
                    yield _sse("page.start", {"page": event.page, "request_id": event.request_id})
                elif isinstance(event, BlockFound):
                    yield _sse("block", {"page": event.page, "block": block_json(event.block)})
                else:
                    state.metrics.observe_page(event)
                    results.append(event)
                    yield _sse("page.done", page_json(event, outputs))
        done = document_json(results, outputs=outputs, **meta)
        summary = {key: done[key] for key in ("request_id", "page_count", "failed_pages", "usage")}
        for key in ("markdown", "text"):
            if key in done:
                summary[key] = done[key]
        yield _sse("done", summary)
    except DsocrError as exc:
        state.metrics.observe_error(exc.code)
        yield _sse("error", dsocr_error_body(exc, request_id))
    except Exception:
        logger.exception("unhandled error in stream %s", request_id)
        state.metrics.observe_error("internal_error")
        message = "Internal server error."
        yield _sse(
            "error",
            error_body(
                type_="server_error",
                code="internal_error",
                message=message,
                field=None,
                request_id=request_id,
            ),
        )
    finally:
        cleanup()
