"""Operations: ``/healthz`` (the process answers), ``/readyz`` (the engine is
loaded and warm, or why start-up failed) and ``/metrics`` (Prometheus text).

Reads the service state through ``service.routes.deps`` only; imports nothing
from the app or the other route modules.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .deps import CAN_READ, MetricsDep, StateDep
from .schemas import ERROR_MEANINGS, ReadyStatus

router = APIRouter()

_ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
# A plain-text route whose refusals (401/403 from require()) are ErrorBody JSON.
_METRICS_RESPONSES = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "Prometheus text exposition format 0.0.4"},
    **{code: {"description": ERROR_MEANINGS[code], "content": {"application/json": {"schema": _ERROR_BODY}}}
       for code in (401, 403)},
}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz", response_model=ReadyStatus,
            responses={503: {"model": ReadyStatus, "description": ERROR_MEANINGS[503]}})
async def readyz(state: StateDep) -> JSONResponse:
    if state.failed:
        return JSONResponse({"status": "failed", "error": state.failed}, status_code=503)
    if not state.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse({"status": "ready", "engine": state.engine.name})


@router.get("/metrics", dependencies=[CAN_READ], response_class=PlainTextResponse, responses=_METRICS_RESPONSES)
async def prometheus(metrics: MetricsDep) -> Response:
    return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")
