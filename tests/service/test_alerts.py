"""service.alerts: the per-stream safety state machine, driven by a fake clock."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from service.alerts import SafetyConfig, SafetyState, StreamSafety, Transition, worst

CLEAR, WARNING, STOP, FAULT = SafetyState.CLEAR, SafetyState.WARNING, SafetyState.PROTECTIVE_STOP, SafetyState.FAULT
FRAME_S = 0.1  # 10 fps


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Cell:
    """A StreamSafety with its clock and every transition it reported."""

    def __init__(self, **config) -> None:
        self.clock = FakeClock()
        self.safety = StreamSafety("cam1", SafetyConfig(**config), clock=self.clock)
        self.transitions: list[Transition] = []

    def _keep(self, transition: Transition | None) -> Transition | None:
        if transition is not None:
            assert transition.reason, "every transition has a reason"
            assert transition.at == self.clock.now
            if self.transitions:
                assert transition.from_state is self.transitions[-1].to_state
            self.transitions.append(transition)
        return transition

    def frame(self, observed: SafetyState, dt: float = FRAME_S, lag: float = 0.05, cause: str | None = None):
        self.clock.advance(dt)
        capture = self.clock.now - lag
        return self._keep(self.safety.frame(observed, capture_ts=capture, done_ts=self.clock.now, cause=cause))

    def frames(self, observed: SafetyState, count: int, dt: float = FRAME_S) -> list[Transition | None]:
        return [self.frame(observed, dt) for _ in range(count)]

    def tick(self, dt: float = 0.0):
        self.clock.advance(dt)
        return self._keep(self.safety.tick())

    def fault(self, reason: str):
        return self._keep(self.safety.fault(reason))

    def decode_failed(self, reason: str = "bad JPEG"):
        return self._keep(self.safety.decode_failed(reason))

    def reset(self, reason: str = "operator"):
        return self._keep(self.safety.reset(reason))

    @property
    def state(self) -> SafetyState:
        return self.safety.state


def running(**config) -> Cell:
    """A cell whose first frames have cleared the start-up FAULT."""
    cell = Cell(**config)
    cell.frames(CLEAR, 6)
    assert cell.state is CLEAR
    cell.transitions.clear()
    return cell


# ------------------------------------------------------------------ basics
def test_severity_order_and_config_is_strict():
    assert [s.severity for s in (CLEAR, WARNING, STOP, FAULT)] == [0, 1, 2, 3]
    assert worst(WARNING, CLEAR, STOP) is STOP and worst() is CLEAR
    with pytest.raises(ValidationError):
        SafetyConfig(clear_frame=3)
    with pytest.raises(ValidationError):
        SafetyConfig(clear_frames=0)


def test_starts_in_fault_until_frames_clear_it_through_the_hysteresis():
    cell = Cell()
    assert cell.state is FAULT and cell.safety.reason == "no frame yet" and not cell.safety.latched
    # 3 frames in 300 ms: not yet 500 ms since creation
    assert cell.frames(CLEAR, 3) == [None] * 3
    assert cell.frame(CLEAR) is None  # 400 ms
    transition = cell.frame(CLEAR)  # 500 ms, 5 frames
    assert (transition.from_state, transition.to_state) == (FAULT, CLEAR)
    assert cell.safety.since == cell.clock.now


def test_frame_rejects_fault_as_an_observation():
    cell = running()
    with pytest.raises(ValueError):
        cell.safety.frame(FAULT, 0.0, 0.0)


# ------------------------------------------------------------------ escalation and hysteresis
def test_escalation_is_immediate_on_the_first_frame():
    cell = running(latch_protective=False)
    transition = cell.frame(WARNING, cause="track 4 in zone 'approach'")
    assert (transition.from_state, transition.to_state) == (CLEAR, WARNING)
    assert transition.reason == "track 4 in zone 'approach'"
    transition = cell.frame(STOP)
    assert (transition.from_state, transition.to_state) == (WARNING, STOP)
    assert "PROTECTIVE_STOP" in transition.reason and not transition.latched

    cell = running()
    transition = cell.frame(STOP)
    assert (transition.from_state, transition.to_state, transition.latched) == (CLEAR, STOP, True)


def test_n_frames_in_less_than_t_ms_stay():
    cell = running(clear_frames=3, clear_ms=500)
    cell.frame(WARNING)
    assert cell.frames(CLEAR, 4) == [None] * 4  # 4 frames, 400 ms since WARNING was last seen
    assert cell.state is WARNING
    transition = cell.frame(CLEAR)  # 500 ms
    assert (transition.from_state, transition.to_state) == (WARNING, CLEAR)
    assert "500 ms" in transition.reason and "5 frames" in transition.reason


def test_t_ms_with_fewer_than_n_frames_stay():
    cell = running(clear_frames=3, clear_ms=500, watchdog_ms=2000)
    cell.frame(WARNING)
    assert cell.frame(CLEAR, dt=0.4) is None
    assert cell.frame(CLEAR, dt=0.4) is None  # 800 ms, 2 frames
    assert cell.state is WARNING
    transition = cell.frame(CLEAR, dt=0.05)  # 3rd frame
    assert transition.to_state is CLEAR


def test_the_cause_seen_again_restarts_the_hysteresis():
    cell = running(clear_frames=3, clear_ms=300)
    cell.frame(WARNING)
    cell.frames(CLEAR, 2)
    assert cell.frame(WARNING) is None  # same state, nothing to report
    assert cell.frames(CLEAR, 2) == [None, None]
    assert cell.frame(CLEAR).to_state is CLEAR


def test_steps_down_one_cause_at_a_time_without_latch():
    cell = running(latch_protective=False, clear_frames=2, clear_ms=200)
    cell.frame(STOP)
    cell.frame(WARNING)  # left the protective zone, still in the warning zone
    transition = cell.frame(WARNING)
    assert (transition.from_state, transition.to_state) == (STOP, WARNING)
    cell.frame(CLEAR)
    assert cell.frame(CLEAR).to_state is CLEAR


# ------------------------------------------------------------------ latch, reset, auto-reset
def test_latch_holds_the_stop_until_reset():
    cell = running()
    cell.frame(STOP)
    assert cell.frames(CLEAR, 30) == [None] * 30  # 3 s without anyone: still latched
    assert cell.state is STOP and cell.safety.latched
    transition = cell.reset("operator checked the cell")
    assert (transition.from_state, transition.to_state, transition.latched) == (STOP, CLEAR, False)
    assert transition.reason == "reset: operator checked the cell"


def test_reset_while_the_person_is_still_there_keeps_the_stop():
    cell = running()
    cell.frame(STOP)
    cell.frames(STOP, 10)
    assert "protective zone" in cell.safety.reset_blocker()
    assert cell.reset() is None
    assert cell.state is STOP and cell.safety.latched
    # the person leaves: without a new reset the stop stays
    cell.frames(CLEAR, 10)
    assert cell.state is STOP and cell.safety.reset_blocker() is None


def test_reset_goes_to_what_the_frames_show():
    cell = running()
    cell.frame(STOP)
    cell.frames(WARNING, 10)  # out of the protective zone, still in the warning zone
    transition = cell.reset()
    assert (transition.to_state, transition.latched) == (WARNING, False)

    # left 200 ms ago: the latch is released, the hysteresis still holds the stop,
    # then the frames clear it without another reset
    cell = running()
    cell.frame(STOP)
    cell.frames(CLEAR, 2)
    transition = cell.reset()
    assert (transition.from_state, transition.to_state, transition.latched) == (STOP, STOP, False)
    cell.frames(CLEAR, 2)
    assert cell.state is STOP
    assert cell.frame(CLEAR).to_state is CLEAR


def test_a_new_stop_after_reset_latches_again():
    cell = running()
    cell.frame(STOP)
    cell.frames(CLEAR, 2)
    cell.reset()
    transition = cell.frame(STOP)  # back in before the stop cleared
    assert (transition.from_state, transition.to_state, transition.latched) == (STOP, STOP, True)
    cell.frames(CLEAR, 20)
    assert cell.state is STOP


def test_auto_reset_after_the_quiet_time():
    cell = running(auto_reset_s=2.0)
    cell.frame(STOP)
    left_at = cell.clock.now
    cell.frames(CLEAR, 5)
    cell.frame(STOP)  # back for a moment: the quiet time starts again
    left_at = cell.clock.now
    cell.frames(CLEAR, 19)  # 1.9 s quiet
    assert cell.tick() is None and cell.state is STOP and cell.safety.latched
    cell.frame(CLEAR)
    assert cell.clock.now - left_at == pytest.approx(2.0)
    transition = cell.transitions[-1]
    assert (transition.from_state, transition.to_state, transition.latched) == (STOP, CLEAR, False)
    assert transition.reason.startswith("auto-reset")


def test_auto_reset_on_tick_and_never_without_frames():
    cell = running(auto_reset_s=1.0, watchdog_ms=5000)
    cell.frame(STOP)
    cell.frames(CLEAR, 3)
    cell.tick(0.65)  # 0.95 s since last seen
    assert cell.state is STOP
    transition = cell.tick(0.1)
    assert (transition.to_state, transition.reason[:10]) == (CLEAR, "auto-reset")

    cell = running(auto_reset_s=1.0)
    cell.frame(STOP)
    cell.frames(CLEAR, 3)
    assert cell.tick(0.6).to_state is FAULT  # the watchdog first: nobody is watching
    assert cell.tick(5.0) is None
    assert cell.state is FAULT and cell.safety.latched


# ------------------------------------------------------------------ watchdog and FAULT
def test_watchdog_fault_once_within_the_configured_time():
    cell = running(watchdog_ms=500)
    assert cell.tick(0.499) is None and cell.state is CLEAR
    transition = cell.tick(0.002)
    assert (transition.from_state, transition.to_state) == (CLEAR, FAULT)
    assert transition.reason == "no frame for 501 ms"
    for _ in range(20):
        assert cell.tick(0.1) is None
    assert len(cell.transitions) == 1 and cell.safety.reason == "no frame for 501 ms"


def test_watchdog_counts_from_creation():
    cell = Cell(watchdog_ms=500)
    cell.tick(0.6)
    cell.frame(CLEAR)  # after the gap: still FAULT, the gap was the cause until now
    assert cell.frames(CLEAR, 4) == [None] * 4
    assert cell.frame(CLEAR).to_state is CLEAR


def test_a_gap_the_watchdog_missed_is_still_a_fault():
    cell = running(watchdog_ms=500)
    transition = cell.frame(CLEAR, dt=0.8)  # nobody ticked during the gap
    assert (transition.to_state, transition.reason) == (FAULT, "no frame for 800 ms")


def test_fault_never_clears_on_tick_or_reset_without_frames():
    cell = running()
    assert cell.fault("engine error: CUDA OOM").to_state is FAULT
    assert cell.fault("engine error again") is None  # reported once
    for _ in range(50):
        assert cell.tick(0.2) is None
        assert cell.reset() is None
    assert cell.state is FAULT
    assert "no frame" in cell.safety.reset_blocker()
    assert all(t.to_state is not CLEAR for t in cell.transitions)


def test_fault_recovers_when_frames_flow_with_hysteresis():
    cell = running(watchdog_ms=500, clear_frames=3, clear_ms=500)
    cell.tick(0.6)
    assert cell.state is FAULT
    cell.frame(CLEAR)  # first frame after the gap: the cause was present until now
    assert cell.frames(CLEAR, 4) == [None] * 4  # 4 frames, 400 ms
    transition = cell.frame(CLEAR)
    assert (transition.from_state, transition.to_state) == (FAULT, CLEAR)


def test_fault_recovers_to_the_state_the_frames_show():
    cell = running()
    cell.fault("source lost")
    cell.frames(WARNING, 4)
    assert cell.state is FAULT
    transition = cell.frame(WARNING)
    assert (transition.from_state, transition.to_state) == (FAULT, WARNING)


def test_a_latched_stop_survives_a_fault():
    cell = running()
    cell.frame(STOP)
    cell.fault("engine error")
    assert cell.state is FAULT and cell.safety.latched
    cell.frames(CLEAR, 10)
    assert cell.state is STOP and cell.safety.latched  # not CLEAR: the stop was never reset
    assert cell.reset().to_state is CLEAR


def test_a_stop_seen_while_faulted_latches():
    cell = running()
    cell.fault("engine error")
    transition = cell.frame(STOP, cause="track 2 in zone 'robot'")
    assert (transition.from_state, transition.to_state, transition.latched) == (FAULT, FAULT, True)
    assert transition.reason == "track 2 in zone 'robot'"
    cell.frames(CLEAR, 10)
    assert cell.state is STOP


def test_latched_fault_needs_frames_and_a_reset():
    cell = running(latch_fault=True)
    cell.fault("engine error")
    assert cell.reset() is None  # no frames since
    cell.frames(CLEAR, 10)
    assert cell.state is FAULT and cell.safety.latched
    transition = cell.reset()
    assert (transition.from_state, transition.to_state, transition.latched) == (FAULT, CLEAR, False)


def test_decode_failures_are_counted_and_reset_by_a_good_frame():
    cell = running(decode_failures=3)
    assert cell.decode_failed() is None and cell.decode_failed() is None
    cell.frame(CLEAR)
    assert cell.decode_failed() is None and cell.decode_failed() is None
    transition = cell.decode_failed("truncated JPEG")
    assert transition.to_state is FAULT and transition.reason == "3 consecutive decode failures: truncated JPEG"
    assert cell.decode_failed() is None


def test_late_frame_faults_and_timely_frames_recover():
    cell = running(deadline_ms=1000)
    assert cell.frame(CLEAR, lag=1.0) is None  # exactly at the deadline: in time
    transition = cell.frame(CLEAR, lag=1.2)
    assert transition.to_state is FAULT
    assert transition.reason == "falling behind: frame done 1200 ms after capture (deadline 1000 ms)"
    assert "faulty" in cell.safety.reset_blocker()
    assert cell.frames(CLEAR, 4) == [None] * 4
    assert cell.frame(CLEAR).to_state is CLEAR


# ------------------------------------------------------------------ invariants under a random schedule
@pytest.mark.parametrize("seed", range(5))
def test_random_schedule_invariants(seed):
    rng = random.Random(seed)
    config = {"clear_frames": 3, "clear_ms": 300, "watchdog_ms": 500, "latch_fault": seed % 2 == 1,
              "auto_reset_s": 1.5 if seed % 3 == 0 else None}
    cell = Cell(**config)
    last_frame = cell.clock.now
    for _ in range(2000):
        before = cell.state
        action = rng.random()
        if action < 0.7:
            observed = rng.choices([CLEAR, WARNING, STOP], [0.7, 0.2, 0.1])[0]
            transition = cell.frame(observed, dt=rng.choice([0.05, 0.1, 0.1, 0.3, 0.7]),
                                    lag=rng.choice([0.05, 0.05, 1.5]))
            last_frame = cell.clock.now
            if transition is not None and transition.to_state.severity < before.severity:
                # never better than what this frame showed
                assert transition.to_state.severity >= observed.severity
        elif action < 0.8:
            transition = cell.tick(rng.choice([0.0, 0.2, 0.6]))
            if cell.clock.now - last_frame > 0.5:
                assert cell.state is FAULT
        elif action < 0.85:
            cell.fault("engine error")
            assert cell.state is FAULT
        elif action < 0.9:
            cell.decode_failed()
        else:
            transition = cell.reset()
            if cell.clock.now - last_frame > 0.5:
                assert transition is None
        if before is FAULT and cell.state is not FAULT:
            # left FAULT only on a frame, or on a reset while frames are flowing
            assert action < 0.7 or action >= 0.9
            assert cell.clock.now - last_frame <= 0.5
    assert len(cell.transitions) > 20


# ---------------------------------------------------------------- camera clocks
# The deadline once compared only the camera's capture time with the service's
# clock: a camera clock ahead made every frame look early, and capture_ts 0 was
# read as "missing". Both switched the deadline fault off.


def _frame_at(cell: Cell, capture_ts: float, since_arrival_ms: float | None = None, received_ts: float | None = None):
    cell.clock.advance(FRAME_S)
    return cell._keep(cell.safety.frame(CLEAR, capture_ts=capture_ts, done_ts=cell.clock.now,
                                        received_ts=received_ts, since_arrival_ms=since_arrival_ms))


def test_a_camera_clock_ahead_is_a_fault_not_an_early_frame():
    cell = running(deadline_ms=300, clock_ahead_ms=500)
    transition = _frame_at(cell, capture_ts=cell.clock.now + 60.0, since_arrival_ms=50)
    assert cell.state is FAULT and "clock ahead" in transition.reason
    # a little ahead (NTP jitter) is tolerated while the frame is on time
    cell = running(deadline_ms=300, clock_ahead_ms=500)
    assert _frame_at(cell, capture_ts=cell.clock.now + 0.2, since_arrival_ms=50) is None
    assert cell.state is CLEAR


@pytest.mark.parametrize("capture_ts", [0.0, -1.0])
def test_a_capture_time_of_zero_is_not_missing_but_untrustworthy(capture_ts):
    cell = running(deadline_ms=300)
    transition = _frame_at(cell, capture_ts=capture_ts, since_arrival_ms=50)
    assert cell.state is FAULT and "not a clock reading" in transition.reason


def test_lateness_is_the_worse_of_capture_and_arrival():
    # the camera says the frame is 100 ms old, but it arrived 380 ms ago on the
    # service's own monotonic clock: late for a 300 ms deadline
    cell = running(deadline_ms=300)
    transition = _frame_at(cell, capture_ts=cell.clock.now - 0.1, since_arrival_ms=380)
    assert cell.state is FAULT and "380 ms" in transition.reason
    # and the other way round: arrived recently, captured long ago
    cell = running(deadline_ms=300)
    _frame_at(cell, capture_ts=cell.clock.now - 2.0, since_arrival_ms=20)
    assert cell.state is FAULT


def test_the_clock_check_uses_the_arrival_time_when_given():
    cell = running(clock_ahead_ms=500)
    # done 0.6 s after arrival; capture 0.3 s after arrival: within the limit
    arrival = cell.clock.now + FRAME_S - 0.6
    assert _frame_at(cell, capture_ts=arrival + 0.3, since_arrival_ms=600, received_ts=arrival) is None
    cell = running(clock_ahead_ms=500)
    arrival = cell.clock.now + FRAME_S - 0.1
    transition = _frame_at(cell, capture_ts=arrival + 0.7, since_arrival_ms=100, received_ts=arrival)
    assert cell.state is FAULT and "clock ahead" in transition.reason


@pytest.mark.parametrize("field,value", [
    ("watchdog_ms", math.inf), ("watchdog_ms", 1e308), ("watchdog_ms", math.nan), ("watchdog_ms", 0),
    ("deadline_ms", math.inf), ("clear_ms", math.inf), ("auto_reset_s", math.inf), ("clock_ahead_ms", math.inf),
    ("deadline_ms", 1e9),
])
def test_safety_timings_must_be_finite_and_bounded(field, value):
    with pytest.raises(ValueError, match=field):
        SafetyConfig(**{field: value})


def test_frames_that_arrived_before_a_fault_do_not_clear_it():
    # a source is lost while two frames are still in flight: their results must not
    # count as the fault's absence, however low clear_frames is
    cell = running(clear_frames=1, clear_ms=0)
    cell.clock.advance(0.05)
    lost_at = cell.clock.now
    cell.fault("source disconnected: connection reset")
    for _ in range(2):
        cell.clock.advance(0.1)
        arrived_ms = (cell.clock.now - (lost_at - 0.01)) * 1000
        cell._keep(cell.safety.frame(CLEAR, capture_ts=cell.clock.now - 0.3, done_ts=cell.clock.now,
                                     since_arrival_ms=arrived_ms))
        assert cell.state is FAULT
    assert cell.safety.reset_blocker() == "the latest frame or input was faulty"
    # a frame that arrived after the fault clears it
    cell.clock.advance(0.1)
    transition = cell._keep(cell.safety.frame(CLEAR, capture_ts=cell.clock.now - 0.05, done_ts=cell.clock.now,
                                              since_arrival_ms=50))
    assert transition is not None and cell.state is CLEAR
