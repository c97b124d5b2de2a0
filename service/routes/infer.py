"""One frame, no stream memory: ``POST /v1/infer[?overlay=png]``.

The body is a JPEG or PNG (raw, or the one file of a multipart form); it runs
through the same batching engine as the streams, without tracking, and is
answered as JSON detections or, with ``overlay=png``, the frame drawn with them.
Imports nothing from the app or the other route modules but deps and schemas;
``export.ort_runtime`` (frame preparation) lazily, as the engines do.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from models.stream_step import prepare_frame

from ..config import LimitSettings
from ..engines.base import FrameInput
from ..results import ImageError, decode_image, frame_result, overlay_png
from .deps import CAN_READ, SettingsDep, StateDep
from .schemas import IMAGE_OR_JSON, READ_ERRORS, Overlay, error_responses

IMAGE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")

router = APIRouter(prefix="/v1")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "image/jpeg": _BINARY,
    "image/png": _BINARY,
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
}}}


@router.post("/infer", response_model=None, dependencies=[CAN_READ], openapi_extra=_IMAGE_BODY,
             responses={200: IMAGE_OR_JSON, **error_responses(*READ_ERRORS, 400, 413, 415, 422)})
async def infer(request: Request, state: StateDep, settings: SettingsDep, overlay: Overlay = None) -> Any:
    data = await _image_bytes(request)
    started = time.perf_counter()
    image = await _decode(data, settings.limits)
    decoded = time.perf_counter()
    engine = state.engine
    if not state.ready:  # only now: a bad upload is answered 4xx even while starting
        raise HTTPException(503, "the service is starting")
    item = FrameInput(await asyncio.to_thread(prepare_frame, image, engine.input_size), engine.empty_cache())
    output = await state.batching.infer(item)
    inferred = time.perf_counter()
    result = await asyncio.to_thread(
        frame_result, output, None, engine.classes, image.shape[:2], engine.input_size,
        score_thresh=settings.pipeline.score_thresh,
    )
    result["timing"] = {
        "decode_ms": round((decoded - started) * 1000.0, 2),
        "inference_ms": round((inferred - decoded) * 1000.0, 2),
        "total_ms": round((time.perf_counter() - started) * 1000.0, 2),
    }
    result["safety_rated"] = False
    if overlay == "png":
        return Response(await asyncio.to_thread(overlay_png, image, result), media_type="image/png")
    return result


async def _image_bytes(request: Request) -> bytes:
    """The uploaded image: the raw body, or a multipart form's one file; 400 or 415 otherwise."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        uploads = [v for v in form.values() if hasattr(v, "read")]
        if len(uploads) != 1:
            raise HTTPException(400, f"multipart body must hold exactly one file, got {len(uploads)}")
        return await uploads[0].read()
    if content_type in IMAGE_TYPES:
        return await request.body()
    raise HTTPException(
        415, f"unsupported content type {content_type or '(none)'!r}; send image/jpeg, image/png or multipart"
    )


async def _decode(data: bytes, limits: LimitSettings) -> np.ndarray:
    """The BGR frame, off the event loop; 413 for an image over the limits, 400 for one that is not an image."""
    try:
        return await asyncio.to_thread(decode_image, data, limits.max_frame_bytes, limits.max_pixels, limits.max_side)
    except ImageError as exc:
        status = 413 if "exceeds" in str(exc) or "too large" in str(exc) else 400
        raise HTTPException(status, str(exc)) from exc
