"""``/health`` (liveness + engine state), ``/ready`` (503 until the engine is ready), ``/metrics``."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from dsocr import __version__
from dsocr.errors import DsocrError
from dsocr.request import model_name
from dsocr.server.deps import AppState, app_state, require_api_key_for_health, require_api_key_for_metrics
from dsocr.server.openapi import RETRY_AFTER_HEADER, error_responses
from dsocr.server.schemas import ReadyResponse

__all__ = ["router"]

router = APIRouter(tags=["health"])

_CLOSED_PROBES = {401: "DSOCR_SERVER__OPEN_HEALTH is off and the request sent no API key or a wrong one."}


def _engine_description(state: AppState) -> dict[str, Any]:
    description: dict[str, Any] = {
        "kind": state.settings.engine.kind,
        "model": model_name(state.settings.engine),
        "ready": state.ready,
        "reason": None if state.ready else state.unready_reason,
        # The start's phase now and each finished phase's seconds (dsocr.engine.startup).
        "start": state.start.snapshot(),
    }
    if state.engine is not None:
        info = state.engine.info
        # The engine's own model (the CPU engine's recognizer, say) is detail, not the served name.
        description.update(
            name=info.name, engine_model=info.model_id, version=info.version, modes=list(info.modes)
        )
    return description


@router.get(
    "/health",
    dependencies=[Depends(require_api_key_for_health)],
    responses=error_responses(401, descriptions=_CLOSED_PROBES),
)
async def health(state: Annotated[AppState, Depends(app_state)]) -> dict[str, Any]:
    """Liveness: 200 while the process serves HTTP, with the engine's state (ready or why not)."""
    # pid: which server process answered (several share the port with --workers).
    return {"status": "ok", "version": __version__, "pid": os.getpid(), "engine": _engine_description(state)}


async def _unready_reason(state: AppState) -> str | None:
    """Why the engine cannot take requests now (starting, failed, unhealthy); None when ready."""
    if state.engine is None or not state.ready:
        return state.unready_reason
    try:
        await state.engine.check_health()
    except DsocrError as exc:
        return exc.message
    return None


@router.get(
    "/ready",
    dependencies=[Depends(require_api_key_for_health)],
    responses={
        200: {"model": ReadyResponse, "description": "The engine is ready."},
        503: {
            "model": ReadyResponse,
            "description": "The engine is starting, failed to load, or is unhealthy.",
            "headers": RETRY_AFTER_HEADER,
        },
        **error_responses(401, descriptions=_CLOSED_PROBES),
    },
)
async def ready(state: Annotated[AppState, Depends(app_state)]) -> JSONResponse:
    """Readiness: 200 once the engine started and passed its self-test, else 503 with the reason."""
    reason = await _unready_reason(state)
    state.metrics.set_engine_ready(reason is None)
    if reason is not None:
        return JSONResponse(
            {"status": "unready", "reason": reason, "engine": _engine_description(state)},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse({"status": "ready", "engine": _engine_description(state)})


@router.get("/metrics", dependencies=[Depends(require_api_key_for_metrics)], include_in_schema=False)
async def metrics(state: Annotated[AppState, Depends(app_state)]) -> Response:
    """Prometheus text exposition of this app's registry."""
    state.metrics.queue_depth.set(state.admission.depth)
    # Checked now, as /ready would answer: an engine that died since its start reads 0.
    state.metrics.set_engine_ready(await _unready_reason(state) is None)
    engine = state.engine.info.name if state.engine is not None else state.settings.engine.kind
    state.metrics.describe_build(version=__version__, engine=engine, model=model_name(state.settings.engine))
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
