"""The FastAPI application: ``create_app(settings, engine=None)``.

Routes (all JSON carries ``"safety_rated": false`` where it reports results):

* streams: ``POST/GET /v1/streams``, ``GET/DELETE /v1/streams/{id}``,
  ``GET /v1/streams/{id}/tracks``, ``POST /v1/streams/{id}/reset``,
  ``GET /v1/streams/{id}/latest[?overlay=png]``,
  WebSocket ``/v1/streams/{id}/ingest`` (push; framing in ``service.framing``);
* single frame: ``POST /v1/infer[?overlay=png]`` (stateless);
* operations: ``/healthz``, ``/readyz``, ``/metrics``.

The engine is created (unless one is passed in) and warmed up in the
lifespan, before streams from the configuration start; ``/readyz`` answers
503 until then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .alert_feed import pump
from .auth import Authenticator, authorize_websocket, require
from .config import STREAM_ID_RULE, Settings
from .engines.base import Engine, FrameInput
from .engines.batching import BatchingEngine
from .events import MAX_SEQ, Event, EventBus
from .framing import decode_frame
from .metrics import ServiceMetrics
from .request_guard import BodyGuard
from .results import ImageError, decode_image, frame_result, overlay_png
from .separation import check_protective_distance, protective_separation_distance, reaction_time_s
from .streams import PUSH, StreamError, StreamManager
from .supervisor import SafetySupervisor, ZoneError

log = logging.getLogger("cellwatch.app")

IMAGE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
WS_UNKNOWN_STREAM = 4404
WS_NOT_PUSH = 4409
WS_UNSUPPORTED = 1003
WS_TOO_BIG = 1009
WS_POLICY = 1008
MULTIPART_OVERHEAD = 65536  # an image upload's limit: limits.max_frame_bytes plus room for multipart headers


class EventsPage(BaseModel):
    """A page of a stream's events (schema ``cellwatch.event/1``, also in service/schemas/event.schema.json)."""

    stream_id: str
    events: list[Event]
    gap: Event | None = Field(None, description="when events after `since` are no longer kept")
    last_seq: int


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer of the HTTP API."""

    detail: str = Field(description="what was wrong, naming the field or the input")
    errors: list[dict[str, Any]] | None = Field(
        None, description="request validation (422) only: each problem's location (loc), message (msg) and type")


class ReadyStatus(BaseModel):
    status: str = Field(description="ready | starting | failed")
    engine: str | None = None
    error: str | None = Field(None, description="why start-up failed")


_ERROR_MEANINGS = {
    400: "the body could not be read (malformed JSON, multipart or image)",
    401: "no bearer token, or one that is not configured",
    403: "the token's role may not do this",
    404: "no such stream (or nothing to show yet)",
    409: "the stream exists already, or the stream limit is reached",
    413: "the body is larger than the configured limit",
    415: "unsupported content type",
    422: "invalid input; `detail` names the field",
    503: "the service is starting (engine loading) or its start-up failed",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, all with the ErrorBody shape."""
    return {code: {"model": ErrorBody, "description": _ERROR_MEANINGS[code]} for code in codes}


_READ = (401, 403, 503)  # any route behind require() and the stream manager
_STREAM = (*_READ, 404, 422)
_WRITE = (*_STREAM, 413)  # body methods pass BodyGuard's size limit
_IMAGE_OR_JSON = {"content": {"application/json": {}, "image/png": {}},
                  "description": "the result as JSON, or with overlay=png the frame drawn with it"}


_POINTS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}}
_RING = {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
         "properties": {"polygon": {**_POINTS, "minItems": 3}, "distance": {"type": "number", "exclusiveMinimum": 0}}}
# The shape of a zone set; what a schema cannot say (a simple polygon, rings
# that enclose each other, a well-conditioned homography) is checked by
# service.zones and answered 422 with the reason.
ZONES_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["units", "hazard"],
    "description": "hazard polygon, optional protective and warning rings (a polygon or a distance), in "
                   "pixels or in floor metres through a homography from >= 4 image/floor point pairs",
    "properties": {
        "units": {"enum": ["pixels", "metres"]},
        "hazard": {**_POINTS, "minItems": 3},
        "protective": _RING,
        "warning": _RING,
        "homography": {"type": "object", "additionalProperties": False, "required": ["image", "floor"],
                       "properties": {"image": {**_POINTS, "minItems": 4}, "floor": {**_POINTS, "minItems": 4}}},
    },
}

Overlay = Annotated[Literal["png"] | None, Query(description="png: the frame drawn with its result, as PNG")]


class StreamCreate(BaseModel):
    # a misspelt field (e.g. "zone") must not create a stream that can never warn
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., description=STREAM_ID_RULE, min_length=1, max_length=64,
                    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # as config.STREAM_ID (Rust regex: $ is the end)
    source: str = Field(PUSH, description="'push', rtsp://..., http(s)://... (MJPEG) or a file path")
    options: dict[str, Any] = Field(default_factory=dict, description="source options, e.g. loop, fps")
    zones: dict[str, Any] | None = Field(None, description="zone set (see PUT /v1/streams/{id}/zones)",
                                         json_schema_extra={"anyOf": [ZONES_SCHEMA, {"type": "null"}]})


def _engine_from_settings(settings: Settings) -> Engine:
    from .engines import create_engine

    model = settings.model
    if not model.path:
        raise RuntimeError("no model configured: set model.path (or pass --model)")
    options: dict[str, Any] = {}
    if model.engine == "torch":
        from export.spec import parse_size

        options["frame_size"] = parse_size(model.frame_size)
    if model.engine == "tensorrt" and model.sidecar:
        options["sidecar"] = model.sidecar
    return create_engine(model.engine, model.path, threads=model.threads, **options)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    metrics = ServiceMetrics()
    state: dict[str, Any] = {"ready": False, "engine": engine, "manager": None, "batching": None}
    bus = EventBus(settings.events.history, settings.events.queue_size)
    supervisor = SafetySupervisor(bus, settings.safety, settings.events.heartbeat_ms,
                                  settings.limits.max_zone_vertices)

    async def start() -> None:
        """Load and warm up the engine, then start the configured streams."""
        nonlocal engine
        try:
            if engine is None:
                engine = await asyncio.to_thread(_engine_from_settings, settings)
            state["engine"] = engine
            batching = BatchingEngine(
                engine, settings.batching.max_batch, settings.batching.max_wait_ms, on_batch=metrics.batch
            )
            state["batching"] = batching
            # The first run allocates and plans; do it before declaring ready.
            height, width = engine.input_size
            await batching.infer(FrameInput(np.zeros((3, height, width), np.float32), engine.empty_cache()))
            manager = StreamManager(engine, batching, settings.pipeline, settings.limits, metrics, supervisor=supervisor,
                                    source_settings=settings.sources)
            for stream in settings.streams:
                await manager.add(stream.id, stream.source, stream.options, stream.zones)
            supervisor.start()
            state["manager"] = manager
            state["ready"] = True
            log.info("ready", extra={"engine": engine.name, "streams": len(settings.streams)})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported by /readyz and the log; the process stays up for inspection
            state["failed"] = f"{type(exc).__name__}: {exc}"
            log.error("start-up failed", extra={"error": state["failed"]})

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Start-up runs in the background so /healthz answers at once and
        # /readyz says 503 until the model is loaded and warm.
        starting = asyncio.create_task(start(), name="start-up")
        try:
            yield
        finally:
            state["ready"] = False
            starting.cancel()
            try:
                await starting
            except asyncio.CancelledError:
                pass
            await supervisor.stop()
            if state["manager"] is not None:
                await state["manager"].close()
            if state["batching"] is not None:
                state["batching"].close()
            if state["engine"] is not None:
                state["engine"].close()
            log.info("stopped")

    app = FastAPI(
        title="cellwatch",
        version="0.1.0",
        description="Advisory person segmentation, tracking and proximity alerts for robot cells. "
        "NOT a safety function: every result carries safety_rated=false.",
        lifespan=lifespan,
    )
    app.state.cellwatch = state
    app.state.events = bus
    app.state.supervisor = supervisor
    app.state.metrics = metrics
    app.state.auth = Authenticator(settings.auth)
    app.add_middleware(BodyGuard, auth=app.state.auth, json_limit=settings.limits.max_json_bytes,
                       upload_limit=settings.limits.max_frame_bytes + MULTIPART_OVERHEAD, upload_paths=("/v1/infer",))
    read, manage = Depends(require("read")), Depends(require("manage"))

    def manager() -> StreamManager:
        if state["manager"] is None:
            raise HTTPException(503, "the service is starting")
        return state["manager"]

    @app.exception_handler(StreamError)
    async def _stream_error(_: Request, exc: StreamError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        # Each method of a path is its own route, so Starlette's 405 names only
        # the one route it matched; Allow must list every method of the path.
        allowed = sorted({method for route in app.routes if isinstance(route, APIRoute)
                          and route.path_regex.match(request.url.path) for method in route.methods})
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)})

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # One shape for every error: a readable detail naming the fields, plus
        # the structured list (without the inputs, which may be large or secret).
        problems = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                    for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in problems)
        return JSONResponse({"detail": detail or "invalid request", "errors": problems}, status_code=422)

    # ---------------------------------------------------------- operations
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", response_model=ReadyStatus,
             responses={503: {"model": ReadyStatus, "description": _ERROR_MEANINGS[503]}})
    async def readyz() -> JSONResponse:
        if state.get("failed"):
            return JSONResponse({"status": "failed", "error": state["failed"]}, status_code=503)
        if not state["ready"]:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "engine": state["engine"].name})

    @app.get("/metrics", dependencies=[read], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format 0.0.4"},
                        **{code: {"description": _ERROR_MEANINGS[code], "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorBody"}}}} for code in (401, 403)}})
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------- streams
    @app.post("/v1/streams", status_code=201, dependencies=[manage], responses=_errors(*_WRITE, 400, 409))
    async def create_stream(body: StreamCreate) -> dict[str, Any]:
        pipeline = await manager().add(body.id, body.source, body.options, body.zones)
        return _status(pipeline)

    @app.get("/v1/streams", dependencies=[read], responses=_errors(*_READ))
    async def list_streams() -> dict[str, Any]:
        return {"streams": [_status(p) for p in manager().pipelines.values()], "safety_rated": False}

    def _status(pipeline) -> dict[str, Any]:
        status = pipeline.status()
        watch = supervisor.watches.get(pipeline.stream_id)
        if watch is not None:
            status["safety"] = {**watch.safety.status(), "config_crc": watch.config_crc}
            status["safety"]["state"] = str(status["safety"]["state"].value)
        return status

    @app.get("/v1/streams/{stream_id}", dependencies=[read], responses=_errors(*_STREAM))
    async def stream_status(stream_id: str) -> dict[str, Any]:
        return _status(manager().get(stream_id))

    @app.delete("/v1/streams/{stream_id}", status_code=204, dependencies=[manage], responses=_errors(*_STREAM))
    async def delete_stream(stream_id: str) -> Response:
        await manager().remove(stream_id)
        return Response(status_code=204)

    @app.get("/v1/streams/{stream_id}/tracks", dependencies=[read], responses=_errors(*_STREAM))
    async def stream_tracks(stream_id: str) -> dict[str, Any]:
        return {"stream_id": stream_id, "tracks": manager().get(stream_id).tracks(), "safety_rated": False}

    @app.post("/v1/streams/{stream_id}/reset", dependencies=[manage], responses=_errors(*_WRITE))
    async def reset_stream(stream_id: str) -> dict[str, Any]:
        """Forget tracks and cache, and release a latched PROTECTIVE_STOP (unless a
        person is still in the protective zone or frames are not flowing)."""
        pipeline = manager().get(stream_id)
        pipeline.reset("requested")
        result = supervisor.reset(stream_id)
        result["state"] = str(result["state"].value)
        return {**_status(pipeline), "reset": result}

    @app.get("/v1/streams/{stream_id}/zones", dependencies=[read], responses=_errors(*_STREAM))
    async def get_zones(stream_id: str) -> dict[str, Any]:
        manager().get(stream_id)
        watch = supervisor.watches[stream_id]
        return {"stream_id": stream_id, "zones": watch.zones.to_dict() if watch.zones else None,
                "config_crc": watch.config_crc}

    @app.put("/v1/streams/{stream_id}/zones", dependencies=[manage], responses=_errors(*_WRITE),
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": ZONES_SCHEMA}}}})
    async def put_zones(stream_id: str, request: Request) -> dict[str, Any]:
        manager().get(stream_id)
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
        manager().get(stream_id)  # deleted while it was being validated: 404, install nothing
        supervisor.install_zones(stream_id, zones)
        return {"stream_id": stream_id, "zones": zones.to_dict(), "config_crc": zones.crc_hex}

    @app.get("/v1/streams/{stream_id}/safety", dependencies=[read], responses=_errors(*_STREAM))
    async def safety_figures(stream_id: str) -> dict[str, Any]:
        """ISO/TS 15066 protective separation distance with this stream's measured p99 latency."""
        pipeline = manager().get(stream_id)
        sep = settings.separation
        p99 = pipeline.latency.summary()["p99"]
        t_r = reaction_time_s(sep.plc_and_robot_s, p99 or 0.0)
        required = protective_separation_distance(sep.v_h_mm_s, sep.v_r_mm_s, t_r, sep.t_s_s, sep.s_s_mm,
                                                  sep.c_mm, sep.z_d_mm, sep.z_r_mm)
        body: dict[str, Any] = {
            "stream_id": stream_id,
            "measured_p99_ms": p99,
            "reaction_time_s": t_r,
            "protective_separation_mm": required.s_p_mm,
            "formula": required.formula,
            "inputs": sep.model_dump(),
            "safety_rated": False,
        }
        warnings = []
        if p99 is None:
            warnings.append("no latency measured yet: T_r holds only the PLC and robot time")
        if sep.protective_distance_mm is not None:
            check = check_protective_distance(sep.protective_distance_mm, body["protective_separation_mm"])
            body["check"] = check
            if check["warning"]:
                warnings.append(check["warning"])
        body["warnings"] = warnings
        return body

    @app.get("/v1/streams/{stream_id}/events", dependencies=[read], response_model=EventsPage,
             response_model_by_alias=True, responses=_errors(*_STREAM))
    async def stream_events(
        stream_id: str,
        since: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="events with seq > since")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
        masks: Annotated[int, Query(ge=0, le=1, description="1: include person masks")] = 0,
    ) -> dict[str, Any]:
        manager().get(stream_id)
        events, gap = bus.events_since(stream_id, since, limit, bool(masks))
        return {"stream_id": stream_id, "events": events, "gap": gap, "last_seq": bus.last_seq(stream_id)}

    @app.websocket("/v1/alerts")
    async def alerts(websocket: WebSocket) -> None:
        """Events of the chosen streams (all by default), replayed from ``since``."""
        if await authorize_websocket(websocket, "read", None) is None:
            return
        await websocket.accept()
        params = websocket.query_params
        try:
            since = int(params["since"]) if params.get("since") not in (None, "") else None
            masks = params.get("masks", "0") in ("1", "true")
            if since is not None and not 0 <= since <= MAX_SEQ:
                raise ValueError
        except ValueError:
            await websocket.send_json({"error": f"since must be an integer sequence number in 0..{MAX_SEQ}"})
            await websocket.close(WS_POLICY, "bad query: since")
            return
        streams = [s for s in params.get("streams", "").split(",") if s]
        known = supervisor.watches
        unknown = [s for s in streams if s not in known]
        if unknown:
            await websocket.send_json({"error": f"unknown stream(s) {unknown}"})
            await websocket.close(WS_UNKNOWN_STREAM, "unknown stream")
            return
        subscription = bus.subscribe(streams or None, since, masks)

        async def watch_client() -> None:
            # The handler only sends; this notices a client that left, even
            # when no event comes to fail a send (e.g. its streams were deleted).
            try:
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
            except Exception:  # noqa: BLE001 - any receive failure means the client is gone
                pass
            bus.unsubscribe(subscription)

        watcher = asyncio.create_task(watch_client())
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

    @app.get("/v1/streams/{stream_id}/latest", response_model=None, dependencies=[read],
             responses={200: _IMAGE_OR_JSON, **_errors(*_STREAM)})
    async def latest(stream_id: str, overlay: Overlay = None) -> Any:
        pipeline = manager().get(stream_id)
        if pipeline.latest is None:
            raise HTTPException(404, f"stream {stream_id!r} has no processed frame yet")
        if overlay is None:
            return pipeline.latest
        png = await asyncio.to_thread(overlay_png, pipeline.latest_image, pipeline.latest)
        return Response(png, media_type="image/png")

    @app.websocket("/v1/streams/{stream_id}/ingest")
    async def ingest(websocket: WebSocket, stream_id: str) -> None:
        if await authorize_websocket(websocket, "push", stream_id) is None:
            return
        await websocket.accept()
        pipeline = state["manager"].pipelines.get(stream_id) if state["manager"] else None
        if pipeline is None:
            await websocket.send_json({"error": f"unknown stream {stream_id!r}"})
            await websocket.close(WS_UNKNOWN_STREAM, "unknown stream")
            return
        if pipeline.source != PUSH:
            await websocket.send_json({"error": f"stream {stream_id!r} pulls from {pipeline.source}; it takes no pushed frames"})
            await websocket.close(WS_NOT_PUSH, "not a push stream")
            return
        limits = settings.limits
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
                if stream_id not in state["manager"].pipelines:
                    await websocket.close(WS_UNKNOWN_STREAM, "stream deleted")
                    return
                pipeline.offer(image, capture_ts, (time.perf_counter() - started) * 1000.0)
        except WebSocketDisconnect:
            return

    # -------------------------------------------------------- single frame
    @app.post("/v1/infer", response_model=None, dependencies=[read],
              responses={200: _IMAGE_OR_JSON, **_errors(*_READ, 400, 413, 415, 422)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                  "image/png": {"schema": {"type": "string", "format": "binary"}},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "file": {"type": "string", "format": "binary"}}}}}}})
    async def infer(request: Request, overlay: Overlay = None) -> Any:
        limits = settings.limits
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            uploads = [v for v in form.values() if hasattr(v, "read")]
            if len(uploads) != 1:
                raise HTTPException(400, f"multipart body must hold exactly one file, got {len(uploads)}")
            data = await uploads[0].read()
        elif content_type in IMAGE_TYPES:
            data = await request.body()
        else:
            raise HTTPException(
                415, f"unsupported content type {content_type or '(none)'!r}; send image/jpeg, image/png or multipart"
            )
        started = time.perf_counter()
        try:
            image = await asyncio.to_thread(
                decode_image, data, limits.max_frame_bytes, limits.max_pixels, limits.max_side
            )
        except ImageError as exc:
            status = 413 if "exceeds" in str(exc) or "too large" in str(exc) else 400
            raise HTTPException(status, str(exc)) from exc
        decoded = time.perf_counter()
        eng: Engine = state["engine"]
        if not state["ready"]:
            raise HTTPException(503, "the service is starting")
        from export.ort_runtime import prepare_frame

        item = FrameInput(await asyncio.to_thread(prepare_frame, image, eng.input_size), eng.empty_cache())
        output = await state["batching"].infer(item)
        inferred = time.perf_counter()
        result = await asyncio.to_thread(
            frame_result, output, None, eng.classes, image.shape[:2], eng.input_size,
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

    return app
