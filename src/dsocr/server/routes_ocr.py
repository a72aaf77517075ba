"""``POST /predict`` (the seed Truss contract) and ``POST /v1/ocr`` (the native typed API).

Both routes: API key → ready engine → parse and validate the body → admission (429 when the
queue is full) → pipeline with the request deadline, while watching for the client to go away
(then every engine request of this HTTP request is aborted). ``/v1/ocr`` streams server-sent
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
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
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
from dsocr.server.deps import AppState, app_state, ready_engine, require_api_key
from dsocr.server.errors import dsocr_error_body, error_body, request_id_of
from dsocr.server.schemas import (
    OcrRequest,
    OcrResponse,
    PredictRequest,
    block_json,
    document_json,
    page_json,
    parse_outputs,
)

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "SSE_HEADERS",
    "ClosingStreamingResponse",
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from exc


def _client_gone_response(state: AppState) -> Response:
    state.metrics.aborts.labels(reason="client_disconnect").inc()
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
    with state.admission.admit(1):
        try:
            body = await run_watching_disconnect(
                request,
                service.predict(
                    payload,
                    engine=engine,
                    settings=state.settings,
                    request_id=request_id,
                    observe=pages.append,
                ),
            )
        except ClientGone:
            return _client_gone_response(state)
        finally:
            for page in pages:
                state.metrics.observe_page(page)
    return JSONResponse(body)


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
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "description": "The file as 'file'; other OcrRequest fields as form fields.",
                    }
                },
            },
        }
    },
    responses={200: {"content": {"text/event-stream": {}}}},
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
    model = service.model_name(engine, settings.engine) if body.model is None else body.model

    document = await load_document(source, limits=settings.limits, fetch=settings.fetch, pages=body.pages)
    service.check_page_range(document, body.pages)
    pages = document_pages(document)
    try:
        ticket = state.admission.admit(min(len(pages), DOCUMENT_WINDOW))
    except DsocrError:
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

        return ClosingStreamingResponse(
            _sse_events(state, engine, pages, run_args, meta, cleanup),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
            background=BackgroundTask(cleanup),
        )

    async def collect() -> list[PageResult]:
        results: list[PageResult] = []
        async with aclosing(ocr_document(engine, pages, **run_args)) as results_so_far:
            async for result in results_so_far:
                state.metrics.observe_page(result)
                results.append(result)
        return results

    try:
        with ticket:
            results = await run_watching_disconnect(request, collect())
    except ClientGone:
        return _client_gone_response(state)
    finally:
        # Waits for renders still running in worker threads, so off the event loop.
        await document.aclose()
    if document.kind == "image" and results[0].error is not None:
        # One image: its failure is the request's failure, with the right status.
        raise results[0].error
    return JSONResponse(document_json(results, outputs=outputs, **meta))


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator when the response ends, however it ends.

    Starlette cancels the sending task on client disconnect but leaves the generator suspended;
    closing it runs its ``finally`` now (cancelling the pages and aborting them in the engine)
    instead of whenever it is garbage-collected.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


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
