"""The FastAPI application: ``create_app(settings, engine=None)``, wiring only.

It builds the service's parts (metrics, event bus, safety supervisor, the
authenticator), puts them in one ``ServiceState`` on ``app.state.cellwatch``,
adds the body-size guard and the exception handlers, and includes one router
per resource from ``service.routes`` (every route and its handler is there):

* ``ops``: ``/healthz``, ``/readyz``, ``/metrics``;
* ``streams``: ``POST/GET /v1/streams``, ``GET/DELETE /v1/streams/{id}``,
  ``GET .../tracks``, ``POST .../reset``, ``GET .../latest[?overlay=png]``;
* ``safety``: ``GET/PUT .../zones``, ``GET .../safety``;
* ``alerts``: ``GET .../events``, WebSocket ``/v1/alerts``;
* ``ingest``: WebSocket ``.../ingest`` (push; framing in ``service.framing``);
* ``infer``: ``POST /v1/infer[?overlay=png]`` (one frame, stateless).

All JSON that reports results carries ``"safety_rated": false``.

The lifespan creates the engine (unless one is passed in) and warms it up,
in the background, before the configured streams start; ``/readyz`` answers
503 until then. The route modules never import this one.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import Authenticator
from .config import Settings
from .engines.base import Engine, FrameInput
from .engines.batching import BatchingEngine
from .events import EventBus
from .metrics import ServiceMetrics
from .request_guard import BodyGuard
from .routes import alerts, infer, ingest, ops, safety, streams
from .routes.deps import ServiceState
from .streams import StreamError, StreamManager
from .supervisor import SafetySupervisor

log = logging.getLogger("cellwatch.app")

MULTIPART_OVERHEAD = 65536  # an image upload's limit: limits.max_frame_bytes plus room for multipart headers
ROUTERS = (ops.router, streams.router, safety.router, alerts.router, ingest.router, infer.router)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    bus = EventBus(settings.events.history, settings.events.queue_size)
    supervisor = SafetySupervisor(bus, settings.safety, settings.events.heartbeat_ms,
                                  settings.limits.max_zone_vertices)
    state = ServiceState(settings, ServiceMetrics(), bus, supervisor, engine=engine)
    app = FastAPI(
        title="cellwatch",
        version="0.1.0",
        description="Advisory person segmentation, tracking and proximity alerts for robot cells. "
        "NOT a safety function: every result carries safety_rated=false.",
        lifespan=lifespan,
    )
    app.state.cellwatch = state
    app.state.events = bus  # read by tests and tools that watch the published events
    app.state.auth = Authenticator(settings.auth)  # where service.auth's require() looks for it
    app.add_middleware(BodyGuard, auth=app.state.auth, json_limit=settings.limits.max_json_bytes,
                       upload_limit=settings.limits.max_frame_bytes + MULTIPART_OVERHEAD, upload_paths=("/v1/infer",))
    app.add_exception_handler(StreamError, _stream_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for router in ROUTERS:
        app.include_router(router)
    return app


# ------------------------------------------------------------ lifespan
@asynccontextmanager
async def lifespan(app: FastAPI):
    # Start-up runs in the background so /healthz answers at once and
    # /readyz says 503 until the model is loaded and warm.
    state: ServiceState = app.state.cellwatch
    starting = asyncio.create_task(_start(state), name="start-up")
    try:
        yield
    finally:
        state.ready = False
        starting.cancel()
        try:
            await starting
        except asyncio.CancelledError:
            pass
        await state.supervisor.stop()
        if state.manager is not None:
            await state.manager.close()
        if state.batching is not None:
            state.batching.close()
        if state.engine is not None:
            state.engine.close()
        log.info("stopped")


async def _start(state: ServiceState) -> None:
    """Load and warm up the engine, then start the configured streams."""
    settings = state.settings
    try:
        if state.engine is None:
            state.engine = await asyncio.to_thread(_engine_from_settings, settings)
        engine = state.engine
        state.batching = BatchingEngine(engine, settings.batching.max_batch, settings.batching.max_wait_ms,
                                        on_batch=state.metrics.batch)
        # The first run allocates and plans; do it before declaring ready.
        height, width = engine.input_size
        await state.batching.infer(FrameInput(np.zeros((3, height, width), np.float32), engine.empty_cache()))
        manager = StreamManager(engine, state.batching, settings.pipeline, settings.limits, state.metrics,
                                supervisor=state.supervisor, source_settings=settings.sources)
        for stream in settings.streams:
            await manager.add(stream.id, stream.source, stream.options, stream.zones)
        state.supervisor.start()
        state.manager = manager
        state.ready = True
        log.info("ready", extra={"engine": engine.name, "streams": len(settings.streams)})
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # reported by /readyz and the log; the process stays up for inspection
        state.failed = f"{type(exc).__name__}: {exc}"
        log.error("start-up failed", extra={"error": state.failed})


def _engine_from_settings(settings: Settings) -> Engine:
    from .engines import create_engine

    model = settings.model
    if not model.path:
        raise RuntimeError("no model configured: set model.path (or pass --model)")
    options: dict[str, Any] = {}
    if model.engine == "torch":
        from models.sizes import parse_size_hw

        options["frame_size"] = parse_size_hw(model.frame_size)
    if model.engine == "tensorrt" and model.sidecar:
        options["sidecar"] = model.sidecar
    return create_engine(model.engine, model.path, threads=model.threads, **options)


# -------------------------------------------------- exception handlers
async def _stream_error(_: Request, exc: StreamError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    # Each method of a path is its own route, so Starlette's 405 names only
    # the one route it matched; Allow must list every method of the path.
    # app.routes holds the included routers, not their routes (FastAPI >= 0.137):
    # iter_route_contexts walks them, with the routers' prefixes applied.
    allowed = sorted({method for route in iter_route_contexts(request.app.routes)
                      if isinstance(route.original_route, APIRoute) and route.path_regex.match(request.url.path)
                      for method in route.methods})
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)})


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    # One shape for every error: a readable detail naming the fields, plus
    # the structured list (without the inputs, which may be large or secret).
    problems = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in problems)
    return JSONResponse({"detail": detail or "invalid request", "errors": problems}, status_code=422)
