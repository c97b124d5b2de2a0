"""Pushed frames: WebSocket ``/v1/streams/{stream_id}/ingest``.

Each binary message is an 8-byte capture time and a JPEG/PNG (framing in
``service.framing``); a decoded frame is offered to the stream's pipeline
(newest frame wins). A bad frame is reported to the sender and to the
supervisor and the connection stays open; a text message, an oversized frame,
an unknown or pulled stream, or the stream's deletion closes it.
Imports nothing from the app or the other route modules but deps and schemas.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..auth import authorize_websocket
from ..framing import decode_frame
from ..results import ImageError, decode_image
from ..streams import PUSH
from .deps import ServiceState, StateDep
from .schemas import WS_NOT_PUSH, WS_TOO_BIG, WS_UNKNOWN_STREAM, WS_UNSUPPORTED

if TYPE_CHECKING:
    from ..pipeline import StreamPipeline

router = APIRouter(prefix="/v1/streams")


@router.websocket("/{stream_id}/ingest")
async def ingest(websocket: WebSocket, stream_id: str, state: StateDep) -> None:
    if await authorize_websocket(websocket, "push", stream_id) is None:
        return
    await websocket.accept()
    pipeline = await _push_pipeline(websocket, state, stream_id)
    if pipeline is None:
        return
    limits, metrics, supervisor = state.settings.limits, state.metrics, state.supervisor
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                await websocket.send_json({"error": "frames are binary messages: 8-byte capture time + JPEG/PNG"})
                await websocket.close(WS_UNSUPPORTED, "binary frames only")
                return
            if len(data) > limits.max_frame_bytes + 8:
                metrics.rejected(stream_id)
                await websocket.send_json({"error": f"frame of {len(data)} bytes exceeds {limits.max_frame_bytes}"})
                await websocket.close(WS_TOO_BIG, "frame too large")
                return
            started = time.perf_counter()
            try:
                capture_ts, payload = decode_frame(data)
                image = await asyncio.to_thread(
                    decode_image, payload, limits.max_frame_bytes, limits.max_pixels, limits.max_side
                )
            except (ValueError, ImageError) as exc:
                metrics.rejected(stream_id)
                supervisor.on_bad_frame(stream_id, str(exc))
                await websocket.send_json({"error": str(exc)})
                continue
            if stream_id not in state.manager.pipelines:
                await websocket.close(WS_UNKNOWN_STREAM, "stream deleted")
                return
            pipeline.offer(image, capture_ts, (time.perf_counter() - started) * 1000.0)
    except WebSocketDisconnect:
        return


async def _push_pipeline(websocket: WebSocket, state: ServiceState, stream_id: str) -> StreamPipeline | None:
    """The stream's pipeline, or None after closing: 4404 for an unknown stream, 4409 for a pulled one."""
    # No 503 while starting: a camera that connects before start-up is done hears 4404 "unknown stream".
    pipeline = state.manager.pipelines.get(stream_id) if state.manager else None
    if pipeline is None:
        await websocket.send_json({"error": f"unknown stream {stream_id!r}"})
        await websocket.close(WS_UNKNOWN_STREAM, "unknown stream")
        return None
    if pipeline.source != PUSH:
        await websocket.send_json({"error": f"stream {stream_id!r} pulls from {pipeline.source}; it takes no pushed frames"})
        await websocket.close(WS_NOT_PUSH, "not a push stream")
        return None
    return pipeline
