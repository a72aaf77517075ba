"""``/v1/jobs``: OCR run in the background, for documents too long for one HTTP request.

``POST /v1/jobs`` takes ``/v1/ocr``'s body (JSON or multipart) and answers 202 at once, with the
job and ``Location: /v1/jobs/{id}``. The job runs through the same pipeline (:mod:`dsocr.jobs`):

* ``GET /v1/jobs/{id}``: status (queued, running, succeeded, failed, cancelled), pages done,
  failed and total, the times, the error;
* ``GET /v1/jobs/{id}/result``: ``/v1/ocr``'s JSON (``?format=md|txt|pdf|hocr|alto|html`` for
  the document as one file, as ``/v1/ocr?format=`` answers it); 409
  ``job_not_finished`` until the job has succeeded;
* ``GET /v1/jobs/{id}/events``: server-sent events: ``job`` (status), ``page.done`` per page,
  then ``done`` or ``error``;
* ``POST /v1/jobs/{id}/cancel``: cancels an unfinished job (its pages stop in the engine);
* ``DELETE /v1/jobs/{id}``: cancels an unfinished job, deletes a finished one and its result;
* ``GET /v1/jobs``: the caller's jobs.

With API keys on, a key sees only its own jobs: another key's job id answers 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from dsocr import outputs
from dsocr.errors import EngineUnavailable, InvalidInput, error_class
from dsocr.inputs.render_worker import isolated_pdf_work
from dsocr.jobs.manager import JobManager, JobParams, job_json
from dsocr.server.deps import AppState, app_state, require_api_key, tenant
from dsocr.server.errors import error_body, error_type
from dsocr.server.file_responses import file_response
from dsocr.server.ocr_body import parse_ocr_body
from dsocr.server.openapi import error_responses
from dsocr.server.runs import SSE_HEADERS, sse
from dsocr.server.schemas import JobList, JobOut, JobRequest, OcrResponse, ocr_form_schema

__all__ = ["router"]

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_api_key)])

# The result as one file (``?format=``), by the media types of the registry's file formats.
_FILE_MEDIA_TYPES = sorted(
    {
        outputs.file_output(name).media_type.split(";")[0]
        for name in ("md", "txt", "pdf", "hocr", "alto", "html")
    }
)
_NOT_FOUND = {404: "No such job for this API key (never existed, expired, deleted, or another key's)."}
_QUEUE_FULL = {
    429: "Too many jobs queued or running, in total (DSOCR_JOBS__MAX_QUEUED) or for this key "
    "(DSOCR_JOBS__MAX_QUEUED_PER_KEY); retry after Retry-After seconds."
}


async def job_manager(state: Annotated[AppState, Depends(app_state)]) -> JobManager:
    """The server's jobs (503 while they are not started)."""
    if state.jobs is None:
        raise EngineUnavailable(f"jobs are not available: {state.jobs_unavailable}", retry_after=5)
    return state.jobs


Jobs = Annotated[JobManager, Depends(job_manager)]
Tenant = Annotated[str, Depends(tenant)]


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": JobRequest.model_json_schema()},
                "multipart/form-data": {"schema": ocr_form_schema(JobRequest)},
            },
        }
    },
    responses=error_responses(400, 401, 404, 413, 415, 422, 429, 503, 507, descriptions=_QUEUE_FULL),
    summary="Start a job: OCR an image or PDF in the background",
)
async def create_job(request: Request, jobs: Jobs, owner: Tenant) -> Response:
    """The body of ``POST /v1/ocr`` plus an optional ``callback_url``; answers 202 with the job.

    The input is read and checked now (size, URL fetch); the pages run in the background. Poll
    ``GET /v1/jobs/{id}``, follow ``/events``, or give ``callback_url`` to be called when it ends.
    """
    body, source = await parse_ocr_body(request, JobRequest)
    if body.stream:
        raise InvalidInput(
            "a job does not stream its answer; follow GET /v1/jobs/{id}/events", field="stream"
        )
    params = JobParams(
        preset=body.preset,
        prompt=body.prompt,
        target=body.target,
        mode=body.mode,
        model=body.model,
        outputs=tuple(body.outputs),
        max_tokens=body.max_tokens,
        pages=body.pages,
    )
    job = await jobs.submit(owner=owner, params=params, source=source, callback_url=body.callback_url)
    return JSONResponse(job_json(job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/v1/jobs", response_model=JobList, responses=error_responses(401, 422), summary="List your jobs")
async def list_jobs(
    jobs: Jobs, owner: Tenant, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> JSONResponse:
    """The caller's jobs, newest first (at most ``limit``)."""
    return JSONResponse({"object": "list", "data": [job_json(job) for job in await jobs.owned(owner, limit)]})


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobOut,
    responses=error_responses(401, 404, descriptions=_NOT_FOUND),
    summary="A job's status",
)
async def get_job(job_id: str, jobs: Jobs, owner: Tenant) -> JSONResponse:
    """Status, progress (pages done, failed, total), times and error of one job."""
    return JSONResponse(job_json(await jobs.get(job_id, owner)))


@router.get(
    "/v1/jobs/{job_id}/result",
    response_model=OcrResponse,
    responses={
        200: {
            "content": {
                media: {}
                for media in (
                    "text/markdown",
                    "text/plain",
                    "application/pdf",
                    "application/xml",
                    "text/html",
                )
            }
        },
        **error_responses(400, 401, 404, 409, descriptions=_NOT_FOUND),
    },
    summary="A finished job's result",
)
async def job_result(
    job_id: str,
    jobs: Jobs,
    owner: Tenant,
    state: Annotated[AppState, Depends(app_state)],
    format: Annotated[str | None, Query(description="A file format instead of JSON: md, txt …")] = None,
) -> Response:
    """The same JSON as ``POST /v1/ocr`` (``?format=`` for the document as one file: ``md``,
    ``txt``, ``pdf`` — searchable, on the job's own pages —, ``hocr``, ``alto``, ``html``).

    409 ``job_not_finished`` while the job is queued or running, and for a failed or cancelled job.
    """
    job = await jobs.get(job_id, owner)
    results = await jobs.results(job)
    request = jobs.request_of(job)
    context = request.render_context("pdf" if job.kind == "pdf" else "image")
    if format is None or format == "json":
        return JSONResponse(outputs.document_json(results, request.outputs, context))
    settings = state.settings
    data = await jobs.input_bytes(job)
    file_context = outputs.FileContext(
        render=context,
        source=job.input.filename or job.id,
        source_bytes=lambda: data,
        isolate=isolated_pdf_work(settings.limits, pages=len(results)),
    )
    return await file_response(format, results, file_context)


@router.get(
    "/v1/jobs/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}},
        **error_responses(401, 404, descriptions=_NOT_FOUND),
    },
    summary="Follow a job as server-sent events",
)
async def job_events(job_id: str, jobs: Jobs, owner: Tenant) -> StreamingResponse:
    """``job`` (on each status change), ``page.done`` per finished page (earlier pages first),
    then ``done`` (as ``/v1/ocr``'s stream ends) or ``error`` (the error envelope, as there)."""
    await jobs.get(job_id, owner)  # 404 before the stream starts

    async def encoded() -> AsyncIterator[bytes]:
        async for name, data in jobs.events(job_id, owner):
            if name == "ping":
                yield b": ping\n\n"
                continue
            if name == "error":  # the envelope of /v1/ocr's error event, the job's own code kept
                code = str(data.get("code", ""))
                error = error_class(code)(str(data.get("message", "")), field=data.get("field"))
                data = error_body(
                    type_=error_type(error),
                    code=code,
                    message=error.message,
                    field=error.field,
                    request_id=job_id,
                )
            yield sse(name, data)

    return StreamingResponse(encoded(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses=error_responses(401, 404, descriptions=_NOT_FOUND),
    summary="Cancel a job",
)
async def cancel_job(job_id: str, jobs: Jobs, owner: Tenant) -> JSONResponse:
    """Cancel a queued or running job (its pages stop in the engine); a finished job is left as
    it is, result included. Answers the job either way: its ``status`` says what happened."""
    return JSONResponse(job_json(await jobs.cancel(job_id, owner, delete_finished=False)))


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobOut,
    responses=error_responses(401, 404, descriptions=_NOT_FOUND),
    summary="Cancel or delete a job",
)
async def delete_job(job_id: str, jobs: Jobs, owner: Tenant) -> JSONResponse:
    """Cancel a queued or running job (its pages stop in the engine; ``status: cancelled``), or
    delete a finished one and its result (``deleted: true``; later requests answer 404)."""
    job = await jobs.get(job_id, owner)
    deleted = job.finished
    job = await jobs.cancel(job_id, owner, delete_finished=True)
    body: dict[str, Any] = job_json(job)
    if deleted:
        body["deleted"] = True
    return JSONResponse(body)
