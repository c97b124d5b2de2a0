"""What the route handlers are handed: the service's parts, as typed dependencies.

``ServiceState`` is the one object ``create_app`` puts on ``app.state.cellwatch``:
the parts built with the app (settings, metrics, event bus, supervisor) and
those start-up fills in (engine, batching engine, stream manager, readiness).
Handlers never read ``app.state`` themselves; they declare what they need:

* ``StateDep``: the whole ``ServiceState`` (readiness, the engine for
  ``/v1/infer``, a manager that may still be None on the ingest WebSocket);
* ``ManagerDep``: the stream manager, or 503 "the service is starting";
* ``SupervisorDep``, ``BusDep``, ``SettingsDep``, ``MetricsDep``;
* ``CAN_READ``, ``CAN_MANAGE``: ``service.auth.require`` for a route's
  ``dependencies``; the authenticator itself is ``app.state.auth``, where
  ``service.auth`` looks for it.

Each dependency takes an ``HTTPConnection``, so WebSocket routes use them too,
and is a coroutine, so FastAPI runs it on the event loop, not in a thread.
Imports service.auth's require() and the service's parts (for their types);
nothing from the other route modules or the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from ..auth import require
from ..config import Settings
from ..engines.base import Engine
from ..engines.batching import BatchingEngine
from ..events import EventBus
from ..metrics import ServiceMetrics
from ..streams import StreamManager
from ..supervisor import SafetySupervisor


@dataclass(eq=False)
class ServiceState:
    """The parts one app serves with. ``engine`` is the one passed to
    ``create_app`` (or None until start-up creates it); ``batching`` and
    ``manager`` are None, ``ready`` False, until start-up has warmed the engine
    up and started the configured streams; ``failed`` says why start-up failed."""

    settings: Settings
    metrics: ServiceMetrics
    bus: EventBus
    supervisor: SafetySupervisor
    engine: Engine | None = None
    batching: BatchingEngine | None = None
    manager: StreamManager | None = None
    ready: bool = False
    failed: str | None = None


async def service_state(connection: HTTPConnection) -> ServiceState:
    return connection.app.state.cellwatch


StateDep = Annotated[ServiceState, Depends(service_state)]


async def stream_manager(state: StateDep) -> StreamManager:
    if state.manager is None:
        raise HTTPException(503, "the service is starting")
    return state.manager


async def safety_supervisor(state: StateDep) -> SafetySupervisor:
    return state.supervisor


async def event_bus(state: StateDep) -> EventBus:
    return state.bus


async def service_settings(state: StateDep) -> Settings:
    return state.settings


async def service_metrics(state: StateDep) -> ServiceMetrics:
    return state.metrics


ManagerDep = Annotated[StreamManager, Depends(stream_manager)]
SupervisorDep = Annotated[SafetySupervisor, Depends(safety_supervisor)]
BusDep = Annotated[EventBus, Depends(event_bus)]
SettingsDep = Annotated[Settings, Depends(service_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(service_metrics)]

CAN_READ = Depends(require("read"))
CAN_MANAGE = Depends(require("manage"))
