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

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from dsocr import outputs
from dsocr.errors import InvalidInput, UnsupportedMediaType
from dsocr.grounding import block_to_json
from dsocr.inputs import BytesSource, Source
from dsocr.inputs.sources import SourceKind, one_source
from dsocr.pipeline import Pipeline, Run
from dsocr.request import DEFAULT_MODE, build_request
from dsocr.results import BlockFound, PageResult, PageStarted
from dsocr.server.deps import AppState, app_state, ready_pipeline, require_api_key, tenant
from dsocr.server.errors import dsocr_error_body, request_id_of
from dsocr.server.openapi import CACHE_HEADER_DOC, error_responses
from dsocr.server.runs import (
    ClientGone,
    cache_headers,
    client_gone_response,
    collect,
    read_json,
    start_run,
    stream_response,
)
from dsocr.server.schemas import OcrRequest, OcrResponse, PredictRequest, ocr_form_schema, parse_outputs

__all__ = ["router"]

router = APIRouter(tags=["ocr"], dependencies=[Depends(require_api_key)])

# Multipart: one file plus the handful of fields OcrRequest has.
_MAX_FORM_FIELDS = 32
# The seed's source fields, in the order it looked at them, and what each holds.
_PREDICT_SOURCES: dict[str, SourceKind] = {"image_url": "url", "image_base64": "base64", "image": "bytes"}
_OCR_SOURCES: dict[str, SourceKind] = {"image_url": "url", "image_base64": "base64", "path": "path"}


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


def _validated(data: dict[str, Any], *, loc_prefix: str) -> OcrRequest:
    try:
        return OcrRequest.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": (loc_prefix, *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def _parse_ocr_body(request: Request) -> tuple[OcrRequest, Source]:
    """Body (JSON or multipart) → the validated fields and their one source."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
        try:
            fields: dict[str, Any] = {}
            upload: UploadFile | None = None
            listed: list[str] = []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "file":
                        raise InvalidInput(f"upload the file as field 'file', not {key!r}", field=key)
                    upload = value
                elif key == "outputs":
                    listed.append(value)
                else:
                    fields[key] = value
            fields["outputs"] = parse_outputs(listed)
            body = _validated(fields, loc_prefix="form")
            data = await upload.read() if upload is not None else None
        finally:
            await form.close()
        if upload is None:
            return body, one_source(body.model_dump(), {"file": "bytes", **_OCR_SOURCES})
        if body.image_url or body.image_base64 or body.path:
            raise InvalidInput(
                "send either a file upload or image_url/image_base64/path, not both", field="file"
            )
        assert data is not None
        source = BytesSource(data, filename=upload.filename, content_type=upload.content_type, field="file")
        return body, source
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        body = _validated(await read_json(request), loc_prefix="body")
        return body, one_source(body.model_dump(), {"file": "bytes", **_OCR_SOURCES})
    raise UnsupportedMediaType(
        f"send application/json or multipart/form-data, not {content_type!r}", field="content-type"
    )


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
        200: {"content": {"text/event-stream": {}}, "headers": CACHE_HEADER_DOC},
        **error_responses(400, 401, 404, 413, 415, 422, 429, 500, 503, 504),
    },
    summary="OCR an image or a PDF (JSON, multipart, or server-sent events)",
)
async def ocr(
    request: Request,
    state: Annotated[AppState, Depends(app_state)],
    pipeline: Annotated[Pipeline, Depends(ready_pipeline)],
    scope: Annotated[str, Depends(tenant)],
) -> Response:
    """The native API: one image or PDF in, per-page typed results out.

    JSON or multipart (the file as ``file``). With ``stream: true`` or ``Accept:
    text/event-stream`` the answer is server-sent events: ``page.start``, ``block`` (grounded
    prompts, as produced), ``page.done`` (a page, as in the JSON answer), then ``done`` (request
    id, page count, failed pages, usage, markdown/text), or ``error`` after the first byte.
    """
    body, source = await _parse_ocr_body(request)
    wants_stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
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
                error_event=lambda exc: _sse("error", dsocr_error_body(exc, ocr_request.request_id)),
            )
        results = await collect(request, run)
    except ClientGone:
        return client_gone_response()
    return JSONResponse(
        outputs.document_json(results, ocr_request.outputs, run.render_context),
        headers=cache_headers(results),
    )


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def _sse_events(run: Run) -> AsyncIterator[bytes]:
    """The run's events as server-sent events, then a ``done`` summary."""
    names = run.request.outputs
    context = run.render_context
    results: list[PageResult] = []
    async for event in run.events():
        if isinstance(event, PageStarted):
            yield _sse("page.start", {"page": event.page, "request_id": event.request_id})
        elif isinstance(event, BlockFound):
            yield _sse("block", {"page": event.page, "block": block_to_json(event.block)})
        elif isinstance(event, PageResult):
            results.append(event)
            yield _sse("page.done", outputs.page_json(event, names, context))
    done = outputs.document_json(results, names, context)
    summary = {key: done[key] for key in ("request_id", "page_count", "failed_pages", "usage")}
    for key in ("markdown", "text"):
        if key in done:
            summary[key] = done[key]
    yield _sse("done", summary)
