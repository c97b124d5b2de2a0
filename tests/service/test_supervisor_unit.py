"""service.supervisor.SafetySupervisor fed FrameResults directly: persons placed against
pixel and metre zones from their binary masks, the state they drive, faults, heartbeats,
deleted streams and zone changes, all read from the events it publishes."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from models.detections import Detections
from models.masks import decode_rle
from service.alerts import SafetyConfig, SafetyState
from service.events import EventBus
from service.results import FrameResult
from service.supervisor import SafetySupervisor
from service.zones import ZoneError, ZoneSet

FRAME_HW = (200, 200)
PIXEL_ZONES = {"units": "pixels", "hazard": [[80, 80], [120, 80], [120, 120], [80, 120]],
               "protective": {"distance": 20}, "warning": {"distance": 50}}
# A camera whose horizon is image row 50: floor X = (x - 100) / (y - 50), Y = 100 / (y - 50) metres.
CALIBRATION = [(20, 190), (180, 190), (60, 70), (140, 70), (100, 100), (100, 60)]
METRE_ZONES = {"units": "metres",
               "homography": {"image": CALIBRATION, "floor": [((x - 100) / (y - 50), 100 / (y - 50))
                                                              for x, y in CALIBRATION]},
               "hazard": [[-0.5, 1.5], [0.5, 1.5], [0.5, 2.5], [-0.5, 2.5]],
               "protective": {"distance": 0.3}, "warning": {"distance": 1.0}}
QUICK = SafetyConfig(clear_frames=1, clear_ms=0)  # better states on the next frame: no waiting


class RecordingBus(EventBus):
    """An EventBus that also keeps every event it published (history drops a deleted stream's)."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[dict] = []

    def publish(self, stream_id, type, **fields):
        event = super().publish(stream_id, type, **fields)
        self.published.append(event)
        return event

    def of(self, type: str, stream_id: str = "cam") -> list[dict]:
        return [e for e in self.published if e["type"] == type and e["stream_id"] == stream_id]


def rect(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """A binary mask, rows top..bottom and columns left..right inclusive."""
    mask = np.zeros(FRAME_HW, bool)
    mask[top : bottom + 1, left : right + 1] = True
    return mask


IN_HAZARD = rect(90, 110, 95, 105)  # ground row 110: inside the hazard
PROTECTIVE = rect(30, 65, 100, 105)  # ground row 65: 80 - 65.5 = 14.5 px above the hazard
WARNING = rect(10, 40, 100, 105)  # ground row 40: 39.5 px
FAR = rect(10, 30, 5, 10)  # ground (10.5, 30.5): hypot(69.5, 49.5) px from the corner (80, 80)


def frame(people: list[tuple[int, np.ndarray]], number: int = 1, others: list[np.ndarray] = (),
          capture_ts: float | None = None) -> FrameResult:
    """A FrameResult of ``people`` (track id, mask) of class person and ``others`` of class forklift."""
    masks = [m for _, m in people] + list(others)
    boxes = []
    for mask in masks:
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    count = len(masks)
    detections = Detections(
        np.array(boxes, np.float32).reshape(-1, 4), np.full(count, 0.9), [1] * len(people) + [2] * len(others),
        FRAME_HW, track_ids=np.array([t for t, _ in people] + [100 + i for i in range(len(others))]),
        masks=np.stack(masks) if masks else np.zeros((0, *FRAME_HW), bool))
    return FrameResult("cam", number, time.time() if capture_ts is None else capture_ts,
                       np.zeros((*FRAME_HW, 3), np.uint8), detections, ["person", "forklift"], {})


def states(bus: RecordingBus) -> list[tuple[str, bool]]:
    return [(e["state"], e["latched"]) for e in bus.of("state")]


# ------------------------------------------------------------------ persons
def test_persons_events_carry_each_persons_distance_zone_and_mask():
    bus = RecordingBus()
    supervisor = SafetySupervisor(bus, QUICK)
    supervisor.add("cam", PIXEL_ZONES)
    crc = ZoneSet.from_spec(PIXEL_ZONES).crc_hex
    people = [(1, IN_HAZARD), (2, PROTECTIVE), (3, WARNING), (4, FAR)]
    result = frame(people, others=[rect(150, 190, 150, 190)], capture_ts=time.time() - 0.01)
    supervisor.on_result("cam", result)
    [event] = bus.of("persons")
    assert event["capture_ts"] == result.capture_ts and event["config_crc"] == crc
    assert event["state"] == "FAULT"  # the state in force when the frame came: a stream starts in FAULT
    persons = event["persons"]
    assert [p["track_id"] for p in persons] == [1, 2, 3, 4]  # the forklift is no person
    assert [p["zone"] for p in persons] == ["hazard", "protective", "warning", None]
    assert [p["distance"] for p in persons] == pytest.approx([0.0, 14.5, 39.5, np.hypot(69.5, 49.5)], abs=1e-4)
    assert all(p["units"] == "pixels" and p["score"] == pytest.approx(0.9) for p in persons)
    assert event["zones"] == {"hazard": [1], "protective": [2], "warning": [3]}
    for person, (_, mask) in zip(persons, people):
        np.testing.assert_array_equal(decode_rle(person["mask"]), mask)
        rows, cols = np.nonzero(mask)
        assert person["box"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    assert states(bus)[-1] == ("PROTECTIVE_STOP", True)


def test_without_zones_persons_have_no_distance_and_the_state_follows_frames_only():
    bus = RecordingBus()
    supervisor = SafetySupervisor(bus, QUICK)
    supervisor.add("cam")
    supervisor.on_result("cam", frame([(1, IN_HAZARD)]))
    [event] = bus.of("persons")
    person = event["persons"][0]
    assert (person["distance"], person["zone"], person["units"]) == (None, None, "pixels")
    assert event["zones"] == {} and event["config_crc"] is None
    assert states(bus) == [("FAULT", False), ("CLEAR", False)]


# -------------------------------------------------------------------- state
def test_the_observed_state_escalates_to_warning_then_protective_stop_which_latches():
    bus = RecordingBus()
    supervisor = SafetySupervisor(bus, QUICK)
    supervisor.add("cam", PIXEL_ZONES)
    supervisor.on_result("cam", frame([(9, FAR)], 1))
    supervisor.on_result("cam", frame([(3, WARNING)], 2))
    supervisor.on_result("cam", frame([(2, PROTECTIVE)], 3))
    blocked = supervisor.reset("cam", "operator")  # the person is still in the protective zone
    supervisor.on_result("cam", frame([], 4))  # gone, but the stop is latched
    assert states(bus) == [("FAULT", False), ("CLEAR", False), ("WARNING", False), ("PROTECTIVE_STOP", True)]
    reasons = [e["reason"] for e in bus.of("state")]
    assert reasons[2] == "track 3 in warning zone (39.5 pixels from the hazard)"
    assert reasons[3] == "track 2 in protective zone (14.5 pixels from the hazard)"
    assert blocked["released"] is False and blocked["blocked_by"] == "a person is still in the protective zone"
    released = supervisor.reset("cam", "operator")
    assert released["released"] is True and released["blocked_by"] is None
    assert released["state"] == SafetyState.CLEAR and states(bus)[-1] == ("CLEAR", False)
    assert bus.of("state")[-1]["reason"] == "reset: operator"
    # the hazard itself is a protective stop too
    supervisor.on_result("cam", frame([(1, IN_HAZARD)], 5))
    assert states(bus)[-1] == ("PROTECTIVE_STOP", True)
    assert bus.of("state")[-1]["reason"] == "track 1 in hazard zone (0.0 pixels from the hazard)"


def test_a_mask_beyond_the_horizon_is_a_fault_not_a_clear_person():
    bus = RecordingBus()
    supervisor = SafetySupervisor(bus, QUICK)
    supervisor.add("cam", METRE_ZONES)
    near = rect(100, 150, 98, 102)  # ground row 150: Y = 100 / 100.5 m, 1.5 - Y from the hazard
    supervisor.on_result("cam", frame([(4, near)], 1))
    assert states(bus)[-1] == ("WARNING", False)
    placed = bus.of("persons")[-1]["persons"][0]
    assert placed["units"] == "metres" and placed["zone"] == "warning"
    assert placed["distance"] == pytest.approx(1.5 - 100 / 100.5, abs=1e-4)
    supervisor.on_result("cam", frame([(5, rect(10, 40, 98, 102)), (4, near)], 2))  # ground row 40: above row 50
    assert states(bus)[-1] == ("FAULT", False)
    assert bus.of("state")[-1]["reason"] == "track 5: position unknown (its mask lies above the horizon)"
    unknown, known = bus.of("persons")[-1]["persons"]
    assert (unknown["track_id"], unknown["distance"], unknown["zone"]) == (5, None, None)
    assert known["zone"] == "warning"
    # a person back on the floor clears it on the next frame
    supervisor.on_result("cam", frame([(4, near)], 3))
    assert states(bus)[-1] == ("WARNING", False)


def test_engine_errors_and_bad_frames_are_faults():
    bus = RecordingBus()
    supervisor = SafetySupervisor(bus, SafetyConfig(clear_frames=1, clear_ms=0, decode_failures=2))
    supervisor.add("cam", PIXEL_ZONES)
    supervisor.on_result("cam", frame([], 1))
    supervisor.on_error("cam", "EngineError: boom")
    [fault] = bus.of("fault")
    assert (fault["state"], fault["reason"], fault["config_crc"]) == ("FAULT", "EngineError: boom",
                                                                       ZoneSet.from_spec(PIXEL_ZONES).crc_hex)
    assert states(bus)[-2:] == [("CLEAR", False), ("FAULT", False)]
    supervisor.on_result("cam", frame([], 2))
    supervisor.on_bad_frame("cam", "corrupt JPEG")
    assert states(bus)[-1] == ("CLEAR", False)  # one bad frame is not yet a fault
    supervisor.on_bad_frame("cam", "corrupt JPEG")
    assert bus.of("state")[-1]["reason"] == "2 consecutive decode failures: corrupt JPEG"
    count = len(bus.published)
    for unknown in (lambda: supervisor.on_error("other", "x"), lambda: supervisor.on_bad_frame("other", "x"),
                    lambda: supervisor.on_result("other", frame([], 1))):
        unknown()
    assert len(bus.published) == count  # streams it does not watch are ignored


# ------------------------------------------------------------------ streams
def test_removing_a_stream_publishes_a_final_fault_and_drops_its_history():
    bus = RecordingBus()
    supervisor = SafetySupervisor(bus, QUICK)
    supervisor.add("cam", PIXEL_ZONES)
    supervisor.on_result("cam", frame([(1, WARNING)], 1))
    latest = bus.last_seq("cam")
    supervisor.remove("cam")
    last = bus.published[-1]
    assert (last["type"], last["state"], last["reason"]) == ("fault", "FAULT", "stream deleted")
    assert last["seq"] == latest + 1 and last["config_crc"] == ZoneSet.from_spec(PIXEL_ZONES).crc_hex
    assert "cam" not in supervisor.watches
    assert bus.events_since("cam", 0) == ([], None)
    count = len(bus.published)
    supervisor.remove("cam")  # gone already: nothing more to say
    supervisor.on_result("cam", frame([(1, WARNING)], 2))
    assert len(bus.published) == count
    supervisor.add("cam")  # the id again: its numbering goes on, no old event is replayed
    assert bus.published[-1]["seq"] == latest + 2 and bus.events_since("cam", 0)[0] == [bus.published[-1]]


def test_zones_are_validated_apart_and_installed_on_demand():
    bus = RecordingBus()
    supervisor = SafetySupervisor(bus, QUICK, max_zone_vertices=4)
    with pytest.raises(ZoneError, match="zones must be a JSON object"):
        supervisor.validate_zones([[0, 0], [1, 0], [1, 1]])
    pentagon = {"units": "pixels", "hazard": [[0, 0], [10, 0], [12, 5], [10, 10], [0, 10]]}
    with pytest.raises(ZoneError, match="hazard has 5 points; at most 4"):
        supervisor.validate_zones(pentagon)
    with pytest.raises(ZoneError, match="hazard has 5 points"):
        supervisor.add("bad", pentagon)
    assert supervisor.watches == {} and bus.published == []
    supervisor.add("cam")
    supervisor.on_result("cam", frame([(1, IN_HAZARD)], 1))
    assert states(bus)[-1] == ("CLEAR", False)  # no zones: nobody is in any
    zone_set = supervisor.validate_zones(PIXEL_ZONES)
    assert supervisor.watches["cam"].zones is None  # validating installs nothing
    assert supervisor.install_zones("cam", zone_set) is zone_set
    assert supervisor.watches["cam"].zones is zone_set
    supervisor.on_result("cam", frame([(1, IN_HAZARD)], 2))
    assert states(bus)[-1] == ("PROTECTIVE_STOP", True)
    assert bus.of("persons")[-1]["config_crc"] == bus.of("state")[-1]["config_crc"] == zone_set.crc_hex


# ------------------------------------------------------------------- ticker
def test_the_ticker_sends_heartbeats_and_runs_the_watchdog():
    bus = RecordingBus()
    supervisor = SafetySupervisor(bus, SafetyConfig(clear_frames=1, clear_ms=0, watchdog_ms=40), heartbeat_ms=15)

    async def scenario():
        supervisor.add("cam", PIXEL_ZONES)
        supervisor.on_result("cam", frame([], 1))
        assert states(bus)[-1] == ("CLEAR", False)
        supervisor.start()
        deadline = time.monotonic() + 5.0
        while not (any(beat["state"] == "FAULT" for beat in bus.of("heartbeat")) and len(bus.of("heartbeat")) >= 4):
            assert time.monotonic() < deadline, "no heartbeats telling the watchdog's fault within 5 s"
            await asyncio.sleep(0.005)
        await supervisor.stop()
        count = len(bus.published)
        await asyncio.sleep(0.05)
        assert len(bus.published) == count  # stopped: nothing more

    asyncio.run(scenario())
    watchdog = bus.of("state")[-1]
    assert watchdog["reason"].startswith("no frame for ") and watchdog["reason"].endswith(" ms")
    assert int(watchdog["reason"].split()[3]) > 40
    beats = bus.of("heartbeat")
    assert all(b["config_crc"] == ZoneSet.from_spec(PIXEL_ZONES).crc_hex and b["latched"] is False for b in beats)
    assert beats[-1]["state"] == "FAULT"
    in_force = None  # each heartbeat tells the state in force when it was sent
    for event in bus.published:
        if event["type"] == "state":
            in_force = event["state"]
        elif event["type"] == "heartbeat":
            assert event["state"] == in_force, event
    seqs = [e["seq"] for e in bus.published]
    assert seqs == list(range(1, len(seqs) + 1))
