"""The app factory: ``create_app(settings, engine=None)``.

The lifespan owns the engine: it creates it from ``settings.engine`` (unless one is passed in,
as tests do with ``FakeEngine``), starts it (weights, warm-up, self-test) and closes it on
shutdown. A failing start keeps the server up but unready — ``/ready`` and every OCR route
answer 503 ``engine_unavailable`` with the reason — and never falls back to another engine.

Middleware, outermost first: HEAD as GET without the body, metrics (every request, error answer
and abandoned request counted here: dsocr.server.metrics), CORS (only with ``cors_origins``),
request id (uuid4, echoed in ``X-Request-Id``), concurrency limit (``max_concurrency``; 503
``server_busy``; health probes exempt), body-size limit (``Content-Length`` checked up front,
streamed bytes counted; 413 either way), upload gate (large bodies read ``upload_slots`` at a
time, in arrival order: dsocr.server.uploads). For uvicorn:
``uvicorn dsocr.server.app:app_from_env --factory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dsocr import __version__
from dsocr.admission import AdmissionQueue
from dsocr.cache import open_cache
from dsocr.engine.base import Engine
from dsocr.engine.startup import ReportsStart
from dsocr.errors import DsocrError, EngineUnavailable, InputTooLarge, ServerBusy
from dsocr.jobs.manager import job_window
from dsocr.pipeline import Pipeline
from dsocr.request import served_profiles
from dsocr.server import routes_docs, routes_health, routes_jobs, routes_ocr
from dsocr.server.deps import AppState, require_api_key
from dsocr.server.errors import dsocr_error_body, error_headers, http_status, install_error_handlers
from dsocr.server.metrics import Metrics, MetricsMiddleware
from dsocr.server.openapi import install_openapi
from dsocr.server.runs import CACHE_HEADER
from dsocr.server.uploads import UploadGate, UploadSlots, content_length
from dsocr.settings import Settings

__all__ = [
    "BodyTooLarge",
    "ConcurrencyLimitMiddleware",
    "HeadAsGetMiddleware",
    "Server",
    "app_from_env",
    "body_limit_for",
    "create_app",
]

logger = logging.getLogger(__name__)

# Room above the upload limit for base64's 4/3 growth and the JSON or multipart framing.
_BODY_OVERHEAD_BYTES = 64 * 1024
# How much of an over-limit body is read and thrown away so the client sees the 413.
_DRAIN_FACTOR = 4


def body_limit_for(settings: Settings) -> int:
    """Largest request body accepted: a maximal upload sent as base64 in JSON, plus framing."""
    return settings.limits.max_upload_bytes * 4 // 3 + _BODY_OVERHEAD_BYTES


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit.

    An ``HTTPException`` so that FastAPI's body reading re-raises it unchanged; the error
    handlers render it as the ``InputTooLarge`` envelope.
    """

    def __init__(self, error: InputTooLarge) -> None:
        super().__init__(status_code=413, detail=error.message)
        self.error = error


def _too_large(limit: int, size: int | None = None) -> InputTooLarge:
    what = f"request body is {size:,} bytes" if size is not None else "request body is too large"
    return InputTooLarge(
        f"{what}; limit is {limit:,} bytes (DSOCR_LIMITS__MAX_UPLOAD_BYTES, plus base64 and framing)",
        field="body",
    )


class BodyLimitMiddleware:
    """413 for bodies over the limit, without ever holding more than the limit in memory.

    A ``Content-Length`` over the limit is refused before the app runs; a chunked body is
    counted as it streams and refused once it passes the limit. Either way the rest of the body
    is read and discarded (up to ``_DRAIN_FACTOR`` × the limit) so the client, which is still
    sending, gets the 413 instead of a connection reset; past that the connection is closed.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared is not None and declared > self.max_bytes:
            drained = declared <= self.max_bytes * _DRAIN_FACTOR and await _drain(receive, declared)
            request_id = scope.get("state", {}).get("request_id")
            headers = {"X-Request-Id": request_id} if request_id else {}
            if not drained:
                headers["Connection"] = "close"
            error = _too_large(self.max_bytes, declared)
            response = JSONResponse(
                dsocr_error_body(error, request_id), status_code=http_status(error), headers=headers
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, self.max_bytes * _DRAIN_FACTOR - received)
                    raise BodyTooLarge(_too_large(self.max_bytes))
            return message

        await self.app(scope, counting_receive, send)


async def _drain(receive: Receive, budget: int) -> bool:
    """Read and discard the rest of the body; False if it was longer than ``budget`` bytes."""
    seen = 0
    while seen <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return False
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


class RequestIdMiddleware:
    """Give every request a uuid4 id (``request.state.request_id``) and echo it in ``X-Request-Id``.

    The id is always generated here, never taken from the client: engine aborts are by id, so
    ids must not collide.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class ConcurrencyLimitMiddleware:
    """At most ``limit`` requests answered at once (``DSOCR_SERVER__MAX_CONCURRENCY``); more get 503.

    A request holds its place from arrival until its answer ends (an event stream until its last
    event). One over the limit is refused at once with ``server_busy`` and ``Retry-After: 1``,
    before its body is read, rather than queued: a client can retry, or a load balancer try
    another process. Health probes and scrapes (``_UNLIMITED``) are neither counted nor refused,
    so a busy server stays live and ready and its load stays visible.
    """

    _UNLIMITED = frozenset({"/health", "/ready", "/metrics"})

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._UNLIMITED:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            request_id = scope.get("state", {}).get("request_id")
            error = ServerBusy(
                f"the server is answering its maximum of {self.limit} requests at once "
                "(DSOCR_SERVER__MAX_CONCURRENCY); retry shortly",
                retry_after=1,
            )
            response = JSONResponse(
                dsocr_error_body(error, request_id),
                status_code=http_status(error),
                headers=error_headers(error, request_id),
            )
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class HeadAsGetMiddleware:
    """``HEAD`` answers as ``GET`` does, headers and all, without the body (RFC 9110 §9.3.2).

    The app sees a ``GET`` (its routes declare only GET), so the request metrics count it as one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def _include_openai_routes(app: FastAPI) -> None:
    # The OpenAI-compatible routes live in their own module (another front end's translator).
    try:
        from dsocr.server import routes_openai
    except ImportError:  # pragma: no cover - only while that module is not part of the tree
        logger.warning("dsocr.server.routes_openai is not available; /v1/chat/completions is off")
        return
    from fastapi import Depends

    app.include_router(routes_openai.router, dependencies=[Depends(require_api_key)])


# --- web playground (GET / and /static) -------------------------------------------------------
# The page loads only its own files and talks only to this server: model output shown in it is
# untrusted, so the policy blocks inline and remote scripts even if the sanitiser missed something.
_PLAYGROUND_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _mount_playground(app: FastAPI) -> None:
    """``GET /`` serves the playground page; ``/static`` its scripts and styles (shipped in the package)."""
    index = importlib.resources.files("dsocr").joinpath("static", "index.html")

    async def playground() -> HTMLResponse:
        return HTMLResponse(
            index.read_text(encoding="utf-8"),
            headers={"Content-Security-Policy": _PLAYGROUND_CSP, "Cache-Control": "no-cache"},
        )

    app.add_api_route("/", playground, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(packages=[("dsocr", "static")]), name="static")


async def _start_engine(state: AppState, engine: Engine | None) -> None:
    """Create (unless given) and start the engine; on failure record why and stay unready."""
    stage = "created"
    ok = False
    try:
        state.start.begin("creating_engine")
        if engine is None:
            from dsocr.engine.factory import create_engine

            engine = create_engine(state.settings.engine)
        state.engine = engine
        stage = "started"
        if isinstance(engine, ReportsStart):  # it marks its own phases from here on
            engine.start_progress.begin("creating_engine", at=state.start.phase_since)
            state.start = engine.start_progress
        else:
            state.start.begin("starting_engine")
        await engine.start()
        ok = True
    except DsocrError as exc:
        state.unready_reason = f"the engine could not be {stage}: {exc.message}"
        logger.error("engine could not be %s: %s", stage, exc.message)
        return
    except Exception as exc:
        state.unready_reason = f"the engine could not be {stage}: {type(exc).__name__}: {exc}"
        logger.exception("engine could not be %s", stage)
        return
    finally:
        state.start.finish(ok=ok)
        if state.start.ready_after is not None:
            state.metrics.observe_start(state.start.seconds(), state.start.ready_after)
    state.ready = True
    state.unready_reason = ""
    state.metrics.set_engine_ready(True)


def _job_pipeline(state: AppState) -> Pipeline:
    """The pipeline jobs run through: the server's engine, admission and metrics, a few pages of
    a job at a time; it never waits for admission (a job retries, interactive requests go first)."""
    if state.engine is None or not state.ready:
        raise EngineUnavailable(f"The OCR engine is not ready: {state.unready_reason}.", retry_after=5)
    settings = state.settings
    return Pipeline(
        state.engine,
        limits=settings.limits,
        fetch=settings.fetch,
        admission=state.admission,
        observer=state.metrics,
        window=job_window(settings.jobs, state.engine.info),
        cache=state.cache,
    )


async def _start_jobs(state: AppState) -> None:
    """Open the jobs' store and start their workers; if the store cannot be opened (a read-only
    disk, say), the server runs without jobs and ``/v1/jobs`` says why."""
    import sqlite3

    from dsocr.jobs.manager import JobManager

    try:
        jobs = JobManager(state.settings, lambda: _job_pipeline(state))
    except (OSError, sqlite3.Error) as exc:
        state.jobs_unavailable = (
            f"the jobs folder {state.settings.jobs.dir} cannot be used ({exc}); "
            "set DSOCR_JOBS__DIR to a writable folder"
        )
        logger.error("jobs are off: %s", state.jobs_unavailable)
        return
    await jobs.start()
    state.jobs = jobs


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the HTTP app. ``engine`` overrides ``settings.engine`` (tests pass a ``FakeEngine``).

    The engine is started in the lifespan (in the background past ``startup_wait_s``) and
    closed on shutdown, also when its start failed or was cut short (``close`` is idempotent).
    """
    settings = settings if settings is not None else Settings()
    state = AppState(
        settings=settings,
        metrics=Metrics(),
        admission=AdmissionQueue(settings.limits.max_queue, max_pixels=settings.limits.max_inflight_pixels),
        uploads=UploadSlots(settings.server.upload_slots, settings.server.upload_slot_s),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The engine starts in the background so that /health answers while weights load
        # (vLLM takes a minute or more); /ready and the OCR routes say 503 until it is done.
        # Fast engines (fake, CPU) are given a moment so the server opens ready.
        state.cache = await asyncio.to_thread(open_cache, settings, default=True)
        await asyncio.to_thread(served_profiles, settings.engine)  # model directories' config.json
        starting = asyncio.create_task(_start_engine(state, engine), name="dsocr-engine-start")
        await asyncio.wait({starting}, timeout=settings.server.startup_wait_s)
        if settings.jobs.enabled:
            await _start_jobs(state)
        try:
            yield
        finally:
            if state.jobs is not None:
                await state.jobs.close()
                state.jobs = None
            state.ready = False
            state.unready_reason = "the server is shutting down"
            state.metrics.set_engine_ready(False)
            state.metrics.close()
            if not starting.done():
                starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            if state.engine is not None:
                await state.engine.close()
            if state.cache is not None:
                await asyncio.to_thread(state.cache.close)

    app = FastAPI(
        title="dsocr",
        version=__version__,
        description="DeepSeek-OCR server: images and PDFs to markdown, text and layout blocks.",
        lifespan=lifespan,
        # /docs and /openapi.json come from routes_docs (shipped assets, API keys); no ReDoc.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.dsocr = state
    install_error_handlers(app, debug=settings.debug)
    install_openapi(app)
    app.include_router(routes_health.router)
    app.include_router(routes_ocr.router)
    if settings.jobs.enabled:
        app.include_router(routes_jobs.router)
    _include_openai_routes(app)
    app.include_router(routes_docs.router)
    _mount_playground(app)

    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(UploadGate, slots=state.uploads)
    app.add_middleware(BodyLimitMiddleware, max_bytes=body_limit_for(settings))
    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.server.max_concurrency)
    app.add_middleware(RequestIdMiddleware)
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "X-Api-Key", "Content-Type", "Accept"],
            expose_headers=["X-Request-Id", "Retry-After", "Location", CACHE_HEADER],
        )
    # Outside everything else, so that every answer (CORS's and the limits' included) is counted.
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(HeadAsGetMiddleware)
    return app


class Server(uvicorn.Server):
    """uvicorn's server, which also ends the jobs' event streams when told to stop: uvicorn waits
    for open connections before it stops, and a job's stream lasts as long as its job."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        state = getattr(getattr(app, "state", None), "dsocr", None)
        if isinstance(state, AppState) and state.jobs is not None:
            state.jobs.stop_streams()
        super().handle_exit(sig, frame)


def app_from_env() -> FastAPI:
    """Uvicorn factory: settings from ``DSOCR_*`` variables (``--factory``, several workers)."""
    return create_app(Settings())
