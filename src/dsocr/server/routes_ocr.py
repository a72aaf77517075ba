"""``POST /predict`` (the seed Truss contract) and ``POST /v1/ocr`` (the native typed API).

Both routes translate their body into one :class:`~dsocr.request.OcrRequest` and run it through
the pipeline (:mod:`dsocr.pipeline`: mode check, admission by pages and pixels — 429 when full
or after waiting for room —, the deadline, abort when the client leaves). ``/v1/ocr`` streams
server-sent events on ``stream: true`` or ``Accept: text/event-stream``::

    event: page.start   data: {"page": 1, "request_id": "…-p1"}
    event: block        data: {"page": 1, "block": {...}}          (grounded prompts, as produced)
    event: page.done    data: {page result, same shape as in the JSON response}
    event: error        data: {"error": {...}}                      (after the first byte only)
    event: done         data: {"request_id", "page_count", "failed_pages", "usage", "markdown"?}
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from dsocr import outputs
from dsocr.errors import InvalidInput
from dsocr.grounding import block_to_json
from dsocr.inputs import BytesSource, Source
from dsocr.inputs.render_worker import isolated_pdf_work
from dsocr.inputs.sources import SourceKind, one_source, read_source
from dsocr.pipeline import Pipeline, Run
from dsocr.request import DEFAULT_MODE, build_request
from dsocr.results import BlockFound, PageResult, PageStarted
from dsocr.server.deps import AppState, app_state, ready_pipeline, require_api_key, tenant
from dsocr.server.errors import dsocr_error_body, request_id_of
from dsocr.server.file_responses import file_response
from dsocr.server.ocr_body import parse_ocr_body
from dsocr.server.openapi import CACHE_HEADER_DOC, error_responses
from dsocr.server.runs import (
    ClientGone,
    cache_headers,
    client_gone_response,
    collect,
    read_json,
    sse,
    start_run,
    stream_response,
    watching_disconnect,
)
from dsocr.server.schemas import OcrRequest, OcrResponse, PredictRequest, ocr_form_schema

__all__ = ["router"]

router = APIRouter(tags=["ocr"], dependencies=[Depends(require_api_key)])

# The seed's source fields, in the order it looked at them, and what each holds.
_PREDICT_SOURCES: dict[str, SourceKind] = {"image_url": "url", "image_base64": "base64", "image": "bytes"}
# ``?format=``: the document as one file of these formats (json: the JSON answer itself).
_FILE_FORMAT_NAMES = ("json", "md", "txt", "pdf", "hocr", "alto", "html")
_FILE_MEDIA_TYPES = sorted({outputs.file_output(name).media_type for name in _FILE_FORMAT_NAMES[1:]})


def _optional_str(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, not {type(value).__name__}", field=name)
    return value


@router.post(
    "/predict",
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
        }
    },
    responses={
        200: {"headers": CACHE_HEADER_DOC},
        **error_responses(400, 401, 413, 415, 422, 429, 500, 503, 504),
    },
    summary="OCR one image (the original Truss /predict contract)",
)
async def predict(
    request: Request,
    state: Annotated[AppState, Depends(app_state)],
    pipeline: Annotated[Pipeline, Depends(ready_pipeline)],
    scope: Annotated[str, Depends(tenant)],
) -> Response:
    """The seed server's contract: ``image_url`` | ``image_base64`` | ``image`` + ``prompt``.

    Answers the seed's keys (``extracted_text``, ``raw_output``, ``references``, …) plus typed
    additions under new keys; failures are real HTTP errors.
    """
    payload = await read_json(request)
    ocr_request = build_request(
        state.settings,
        source=one_source(payload, _PREDICT_SOURCES),
        request_id=request_id_of(request),
        prompt=_optional_str(payload, "prompt"),
        mode=_optional_str(payload, "mode") or DEFAULT_MODE,
        single_image=True,
        cache_scope=scope,
    )
    try:
        run = await start_run(request, pipeline, ocr_request)
        results = await collect(request, run)
    except ClientGone:
        return client_gone_response()
    render = outputs.OUTPUTS["truss"].page
    assert render is not None
    return JSONResponse(render(results[0], run.render_context), headers=cache_headers(results))


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
        200: {
            "content": {
                "text/event-stream": {},
                **{media_type.split(";")[0]: {} for media_type in _FILE_MEDIA_TYPES},
            },
            "headers": CACHE_HEADER_DOC,
        },
        **error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
    },
    summary="OCR an image or a PDF (JSON, multipart, server-sent events, or one file)",
)
async def ocr(
    request: Request,
    state: Annotated[AppState, Depends(app_state)],
    pipeline: Annotated[Pipeline, Depends(ready_pipeline)],
    scope: Annotated[str, Depends(tenant)],
    format_name: Annotated[
        str | None,
        Query(
            alias="format",
            description="Answer the whole document as one file instead of JSON: "
            + ", ".join(_FILE_FORMAT_NAMES)
            + " (json: the JSON answer).",
        ),
    ] = None,
) -> Response:
    """The native API: one image or PDF in, per-page typed results out.

    JSON or multipart (the file as ``file``). With ``stream: true`` or ``Accept:
    text/event-stream`` the answer is server-sent events: ``page.start``, ``block`` (grounded
    prompts, as produced), ``page.done`` (a page, as in the JSON answer), then ``done`` (request
    id, page count, failed pages, usage, markdown/text), or ``error`` after the first byte.
    With ``?format=`` (``md``, ``txt``, ``pdf`` — searchable —, ``hocr``, ``alto``, ``html``) the
    answer is the document as that file, with its media type; ``outputs`` is then ignored.
    """
    file_format = None if format_name in (None, "json") else outputs.file_output(format_name or "")
    body, source = await parse_ocr_body(request, OcrRequest)
    wants_stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
    if file_format is not None:
        if body.stream:
            raise InvalidInput("a file cannot be streamed; send stream: false with ?format=", field="format")
        return await _ocr_file(request, state, pipeline, body, source, format_name or "", scope)
    ocr_request = build_request(
        state.settings,
        source=source,
        request_id=request_id_of(request),
        preset=body.preset,
        prompt=body.prompt,
        target=body.target,
        mode=body.mode,
        model=body.model,
        outputs=body.outputs,
        max_tokens=body.max_tokens,
        pages=body.pages,
        stream="blocks" if wants_stream else "pages",
        cache_scope=scope,
    )
    try:
        run = await start_run(request, pipeline, ocr_request)
        if wants_stream:
            return stream_response(
                run,
                _sse_events(run),
                metrics=state.metrics,
                error_event=lambda exc: sse("error", dsocr_error_body(exc, ocr_request.request_id)),
            )
        results = await collect(request, run)
    except ClientGone:
        return client_gone_response()
    return JSONResponse(
        outputs.document_json(results, ocr_request.outputs, run.render_context),
        headers=cache_headers(results),
    )


async def _ocr_file(
    request: Request,
    state: AppState,
    pipeline: Pipeline,
    body: OcrRequest,
    source: Source,
    format_name: str,
    scope: str,
) -> Response:
    """``/v1/ocr?format=``: the run's pages as one file, built while the run still holds its pages."""
    output = outputs.file_output(format_name)
    settings = state.settings
    # The original bytes: a searchable PDF keeps a PDF's own pages, a JPEG as it was sent.
    raw = await read_source(source, limits=settings.limits, fetch=settings.fetch)
    data = raw.data
    ocr_request = build_request(
        settings,
        source=BytesSource(data, filename=raw.name, content_type=raw.declared_type, field=raw.field),
        request_id=request_id_of(request),
        preset=body.preset,
        prompt=body.prompt,
        target=body.target,
        mode=body.mode,
        model=body.model,
        outputs=output.uses,
        max_tokens=body.max_tokens,
        pages=body.pages,
        cache_scope=scope,
    )
    try:
        run = await start_run(request, pipeline, ocr_request)
        try:
            results = await watching_disconnect(request, run.results())
            context = outputs.FileContext(
                render=run.render_context,
                source=raw.name or "document",
                page_image=run.page_image,
                source_bytes=lambda: data,
                isolate=isolated_pdf_work(settings.limits, pages=len(results)),
            )
            response = await watching_disconnect(request, file_response(format_name, results, context))
            response.headers.update(cache_headers(results))
            return response
        finally:
            await run.aclose()
    except ClientGone:
        return client_gone_response()


async def _sse_events(run: Run) -> AsyncIterator[bytes]:
    """The run's events as server-sent events, then a ``done`` summary."""
    names = run.request.outputs
    context = run.render_context
    results: list[PageResult] = []
    async for event in run.events():
        if isinstance(event, PageStarted):
            yield sse("page.start", {"page": event.page, "request_id": event.request_id})
        elif isinstance(event, BlockFound):
            yield sse("block", {"page": event.page, "block": block_to_json(event.block)})
        elif isinstance(event, PageResult):
            results.append(event)
            yield sse("page.done", outputs.page_json(event, names, context))
    done = outputs.document_json(results, names, context)
    summary = {key: done[key] for key in ("request_id", "page_count", "failed_pages", "usage")}
    for key in ("markdown", "text"):
        if key in done:
            summary[key] = done[key]
    yield sse("done", summary)
