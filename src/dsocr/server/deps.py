"""Request dependencies: the app's state, the ready engine, API-key auth.

Routes (native, ``/predict`` and the OpenAI-compatible ones) get what they need through these
functions instead of reaching into ``app.state`` themselves::

    @router.post("/v1/things", dependencies=[Depends(require_api_key)])
    async def things(engine: Annotated[Engine, Depends(ready_engine)]) -> ...
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from dsocr.admission import AdmissionQueue
from dsocr.cache import PageCache
from dsocr.engine.base import Engine
from dsocr.engine.startup import StartProgress
from dsocr.errors import EngineUnavailable, Unauthorized
from dsocr.pipeline import Pipeline
from dsocr.server.errors import LoginRequired
from dsocr.server.metrics import Metrics
from dsocr.server.uploads import UploadSlots
from dsocr.settings import Settings

if TYPE_CHECKING:
    from dsocr.jobs.manager import JobManager

__all__ = [
    "AppState",
    "app_state",
    "check_api_key",
    "ready_engine",
    "ready_pipeline",
    "require_api_key",
    "require_api_key_for_docs",
    "require_api_key_for_health",
    "require_api_key_for_metrics",
    "tenant",
]


@dataclass(kw_only=True)
class AppState:
    """Everything one app owns, kept on ``app.state.dsocr``.

    ``engine`` is set once the lifespan created it; ``ready`` turns true when ``start()``
    (weights, warm-up, self-test) succeeded. ``unready_reason`` says why not, for /health,
    /ready and the 503 body of OCR routes. ``cache`` is the result cache the lifespan opened
    (``None`` when ``DSOCR_CACHE__ENABLED`` is false).
    """

    settings: Settings
    metrics: Metrics
    admission: AdmissionQueue
    uploads: UploadSlots
    engine: Engine | None = None
    cache: PageCache | None = None
    ready: bool = False
    unready_reason: str = "the engine is starting"
    # Background jobs (``settings.jobs``), once started.
    jobs: JobManager | None = None
    jobs_unavailable: str = "the server is starting"
    # The engine's start, phase by phase (/health's engine.start, dsocr_engine_start_seconds).
    start: StartProgress = field(default_factory=StartProgress)
    # Request ids currently running, for debugging and the in-flight gauge.
    active: set[str] = field(default_factory=set)


# The dependencies are ``async def`` although they never await: FastAPI runs plain ``def``
# dependencies in a worker thread, which cost ~0.2 ms of CPU per request (bench_server.py).


async def app_state(request: Request) -> AppState:
    """The state of the app serving ``request``."""
    state = request.app.state.dsocr
    assert isinstance(state, AppState)
    return state


async def ready_engine(state: Annotated[AppState, Depends(app_state)]) -> Engine:
    """The engine, or ``EngineUnavailable`` (503 + reason) while it is not ready."""
    if state.engine is None or not state.ready:
        raise EngineUnavailable(f"The OCR engine is not ready: {state.unready_reason}.", retry_after=5)
    return state.engine


async def ready_pipeline(state: Annotated[AppState, Depends(app_state)]) -> Pipeline:
    """The pipeline over the ready engine, with the server's admission, metrics and result cache."""
    engine = await ready_engine(state)
    limits = state.settings.limits
    return Pipeline(
        engine,
        limits=limits,
        fetch=state.settings.fetch,
        admission=state.admission,
        admission_wait_s=limits.admission_wait_s,
        observer=state.metrics,
        cache=state.cache,
    )


def _presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer``, ``X-Api-Key`` or HTTP Basic (the password).

    Basic is how a browser sends it after asking for a login (``/docs``), and how it resends it
    to the same server afterwards (Swagger's "Try it out"); the user name is ignored, and a key
    given as the user name with no password (``curl -u KEY:``) is taken too.
    """
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
        if scheme.lower() == "basic" and token:
            return _basic_password(token)
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def _basic_password(token: str) -> str:
    try:
        user, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ""  # compared like any other key, and matches none
    return password or user


def check_api_key(settings: Settings, presented: str | None) -> None:
    """Raise ``Unauthorized`` unless ``presented`` is one of the configured keys (if any are).

    Every configured key is compared in constant time (``hmac.compare_digest``), and all of
    them are always compared, so timing reveals neither the key nor which one matched.
    """
    keys = settings.server.api_keys
    if not keys:
        return
    if presented is None:
        raise Unauthorized(
            "This server requires an API key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'."
        )
    given = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.get_secret_value().encode())
    if not matched:
        raise Unauthorized("The API key is not valid.")


async def require_api_key(request: Request, state: Annotated[AppState, Depends(app_state)]) -> None:
    """Dependency for protected routes (all OCR routes)."""
    check_api_key(state.settings, _presented_key(request))


async def require_api_key_for_health(
    request: Request, state: Annotated[AppState, Depends(app_state)]
) -> None:
    """Health probes are open unless ``settings.server.open_health`` is off."""
    if not state.settings.server.open_health:
        check_api_key(state.settings, _presented_key(request))


async def require_api_key_for_docs(request: Request, state: Annotated[AppState, Depends(app_state)]) -> None:
    """The API docs follow the keys unless ``settings.server.open_docs`` is on.

    Refused with a Basic challenge, so that a browser opening ``/docs`` asks for the key.
    """
    if state.settings.server.open_docs:
        return
    try:
        check_api_key(state.settings, _presented_key(request))
    except Unauthorized as exc:
        raise LoginRequired(
            f"{exc.message} In a browser, enter the key as the password (any user name)."
        ) from None


async def require_api_key_for_metrics(
    request: Request, state: Annotated[AppState, Depends(app_state)]
) -> None:
    """Metrics are open unless ``settings.server.open_metrics`` is off."""
    if not state.settings.server.open_metrics:
        check_api_key(state.settings, _presented_key(request))


async def tenant(request: Request, state: Annotated[AppState, Depends(app_state)]) -> str:
    """Who owns what a request stores (its jobs, its cached pages): an opaque id of its API key.

    ``""`` when the server has no keys (one tenant). Call after ``require_api_key``: the key is
    then one of the configured ones. The id is a hash, so storage never holds a key.
    """
    if not state.settings.server.api_keys:
        return ""
    presented = _presented_key(request) or ""
    return hashlib.sha256(b"dsocr-tenant\0" + presented.encode()).hexdigest()[:32]
