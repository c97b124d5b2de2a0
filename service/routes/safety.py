"""A stream's safety configuration and figures: its zone set
(``GET/PUT /v1/streams/{stream_id}/zones``) and the ISO/TS 15066 protective
separation distance with its measured latency (``GET .../safety``).

Zone sets are validated by ``service.zones`` through the supervisor, which
owns the installed ones. Imports nothing from the app or the other route
modules but deps and schemas.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from ..config import SeparationSettings
from ..separation import (
    check_protective_distance,
    protective_separation_distance,
    reaction_time_s,
)
from ..supervisor import ZoneError
from .deps import CAN_MANAGE, CAN_READ, ManagerDep, SettingsDep, SupervisorDep
from .schemas import STREAM_ERRORS, WRITE_ERRORS, ZONES_SCHEMA, error_responses

router = APIRouter(prefix="/v1/streams/{stream_id}")

_ZONES_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": ZONES_SCHEMA}}}}


@router.get("/zones", dependencies=[CAN_READ], responses=error_responses(*STREAM_ERRORS))
async def get_zones(stream_id: str, manager: ManagerDep, supervisor: SupervisorDep) -> dict[str, Any]:
    manager.get(stream_id)
    watch = supervisor.watches[stream_id]
    return {"stream_id": stream_id, "zones": watch.zones.to_dict() if watch.zones else None,
            "config_crc": watch.config_crc}


@router.put("/zones", dependencies=[CAN_MANAGE], responses=error_responses(*WRITE_ERRORS), openapi_extra=_ZONES_BODY)
async def put_zones(stream_id: str, request: Request, manager: ManagerDep, supervisor: SupervisorDep) -> dict[str, Any]:
    manager.get(stream_id)
    try:
        spec = await request.json()
    except ValueError as exc:
        raise HTTPException(422, f"zones must be JSON: {exc}") from exc
    except RecursionError:
        raise HTTPException(422, "zones JSON is nested too deeply") from None
    try:  # O(vertices^2) at worst: off the event loop, so other streams' alerts keep flowing
        zones = await asyncio.to_thread(supervisor.validate_zones, spec)
    except ZoneError as exc:
        raise HTTPException(422, str(exc)) from exc
    manager.get(stream_id)  # deleted while it was being validated: 404, install nothing
    supervisor.install_zones(stream_id, zones)
    return {"stream_id": stream_id, "zones": zones.to_dict(), "config_crc": zones.crc_hex}


@router.get("/safety", dependencies=[CAN_READ], responses=error_responses(*STREAM_ERRORS))
async def safety_figures(stream_id: str, manager: ManagerDep, settings: SettingsDep) -> dict[str, Any]:
    """ISO/TS 15066 protective separation distance with this stream's measured p99 latency."""
    p99 = manager.get(stream_id).latency.summary()["p99"]
    return {"stream_id": stream_id, **separation_figures(settings.separation, p99)}


def separation_figures(sep: SeparationSettings, p99_ms: float | None) -> dict[str, Any]:
    """The required distance for a measured p99 latency (None: none measured
    yet), the configured protective distance checked against it, and warnings."""
    t_r = reaction_time_s(sep.plc_and_robot_s, p99_ms or 0.0)
    required = protective_separation_distance(sep.v_h_mm_s, sep.v_r_mm_s, t_r, sep.t_s_s, sep.s_s_mm,
                                              sep.c_mm, sep.z_d_mm, sep.z_r_mm)
    body: dict[str, Any] = {
        "measured_p99_ms": p99_ms,
        "reaction_time_s": t_r,
        "protective_separation_mm": required.s_p_mm,
        "formula": required.formula,
        "inputs": sep.model_dump(),
        "safety_rated": False,
    }
    warnings = []
    if p99_ms is None:
        warnings.append("no latency measured yet: T_r holds only the PLC and robot time")
    if sep.protective_distance_mm is not None:
        check = check_protective_distance(sep.protective_distance_mm, body["protective_separation_mm"])
        body["check"] = check
        if check["warning"]:
            warnings.append(check["warning"])
    body["warnings"] = warnings
    return body
