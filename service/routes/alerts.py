"""Events: a stream's page of kept events (``GET /v1/streams/{stream_id}/events``)
and the live feed of chosen streams (WebSocket ``/v1/alerts``), replayed from ``since``.

Events are schema ``cellwatch.event/1`` (``service.events``); the send loop
and its slow-subscriber rule (close 1013) are ``service.alert_feed.pump``.
Imports nothing from the app or the other route modules but deps and schemas.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from ..alert_feed import pump
from ..auth import authorize_websocket
from ..events import MAX_SEQ, EventBus, Subscription
from .deps import CAN_READ, BusDep, ManagerDep, SupervisorDep
from .schemas import (
    STREAM_ERRORS,
    WS_POLICY,
    WS_UNKNOWN_STREAM,
    EventsPage,
    error_responses,
)

log = logging.getLogger("cellwatch.app")

router = APIRouter(prefix="/v1")


@router.get("/streams/{stream_id}/events", dependencies=[CAN_READ], response_model=EventsPage,
            response_model_by_alias=True, responses=error_responses(*STREAM_ERRORS))
async def stream_events(
    stream_id: str,
    manager: ManagerDep,
    bus: BusDep,
    since: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="events with seq > since")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    masks: Annotated[int, Query(ge=0, le=1, description="1: include person masks")] = 0,
) -> dict[str, Any]:
    manager.get(stream_id)
    events, gap = bus.events_since(stream_id, since, limit, bool(masks))
    return {"stream_id": stream_id, "events": events, "gap": gap, "last_seq": bus.last_seq(stream_id)}


@router.websocket("/alerts")
async def alerts(websocket: WebSocket, bus: BusDep, supervisor: SupervisorDep) -> None:
    """Events of the chosen streams (all by default), replayed from ``since``."""
    if await authorize_websocket(websocket, "read", None) is None:
        return
    await websocket.accept()
    query = await _read_query(websocket)
    if query is None:
        return
    streams, since, masks = query
    unknown = [s for s in streams if s not in supervisor.watches]
    if unknown:
        await websocket.send_json({"error": f"unknown stream(s) {unknown}"})
        await websocket.close(WS_UNKNOWN_STREAM, "unknown stream")
        return
    subscription = bus.subscribe(streams or None, since, masks)
    watcher = asyncio.create_task(_unsubscribe_when_gone(websocket, bus, subscription))
    try:
        ended = await pump(subscription, websocket.send_json, websocket.close)
    except (WebSocketDisconnect, RuntimeError) as exc:
        log.info("alerts subscriber gone", extra={"error": f"{type(exc).__name__}: {exc}"})
        return
    finally:
        watcher.cancel()
        bus.unsubscribe(subscription)
    if ended != "unsubscribed":
        log.info("alerts subscriber closed with 1013", extra={"error": f"too slow: {ended}"})


async def _read_query(websocket: WebSocket) -> tuple[list[str], int | None, bool] | None:
    """``(streams, since, masks)`` from the query, or None after closing with 1008 on a bad ``since``."""
    params = websocket.query_params
    try:
        since = int(params["since"]) if params.get("since") not in (None, "") else None
        masks = params.get("masks", "0") in ("1", "true")
        if since is not None and not 0 <= since <= MAX_SEQ:
            raise ValueError
    except ValueError:
        await websocket.send_json({"error": f"since must be an integer sequence number in 0..{MAX_SEQ}"})
        await websocket.close(WS_POLICY, "bad query: since")
        return None
    return [s for s in params.get("streams", "").split(",") if s], since, masks


async def _unsubscribe_when_gone(websocket: WebSocket, bus: EventBus, subscription: Subscription) -> None:
    # The handler only sends; this notices a client that left, even
    # when no event comes to fail a send (e.g. its streams were deleted).
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
    except Exception:  # noqa: BLE001 - any receive failure means the client is gone
        pass
    bus.unsubscribe(subscription)
