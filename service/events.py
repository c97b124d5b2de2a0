"""The service's events (``cellwatch.event/1``) and the in-process bus that carries them.

An event is a JSON object; ``Event`` is its pydantic model (the OpenAPI docs
come from it) and ``service/schemas/event.schema.json`` the same contract as
a JSON Schema for consumers. Every emitted event has every field (null when it
does not apply) and ``"safety_rated": false``. Types:

* ``state``: the stream's safety state changed (or its latch did);
* ``persons``: one processed frame's persons, their zones and distances;
* ``heartbeat``: the current state, sent periodically;
* ``fault``: something made the stream blind (engine error, source lost, ...);
* ``gap``: synthetic, per subscriber: events ``missed_from..missed_to`` of a
  stream are no longer kept. A gap event has ``seq: null`` and never takes a
  sequence number, so each stream's ``seq`` stays gapless (1, 2, 3, ...).

``EventBus`` numbers events per stream, keeps a bounded history per stream
for replays, and feeds subscribers' asyncio queues from any thread
(``loop.call_soon_threadsafe``). A subscriber that falls ``queue_size`` events
behind is marked ``overflowed`` and dropped; publishing never blocks on it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from .alerts import SafetyState

EVENT_SCHEMA = "cellwatch.event/1"
EVENT_TYPES = ("state", "persons", "heartbeat", "fault", "gap")
SCHEMA_FILE = Path(__file__).with_name("schemas") / "event.schema.json"

EventType = Literal["state", "persons", "heartbeat", "fault", "gap"]
# The largest ``since`` a reader may ask for: sequence numbers stay below
# 2**53, the largest integer every JSON consumer reads exactly.
MAX_SEQ = 2**53
_ASSIGNED = frozenset({"schema", "seq", "emit_ts", "safety_rated", "stream_id", "type"})


class _Strict(BaseModel):
    # serialization schema: every field is always present in what is sent
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class MaskRLE(_Strict):
    """COCO run-length encoding of a person's mask at the camera frame's size."""

    size: list[NonNegativeInt] = Field(min_length=2, max_length=2, description="[height, width]")
    counts: str


class Person(_Strict):
    track_id: int | None = Field(description="tracker id, stable while the person is tracked")
    score: float = Field(ge=0, le=1)
    distance: float | None = Field(description="distance to the hazard zone; null when not measured")
    units: Literal["metres", "pixels"] = Field(description="units of distance")
    zone: str | None = Field(description="the most severe zone the person is in; null: none")
    box: list[float] | None = Field(None, min_length=4, max_length=4, description="[x1, y1, x2, y2] frame pixels")
    mask: MaskRLE | None = Field(None, description="null when the subscriber asked for no masks")


class Event(_Strict):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    schema_: Literal["cellwatch.event/1"] = Field(EVENT_SCHEMA, alias="schema")
    type: EventType
    stream_id: str
    seq: int | None = Field(ge=1, description="per stream, 1, 2, 3, ... with no gaps; null only on gap events")
    capture_ts: float | None = Field(None, description="when the camera took the frame (s since the epoch)")
    emit_ts: float = Field(description="when the event was published (s since the epoch)")
    state: SafetyState | None = None
    latched: bool | None = None
    reason: str | None = None
    zones: dict[str, list[int]] | None = Field(None, description="per zone name: the track ids in it")
    persons: list[Person] | None = None
    config_crc: str | None = Field(None, description="CRC of the zone/alert configuration in force")
    missed_from: int | None = Field(None, ge=1, description="gap events: first seq no longer kept")
    missed_to: int | None = Field(None, ge=1, description="gap events: last seq no longer kept")
    safety_rated: Literal[False] = False

    @model_validator(mode="after")
    def _by_type(self) -> Event:
        # the schema file's allOf says the same
        gap_fields = (self.seq is None, self.missed_from is not None, self.missed_to is not None)
        if self.type == "gap" and not all(gap_fields):
            raise ValueError("a gap event has seq null, missed_from and missed_to")
        if self.type != "gap" and any(gap_fields):
            raise ValueError("only gap events have missed_from/missed_to and a null seq")
        if self.type in ("state", "heartbeat") and (self.state is None or self.latched is None):
            raise ValueError(f"a {self.type} event has state and latched")
        return self


def event_dict(**fields: Any) -> dict[str, Any]:
    """Validate an event's fields and return its JSON-ready dict (every field present)."""
    return Event.model_validate(fields).model_dump(mode="json", by_alias=True)


def strip_masks(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with every person's mask null (a copy; the original is shared)."""
    persons = event.get("persons")
    if not persons or all(person.get("mask") is None for person in persons):
        return event
    return {**event, "persons": [{**person, "mask": None} for person in persons]}


class SubscriptionClosed(Exception):
    """The subscription ended: ``overflowed`` (too slow) or unsubscribed."""


_CLOSED = object()


class Subscription:
    """One subscriber's feed: first the replay, then live events, in seq order per stream.

    ``await get()`` returns the next event; once the subscription is closed
    (overflowed or unsubscribed) and the events queued before that are
    drained, it raises ``SubscriptionClosed``. A WebSocket handler closes with
    1013 when ``overflowed`` is set. Events are shared dicts: do not mutate.
    """

    def __init__(self, streams: frozenset[str] | None, masks: bool, loop: asyncio.AbstractEventLoop,
                 queue_size: int, replay: list[dict[str, Any]]) -> None:
        self.streams = streams
        self.masks = masks
        self.loop = loop
        self.overflowed = False
        self.closed = False
        self._queue_size = queue_size
        self._replay = deque(replay)
        self._queue: asyncio.Queue = asyncio.Queue()  # bounded by _pending, not by maxsize
        self._pending = 0  # published to this subscriber and not yet taken by get()
        self._lock = threading.Lock()

    def wants(self, stream_id: str) -> bool:
        return self.streams is None or stream_id in self.streams

    async def get(self) -> dict[str, Any]:
        if self._replay:
            return self._replay.popleft()
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # every later get() raises too
            raise SubscriptionClosed("overflowed" if self.overflowed else "unsubscribed")
        with self._lock:
            self._pending -= 1
        return item

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None

    # called by the bus, under its lock, from any thread
    def _offer(self, event: dict[str, Any]) -> bool:
        """Queue ``event``; False when the subscription is (now) closed."""
        with self._lock:
            if self._pending >= self._queue_size:
                self.overflowed = True
                self._close()
                return False
            self._pending += 1
        return self._call(self._queue.put_nowait, event)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._call(self._queue.put_nowait, _CLOSED)

    def _call(self, callback: Callable, *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
            return True
        except RuntimeError:  # the subscriber's loop is closed: nobody is listening
            self.closed = True
            return False


class EventBus:
    """Per-stream numbering, bounded history and fan-out to asyncio subscribers."""

    def __init__(self, history: int = 1000, queue_size: int = 256, clock: Callable[[], float] = time.time) -> None:
        if history < 1 or queue_size < 1:
            raise ValueError("history and queue_size must be >= 1")
        self.history = history
        self.queue_size = queue_size
        self._clock = clock
        self._lock = threading.Lock()
        self._last_seq: dict[str, int] = {}
        self._events: dict[str, deque[dict[str, Any]]] = {}
        self._subscriptions: list[Subscription] = []

    # ------------------------------------------------------------ publishing
    def publish(self, stream_id: str, type: EventType, **fields: Any) -> dict[str, Any]:
        """Number, stamp, validate, keep and fan out one event; returns it (JSON-ready)."""
        if type == "gap":
            raise ValueError("gap events are synthetic, per subscriber; they are not published")
        taken = _ASSIGNED.intersection(fields)
        if taken:
            raise ValueError(f"the bus assigns {sorted(taken)}")
        with self._lock:
            seq = self._last_seq.get(stream_id, 0) + 1
            event = event_dict(stream_id=stream_id, type=type, seq=seq, emit_ts=self._clock(), **fields)
            self._last_seq[stream_id] = seq
            self._events.setdefault(stream_id, deque(maxlen=self.history)).append(event)
            stripped = None
            for subscription in self._subscriptions:
                if not subscription.wants(stream_id):
                    continue
                if not subscription.masks:
                    stripped = stripped or strip_masks(event)
                subscription._offer(event if subscription.masks else stripped)
            if any(subscription.closed for subscription in self._subscriptions):
                self._subscriptions = [s for s in self._subscriptions if not s.closed]
        return event

    def heartbeat(self, stream_id: str, state: SafetyState, latched: bool, reason: str | None,
                  config_crc: str | None) -> dict[str, Any]:
        return self.publish(stream_id, "heartbeat", state=state, latched=latched, reason=reason,
                            config_crc=config_crc)

    # ------------------------------------------------------------ reading
    def subscribe(self, streams: Iterable[str] | None = None, since: int | None = None, masks: bool = True,
                  loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        """A live feed of ``streams`` (None: all). With ``since``, first every kept
        event with ``seq > since`` of each requested stream (streams in name
        order), each stream's replay preceded by a gap event when events after
        ``since`` are no longer kept. Replay and registration happen under one
        lock, so nothing is missed or repeated between them."""
        _check_since(since)
        loop = loop or asyncio.get_running_loop()
        wanted = None if streams is None else frozenset(streams)
        with self._lock:
            replay: list[dict[str, Any]] = []
            if since is not None:
                for stream_id in sorted(self._events if wanted is None else wanted & self._events.keys()):
                    events, gap = self._since(stream_id, since, None)
                    replay.extend(([gap] if gap else []) + events)
            if not masks:
                replay = [strip_masks(event) for event in replay]
            subscription = Subscription(wanted, masks, loop, self.queue_size, replay)
            self._subscriptions.append(subscription)
        return subscription

    def forget(self, stream_id: str) -> None:
        """Drop a deleted stream's kept events. Its last seq stays, so the id,
        if created again, continues the numbering and never replays them."""
        with self._lock:
            self._events.pop(stream_id, None)

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
            subscription._close()

    def events_since(self, stream_id: str, since: int | None, limit: int = 100, masks: bool = True,
                     ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """For REST: up to ``limit`` kept events with ``seq > since``, oldest first
        (page on with the last seq), and the gap event when events after
        ``since`` are no longer kept. ``since=None``: the latest ``limit``, no gap."""
        _check_since(since)
        with self._lock:
            if since is None:
                kept = list(self._events.get(stream_id, ()))
                events, gap = kept[max(0, len(kept) - limit):], None
            else:
                events, gap = self._since(stream_id, since, limit)
        return (events if masks else [strip_masks(event) for event in events]), gap

    def last_seq(self, stream_id: str) -> int:
        """The stream's latest seq (0: nothing published yet)."""
        with self._lock:
            return self._last_seq.get(stream_id, 0)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    @property
    def overflowed_count(self) -> int:
        """Subscriptions that fell too far behind and wait to be closed."""
        with self._lock:
            return sum(1 for s in self._subscriptions if s.overflowed)

    def _since(self, stream_id: str, since: int,
               limit: int | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        kept = self._events.get(stream_id)
        if not kept:
            return [], None
        oldest = kept[0]["seq"]
        gap = None
        if since < oldest - 1:
            gap = event_dict(stream_id=stream_id, type="gap", seq=None, emit_ts=self._clock(),
                             missed_from=max(since, 0) + 1, missed_to=oldest - 1)
        start = min(len(kept), max(0, since + 1 - oldest))  # seqs in the deque are consecutive
        stop = len(kept) if limit is None else min(len(kept), start + limit)
        return list(itertools.islice(kept, start, stop)), gap


def _check_since(since: int | None) -> None:
    if since is not None and not 0 <= since <= MAX_SEQ:
        raise ValueError(f"since must be a sequence number in 0..{MAX_SEQ}, got {since}")
