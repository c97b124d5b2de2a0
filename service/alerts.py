"""One stream's advisory safety state: CLEAR < WARNING < PROTECTIVE_STOP < FAULT.

``StreamSafety`` owns the state machine of one stream. It is fed what the
zones saw in each processed frame, engine/source faults, decode failures and a
periodic ``tick`` (the watchdog), and answers with a ``Transition`` whenever
the state or its latch changes. It is advisory, not a certified safety
function, but it fails safe: when in doubt the state is FAULT, never CLEAR.

Rules
-----
* Worse is immediate: the first frame that shows a worse state moves there.
* Better needs BOTH ``clear_frames`` consecutive frames without the cause AND
  ``clear_ms`` since the cause was last seen (hysteresis). It is decided on
  frames (and on resets), never on ticks alone.
* A PROTECTIVE_STOP latches (``latch_protective``): it stays until ``reset``,
  or until ``auto_reset_s`` of quiet time without anyone in the protective zone.
  The latch is remembered across a FAULT: frames coming back after a fault
  return to the latched PROTECTIVE_STOP.
* FAULT comes from ``fault`` (engine error, source lost), ``decode_failures``
  consecutive decode failures, a late frame (done more than ``deadline_ms``
  after capture, or after its arrival: the worse of the two), a capture time
  that cannot be trusted (not set, or ahead of the frame's arrival by more
  than ``clock_ahead_ms``) or the watchdog (no frame for more than ``watchdog_ms``).
  FAULT is left only on frames (with the hysteresis above, the fault counting
  as the cause) and, with ``latch_fault``, only after a reset.
* A stream starts in FAULT "no frame yet": it has shown nothing, so it cannot
  be CLEAR; its first frames clear it through the hysteresis.
* ``reset`` is refused (returns None, latch kept; ``reset_blocker`` says why)
  while frames are not flowing, while the latest frame was late, or while the
  latest frame still shows a person in the protective zone.

Times for hysteresis and the watchdog come from the injected ``clock``
(seconds, monotonic); ``capture_ts`` comes from the camera's clock and is
compared with the service's wall clock (``received_ts``/``done_ts``), which is
why a camera clock found ahead is a FAULT and why the time since arrival, on
the service's own monotonic clock, bounds lateness as well.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class SafetyState(str, Enum):
    CLEAR = "CLEAR"
    WARNING = "WARNING"
    PROTECTIVE_STOP = "PROTECTIVE_STOP"
    FAULT = "FAULT"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_ORDER = (SafetyState.CLEAR, SafetyState.WARNING, SafetyState.PROTECTIVE_STOP, SafetyState.FAULT)
_SEVERITY = {state: rank for rank, state in enumerate(_ORDER)}


def worst(*states: SafetyState) -> SafetyState:
    """The most severe of ``states`` (CLEAR when none)."""
    return max(states, key=_SEVERITY.__getitem__, default=SafetyState.CLEAR)


# Bounds of the timings below. Each must be finite: an infinite watchdog or
# deadline switches that check off without a word. The lower bounds keep the
# ticker (a quarter of the watchdog) from spinning.
MIN_WATCH_MS = 10.0
MAX_WATCH_MS = 60_000.0  # watchdog and deadline: a camera silent or late for a minute is long lost
MAX_CLEAR_MS = 600_000.0
MAX_AUTO_RESET_S = 86_400.0
MAX_CLOCK_AHEAD_MS = 60_000.0


class SafetyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    clear_frames: int = Field(3, ge=1, le=10_000)
    clear_ms: float = Field(500, ge=0, le=MAX_CLEAR_MS)
    latch_protective: bool = True
    auto_reset_s: float | None = Field(None, gt=0, le=MAX_AUTO_RESET_S)
    watchdog_ms: float = Field(500, ge=MIN_WATCH_MS, le=MAX_WATCH_MS)
    decode_failures: int = Field(3, ge=1, le=10_000)
    deadline_ms: float = Field(1000, ge=MIN_WATCH_MS, le=MAX_WATCH_MS)
    # A frame whose capture time is more than this ahead of its arrival comes
    # from a camera clock the service cannot trust: FAULT (see ``frame``).
    clock_ahead_ms: float = Field(500, gt=0, le=MAX_CLOCK_AHEAD_MS)
    latch_fault: bool = False


@dataclass(frozen=True)
class Transition:
    """A change of state or of latch (``from_state == to_state`` when only the latch changed)."""

    from_state: SafetyState
    to_state: SafetyState
    reason: str
    latched: bool
    at: float  # the StreamSafety clock's time


class _Cause:
    """When one level's cause was last seen and how many frames came since without it."""

    __slots__ = ("last_seen", "frames_without")

    def __init__(self, last_seen: float, frames_without: int) -> None:
        self.last_seen = last_seen
        self.frames_without = frames_without

    def seen(self, now: float) -> None:
        self.last_seen = now
        self.frames_without = 0


class StreamSafety:
    """The state machine of one stream; thread-safe (one lock per stream)."""

    def __init__(
        self,
        stream_id: str,
        config: SafetyConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_id = stream_id
        self.config = config or SafetyConfig()
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._state = SafetyState.FAULT
        self._reason = "no frame yet"
        self._since = now
        self._protective_latch = False
        self._fault_latch = False
        self._last_frame_at = now  # the watchdog counts from creation until the first frame
        self._decode_failures = 0
        self._latest_observed = SafetyState.CLEAR
        self._latest_frame_faulty = True  # no frame yet
        # per level above CLEAR: WARNING and PROTECTIVE_STOP come from the zones (not
        # seen yet, so already cleared), FAULT from faults (the start-up one: now)
        long_ago = now - self.config.clear_ms / 1000
        self._causes = {
            SafetyState.WARNING: _Cause(long_ago, self.config.clear_frames),
            SafetyState.PROTECTIVE_STOP: _Cause(long_ago, self.config.clear_frames),
            SafetyState.FAULT: _Cause(now, 0),
        }

    # ------------------------------------------------------------ properties
    @property
    def state(self) -> SafetyState:
        return self._state

    @property
    def latched(self) -> bool:
        """Whether a reset is needed before the state can get better."""
        return self._protective_latch or self._fault_latch

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def since(self) -> float:
        return self._since

    def status(self) -> dict:
        """``state``, ``latched``, ``reason``, ``since`` (for heartbeats and REST)."""
        with self._lock:
            return {"state": self._state, "latched": self.latched, "reason": self._reason, "since": self._since}

    # ------------------------------------------------------------ inputs
    def frame(
        self,
        observed: SafetyState,
        capture_ts: float,
        done_ts: float,
        cause: str | None = None,
        *,
        received_ts: float | None = None,
        since_arrival_ms: float | None = None,
    ) -> Transition | None:
        """A processed frame whose zones show ``observed`` (CLEAR, WARNING or
        PROTECTIVE_STOP). ``cause`` says why (e.g. which track in which zone);
        it becomes the reason of an escalation.

        Lateness is the worse of capture-to-done (``done_ts - capture_ts``, the
        camera's clock against the service's wall clock) and
        ``since_arrival_ms`` (the service's own monotonic time since the frame
        arrived), so a camera clock that runs ahead cannot hide a late frame.
        A capture time that is not a clock reading (<= 0) or lies more than
        ``clock_ahead_ms`` after the frame's arrival (``received_ts``, else
        ``done_ts``) is itself a FAULT: the service cannot trust that camera's
        times."""
        observed = SafetyState(observed)
        if observed is SafetyState.FAULT:
            raise ValueError("frame(): observed comes from the zones; use fault() for FAULT")
        config = self.config
        with self._lock:
            now = self._clock()
            before = self._snapshot()
            gap_ms = (now - self._last_frame_at) * 1000
            clock_problem = self._clock_problem(capture_ts, done_ts if received_ts is None else received_ts)
            candidates = [] if clock_problem else [((done_ts - capture_ts) * 1000, "capture")]
            if since_arrival_ms is not None:
                candidates.append((since_arrival_ms, "arrival"))
            late_ms, late_from = max(candidates, default=(0.0, "capture"))
            self._last_frame_at = now
            self._decode_failures = 0
            self._latest_observed = observed

            for level in (SafetyState.WARNING, SafetyState.PROTECTIVE_STOP):
                if observed.severity >= level.severity:
                    self._causes[level].seen(now)
                else:
                    self._causes[level].frames_without += 1
            newly_latched = (observed is SafetyState.PROTECTIVE_STOP and config.latch_protective
                             and not self._protective_latch)
            if newly_latched:
                self._protective_latch = True

            late = late_ms > config.deadline_ms
            missed = gap_ms > config.watchdog_ms
            # A frame that arrived before the latest fault (e.g. still in flight when its
            # source was lost) is no evidence that the fault is over.
            stale = (since_arrival_ms is not None
                     and now - since_arrival_ms / 1000 <= self._causes[SafetyState.FAULT].last_seen)
            self._latest_frame_faulty = late or clock_problem is not None or stale
            if late or missed or clock_problem:
                self._causes[SafetyState.FAULT].seen(now)
            elif not stale:
                self._causes[SafetyState.FAULT].frames_without += 1

            if clock_problem:
                return self._enter_fault(before, now, clock_problem)
            if late:
                return self._enter_fault(
                    before, now, f"falling behind: frame done {late_ms:.0f} ms after {late_from} "
                    f"(deadline {config.deadline_ms:.0f} ms)")
            if missed and self._state is not SafetyState.FAULT:
                # the watchdog's tick did not run in time; the unwatched gap is still a fault
                return self._enter_fault(before, now, f"no frame for {gap_ms:.0f} ms")
            if observed.severity > self._state.severity:
                return self._move(before, now, observed, cause or f"zones report {observed.value}")
            auto = self._auto_reset(now)
            target = self._settled(now)
            if target is self._state and newly_latched:  # e.g. seen in the protective zone while FAULT
                return self._move(before, now, target, cause or "person in protective zone")
            return self._move(before, now, target, auto or self._clear_reason(now))

    def fault(self, reason: str) -> Transition | None:
        """An engine error, a lost source, anything that makes the stream blind: FAULT now."""
        with self._lock:
            now = self._clock()
            before = self._snapshot()
            self._causes[SafetyState.FAULT].seen(now)
            self._latest_frame_faulty = True
            return self._enter_fault(before, now, reason)

    def decode_failed(self, reason: str) -> Transition | None:
        """One more consecutive decode failure; FAULT at ``decode_failures``."""
        with self._lock:
            now = self._clock()
            before = self._snapshot()
            self._decode_failures += 1
            if self._decode_failures < self.config.decode_failures:
                return None
            self._causes[SafetyState.FAULT].seen(now)
            self._latest_frame_faulty = True
            return self._enter_fault(before, now, f"{self._decode_failures} consecutive decode failures: {reason}")

    def tick(self) -> Transition | None:
        """The watchdog (call it every ~watchdog_ms/4): FAULT when no frame came for
        more than ``watchdog_ms``, once; also the auto-reset of a latched stop."""
        with self._lock:
            now = self._clock()
            before = self._snapshot()
            silent_ms = (now - self._last_frame_at) * 1000
            if silent_ms > self.config.watchdog_ms:
                self._causes[SafetyState.FAULT].seen(now)
                self._latest_frame_faulty = True
                if self._state is SafetyState.FAULT:
                    return None  # already reported once
                return self._enter_fault(before, now, f"no frame for {silent_ms:.0f} ms")
            auto = self._auto_reset(now)
            if auto is None:
                return None
            return self._move(before, now, self._settled(now), auto)

    def reset(self, reason: str) -> Transition | None:
        """An operator's reset: releases the latches and moves to what the latest
        frames show (CLEAR only when the hysteresis holds). Refused (None, latch
        kept) while ``reset_blocker()`` says why."""
        with self._lock:
            now = self._clock()
            before = self._snapshot()
            if self._blocker(now) is not None:
                return None
            self._protective_latch = False
            self._fault_latch = False
            return self._move(before, now, self._settled(now), f"reset: {reason}")

    def reset_blocker(self) -> str | None:
        """Why a reset would be refused now, or None."""
        with self._lock:
            return self._blocker(self._clock())

    # ------------------------------------------------------------ internals
    def _snapshot(self) -> tuple[SafetyState, bool]:
        return self._state, self.latched

    def _blocker(self, now: float) -> str | None:
        silent_ms = (now - self._last_frame_at) * 1000
        if silent_ms > self.config.watchdog_ms:
            return f"no frame for {silent_ms:.0f} ms: a reset needs live frames"
        if self._latest_frame_faulty:
            return "the latest frame or input was faulty"
        if self._protective_latch and self._latest_observed is SafetyState.PROTECTIVE_STOP:
            return "a person is still in the protective zone"
        return None

    def _clock_problem(self, capture_ts: float, arrived_ts: float) -> str | None:
        """Why ``capture_ts`` cannot be trusted, or None."""
        if not math.isfinite(capture_ts) or capture_ts <= 0:
            return f"capture time {capture_ts!r} is not a clock reading: the camera's clock is not set"
        ahead_ms = (capture_ts - arrived_ts) * 1000
        if ahead_ms > self.config.clock_ahead_ms:
            return (f"camera clock ahead: capture time {ahead_ms:.0f} ms after the frame's arrival "
                    f"(limit {self.config.clock_ahead_ms:.0f} ms); lateness cannot be trusted")
        return None

    def _cleared(self, level: SafetyState, now: float) -> bool:
        cause = self._causes[level]
        return (cause.frames_without >= self.config.clear_frames
                and (now - cause.last_seen) * 1000 >= self.config.clear_ms)

    def _held(self, level: SafetyState) -> bool:
        if level is SafetyState.FAULT:
            return self._fault_latch
        if level is SafetyState.PROTECTIVE_STOP:
            return self._protective_latch
        return False

    def _settled(self, now: float) -> SafetyState:
        """The best state reachable now: step down from the current state while
        the level's latch is free and its cause has been absent long enough."""
        floor = SafetyState.FAULT if self._latest_frame_faulty else self._latest_observed
        target = self._state
        while (target.severity > floor.severity and not self._held(target) and self._cleared(target, now)):
            target = _ORDER[target.severity - 1]
        return target

    def _clear_reason(self, now: float) -> str:
        observed = f"zones report {self._latest_observed.value}"
        cause = self._causes.get(self._state)
        if cause is None:
            return observed
        return (f"{self._state.value} cause absent for {cause.frames_without} frames and "
                f"{(now - cause.last_seen) * 1000:.0f} ms; {observed}")

    def _auto_reset(self, now: float) -> str | None:
        """Release a latched stop after ``auto_reset_s`` of quiet; the reason, or None."""
        auto_reset_s = self.config.auto_reset_s
        if auto_reset_s is None or not self._protective_latch or self._latest_frame_faulty:
            return None
        cause = self._causes[SafetyState.PROTECTIVE_STOP]
        if now - cause.last_seen < auto_reset_s or not self._cleared(SafetyState.PROTECTIVE_STOP, now):
            return None
        self._protective_latch = False
        return f"auto-reset after {now - cause.last_seen:.1f} s without a person in the protective zone"

    def _enter_fault(self, before: tuple[SafetyState, bool], now: float, reason: str) -> Transition | None:
        if self.config.latch_fault:
            self._fault_latch = True
        return self._move(before, now, SafetyState.FAULT, reason)

    def _move(self, before: tuple[SafetyState, bool], now: float, target: SafetyState,
              reason: str) -> Transition | None:
        if target is not self._state:
            self._state = target
            self._since = now
        if (self._state, self.latched) == before:
            return None
        self._reason = reason
        return Transition(before[0], self._state, reason, self.latched, now)
