"""From results to alerts: zones, the safety state machine and events, per stream.

``SafetySupervisor`` joins the parts that issue 6 adds on top of the
pipelines:

* each processed frame's persons are placed against the stream's zone set
  (``service.zones``): distance to the hazard from the mask's ground contact,
  and the innermost zone each person is in;
* that gives the frame's observed state (a person in the hazard or protective
  zone: PROTECTIVE_STOP; in the warning zone: WARNING; else CLEAR), which
  drives the stream's ``StreamSafety`` (hysteresis, latch, watchdog);
* a ``persons`` event per frame and a ``state`` event per transition go to the
  ``EventBus``; engine errors and repeated bad frames are ``fault`` events;
* a ticker runs every stream's watchdog and publishes heartbeats.

Without zones a stream reports its persons with no distances and its state
follows only frame flow and faults. Everything carries ``safety_rated: false``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from models.masks import encode_rle

from .alerts import SafetyConfig, SafetyState, StreamSafety, Transition
from .events import EventBus
from .results import FrameResult
from .zones import MAX_VERTICES, ZoneError, ZoneSet

log = logging.getLogger("cellwatch.safety")

ZONE_STATE = {"hazard": SafetyState.PROTECTIVE_STOP, "protective": SafetyState.PROTECTIVE_STOP,
              "warning": SafetyState.WARNING}


class StreamWatch:
    """One stream's zones and state machine."""

    def __init__(self, stream_id: str, config: SafetyConfig, zones: ZoneSet | None = None) -> None:
        self.stream_id = stream_id
        self.safety = StreamSafety(stream_id, config)
        self.zones = zones

    @property
    def config_crc(self) -> str | None:
        return self.zones.crc_hex if self.zones is not None else None


class SafetySupervisor:
    def __init__(self, bus: EventBus, config: SafetyConfig, heartbeat_ms: float = 250.0,
                 max_zone_vertices: int = MAX_VERTICES) -> None:
        self.bus = bus
        self.config = config
        self.heartbeat_ms = heartbeat_ms
        self.max_zone_vertices = max_zone_vertices
        self.watches: dict[str, StreamWatch] = {}
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------- streams
    def add(self, stream_id: str, zones: ZoneSet | dict | None = None) -> StreamWatch:
        zone_set = self.validate_zones(zones) if isinstance(zones, dict) else zones
        watch = StreamWatch(stream_id, self.config, zone_set)
        self.watches[stream_id] = watch
        status = watch.safety.status()
        self.bus.publish(stream_id, "state", state=status["state"], latched=status["latched"],
                         reason=status["reason"], config_crc=watch.config_crc)
        return watch

    def remove(self, stream_id: str) -> None:
        """Forget a deleted stream: a last ``fault`` event tells live subscribers
        that it is gone (never silence that could read as CLEAR), then its
        history is dropped. Its ``seq`` numbering is kept, so an id created
        again continues after it and never replays the old stream's events."""
        watch = self.watches.pop(stream_id, None)
        if watch is None:
            return
        self.bus.publish(stream_id, "fault", state=SafetyState.FAULT, latched=watch.safety.latched,
                         reason="stream deleted", config_crc=watch.config_crc)
        self.bus.forget(stream_id)

    def validate_zones(self, spec: Any) -> ZoneSet:
        """A zone spec checked without installing it (ZoneError with the reason).
        CPU-bound up to O(max_zone_vertices^2): call it off the event loop."""
        if not isinstance(spec, dict):
            raise ZoneError("zones must be a JSON object")
        return ZoneSet.from_spec(spec, self.max_zone_vertices)

    def install_zones(self, stream_id: str, zone_set: ZoneSet) -> ZoneSet:
        """Put a validated zone set in force for ``stream_id``."""
        self.watches[stream_id].zones = zone_set
        log.info("zones updated", extra={"stream": stream_id, "config_crc": zone_set.crc_hex})
        return zone_set

    # -------------------------------------------------------------- inputs
    def on_result(self, stream_id: str, result: FrameResult) -> None:
        watch = self.watches.get(stream_id)
        if watch is None:
            return
        persons, zones, observed, causes, unknown = self._place(watch, result)
        capture_ts = result.capture_ts
        timing = result.timing
        done_ts = time.time()
        crc = watch.config_crc
        self.bus.publish(stream_id, "persons", capture_ts=capture_ts, state=watch.safety.state, latched=watch.safety.latched,
                         zones=zones, persons=persons, config_crc=crc)
        if unknown:
            transition = watch.safety.fault(unknown)
        else:
            # 0 is a capture time like any other (an unset camera clock): never "missing"
            transition = watch.safety.frame(
                observed, done_ts if capture_ts is None else capture_ts, done_ts, "; ".join(causes) or None,
                received_ts=timing.get("received_ts"), since_arrival_ms=timing.get("since_arrival_ms"))
        self._publish(watch, transition, capture_ts)

    def on_error(self, stream_id: str, reason: str) -> None:
        watch = self.watches.get(stream_id)
        if watch is None:
            return
        self.bus.publish(stream_id, "fault", state=SafetyState.FAULT, latched=watch.safety.latched, reason=reason,
                         config_crc=watch.config_crc)
        self._publish(watch, watch.safety.fault(reason))

    def on_bad_frame(self, stream_id: str, reason: str) -> None:
        watch = self.watches.get(stream_id)
        if watch is not None:
            self._publish(watch, watch.safety.decode_failed(reason))

    def reset(self, stream_id: str, reason: str = "reset requested") -> dict[str, Any]:
        watch = self.watches[stream_id]
        blocker = watch.safety.reset_blocker()
        transition = watch.safety.reset(reason)
        self._publish(watch, transition)
        return {"released": transition is not None and not transition.latched, "blocked_by": blocker,
                **watch.safety.status()}

    # ---------------------------------------------------------------- ticks
    def start(self) -> None:
        self._task = asyncio.create_task(self._tick_loop(), name="safety-ticker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _tick_loop(self) -> None:
        # The watchdog is checked at a quarter of its period, so a stalled
        # camera is reported within 1.25 watchdog periods.
        period = min(self.config.watchdog_ms / 4.0, self.heartbeat_ms) / 1000.0
        next_beat = time.monotonic()
        while True:
            for watch in list(self.watches.values()):
                self._publish(watch, watch.safety.tick())
            if time.monotonic() >= next_beat:
                next_beat += self.heartbeat_ms / 1000.0
                for watch in list(self.watches.values()):
                    status = watch.safety.status()
                    self.bus.heartbeat(watch.stream_id, status["state"], status["latched"], status["reason"],
                                       watch.config_crc)
            await asyncio.sleep(period)

    # -------------------------------------------------------------- helpers
    def _publish(self, watch: StreamWatch, transition: Transition | None, capture_ts: float | None = None) -> None:
        if transition is None:
            return
        self.bus.publish(watch.stream_id, "state", capture_ts=capture_ts, state=transition.to_state,
                         latched=transition.latched, reason=transition.reason, config_crc=watch.config_crc)
        log.info("state", extra={"stream": watch.stream_id, "from": transition.from_state.value,
                                 "to": transition.to_state.value, "reason": transition.reason})

    def _place(self, watch: StreamWatch, result: FrameResult):
        """Each person's event entry, distance and zone from its binary mask; the
        zones' observed state, the causes, and why a position is unknown (or None)."""
        persons, zones, causes = [], {}, []
        observed = SafetyState.CLEAR
        unknown = None
        units = watch.zones.units if watch.zones is not None else "pixels"
        detections = result.detections
        for index in result.persons():
            track_id = detections.track_id(index)
            mask = detections.mask(index)
            entry = {"track_id": track_id, "score": round(float(detections.scores[index]), 4), "distance": None,
                     "units": units, "zone": None, "box": [round(float(v), 2) for v in detections.boxes[index]],
                     "mask": None if mask is None else encode_rle(mask)}  # the event is what is sent
            placed = watch.zones.person(mask) if watch.zones is not None and mask is not None else None
            if placed is not None:
                distance = float(placed["distance"])
                if math.isnan(distance):
                    unknown = f"track {track_id}: position unknown (its mask lies above the horizon)"
                else:
                    entry["distance"] = round(distance, 4)
                entry["zone"] = placed["zone"]
                if placed["zone"] is not None:
                    zones.setdefault(placed["zone"], []).append(track_id)
                    level = ZONE_STATE[placed["zone"]]
                    if level.severity > observed.severity:
                        observed = level
                    causes.append(f"track {track_id} in {placed['zone']} zone "
                                  f"({entry['distance']} {units} from the hazard)")
            persons.append(entry)
        return persons, zones, observed, causes, unknown


__all__ = ["SafetySupervisor", "StreamWatch", "ZoneError"]
