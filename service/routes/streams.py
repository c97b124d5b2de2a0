"""Streams: create, list, inspect, delete and reset them, their tracks and
their latest result (``/v1/streams``, ``/v1/streams/{stream_id}[/tracks|/reset|/latest]``).

A stream's status carries its safety state from the supervisor. Frames are
pushed through ``service.routes.ingest``; zones and separation figures are
``service.routes.safety``; events are ``service.routes.alerts``.
Imports nothing from the app or the other route modules but deps and schemas.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from ..results import overlay_png
from .deps import CAN_MANAGE, CAN_READ, ManagerDep, SupervisorDep
from .schemas import (
    IMAGE_OR_JSON,
    READ_ERRORS,
    STREAM_ERRORS,
    WRITE_ERRORS,
    Overlay,
    StreamCreate,
    error_responses,
)

if TYPE_CHECKING:
    from ..pipeline import StreamPipeline
    from ..supervisor import SafetySupervisor

router = APIRouter(prefix="/v1/streams")


def status_with_safety(pipeline: StreamPipeline, supervisor: SafetySupervisor) -> dict[str, Any]:
    """The pipeline's status with, once the supervisor watches it, its safety state."""
    status = pipeline.status()
    watch = supervisor.watches.get(pipeline.stream_id)
    if watch is not None:
        status["safety"] = {**watch.safety.status(), "config_crc": watch.config_crc}
        status["safety"]["state"] = str(status["safety"]["state"].value)
    return status


@router.post("", status_code=201, dependencies=[CAN_MANAGE], responses=error_responses(*WRITE_ERRORS, 400, 409))
async def create_stream(body: StreamCreate, manager: ManagerDep, supervisor: SupervisorDep) -> dict[str, Any]:
    pipeline = await manager.add(body.id, body.source, body.options, body.zones)
    return status_with_safety(pipeline, supervisor)


@router.get("", dependencies=[CAN_READ], responses=error_responses(*READ_ERRORS))
async def list_streams(manager: ManagerDep, supervisor: SupervisorDep) -> dict[str, Any]:
    return {"streams": [status_with_safety(p, supervisor) for p in manager.pipelines.values()], "safety_rated": False}


@router.get("/{stream_id}", dependencies=[CAN_READ], responses=error_responses(*STREAM_ERRORS))
async def stream_status(stream_id: str, manager: ManagerDep, supervisor: SupervisorDep) -> dict[str, Any]:
    return status_with_safety(manager.get(stream_id), supervisor)


@router.delete("/{stream_id}", status_code=204, dependencies=[CAN_MANAGE], responses=error_responses(*STREAM_ERRORS))
async def delete_stream(stream_id: str, manager: ManagerDep) -> Response:
    await manager.remove(stream_id)
    return Response(status_code=204)


@router.get("/{stream_id}/tracks", dependencies=[CAN_READ], responses=error_responses(*STREAM_ERRORS))
async def stream_tracks(stream_id: str, manager: ManagerDep) -> dict[str, Any]:
    return {"stream_id": stream_id, "tracks": manager.get(stream_id).tracks(), "safety_rated": False}


@router.post("/{stream_id}/reset", dependencies=[CAN_MANAGE], responses=error_responses(*WRITE_ERRORS))
async def reset_stream(stream_id: str, manager: ManagerDep, supervisor: SupervisorDep) -> dict[str, Any]:
    """Forget tracks and cache, and release a latched PROTECTIVE_STOP (unless a
    person is still in the protective zone or frames are not flowing)."""
    pipeline = manager.get(stream_id)
    pipeline.reset("requested")
    result = supervisor.reset(stream_id)
    result["state"] = str(result["state"].value)
    return {**status_with_safety(pipeline, supervisor), "reset": result}


@router.get("/{stream_id}/latest", response_model=None, dependencies=[CAN_READ],
            responses={200: IMAGE_OR_JSON, **error_responses(*STREAM_ERRORS)})
async def latest(stream_id: str, manager: ManagerDep, overlay: Overlay = None) -> Any:
    pipeline = manager.get(stream_id)
    if pipeline.latest is None:
        raise HTTPException(404, f"stream {stream_id!r} has no processed frame yet")
    if overlay is None:
        return pipeline.latest
    png = await asyncio.to_thread(overlay_png, pipeline.latest_image, pipeline.latest)
    return Response(png, media_type="image/png")
