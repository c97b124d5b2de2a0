"""Zones, the safety state machine and the alerts WebSocket on a real server with real clients.

The engine is ``HogEngine`` (real people detected on real vtest.avi frames).
The hazard zone is drawn on the walkway's lower right, where people walk
through in frames 20-34 and nobody comes near in frames 75-89.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.app import create_app
from service.config import load_settings
from service.framing import encode_frame

from .hog_engine import HogEngine
from .live import LiveServer
from .test_app import _FailsOnRedFrames, _frames, _jpeg, _push_and_wait

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")

ZONES = {"units": "pixels", "hazard": [[640, 370], [768, 370], [768, 576], [640, 576]], "warning": {"distance": 30}}


class Collector:
    """A subscriber on /v1/alerts that reads everything in a thread."""

    def __init__(self, url: str, query: str = "") -> None:
        self.events: list[dict] = []
        self.close_code = None
        self._context = connect(f"{url}/v1/alerts{query}")
        self.ws = self._context.__enter__()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except ConnectionClosed:
            self.close_code = self.ws.close_code

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self.thread.join(10)

    def of(self, stream: str, kind: str | None = None) -> list[dict]:
        return [e for e in self.events if e["stream_id"] == stream and (kind is None or e["type"] == kind)]


def _states(events: list[dict]) -> list[str]:
    return [e["state"] for e in events if e["type"] == "state"]


@pytest.fixture(scope="module")
def frames():
    clips = {"in": _frames(15, start=20), "out": _frames(15, start=75)}
    return {name: [_jpeg(f) for f in clip] for name, clip in clips.items()}


def test_scripted_scene_gives_the_expected_transitions_hysteresis_and_latch(frames):
    settings = load_settings(None, safety={"clear_frames": 3, "clear_ms": 300, "watchdog_ms": 5000})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        assert live.client.post("/v1/streams", json={"id": "cell", "zones": ZONES}).status_code == 201
        alerts = Collector(live.ws_url, "?streams=cell&since=0")  # since=0: from the stream's first event
        try:
            _push_and_wait(live, "cell", frames["out"], time.time())
            assert live.client.get("/v1/streams/cell").json()["safety"]["state"] == "CLEAR"
            _push_and_wait(live, "cell", frames["in"][:1], time.time())
            state = live.client.get("/v1/streams/cell").json()["safety"]
            assert state["state"] == "PROTECTIVE_STOP" and state["latched"], "entering is immediate, on the first frame"
            _push_and_wait(live, "cell", frames["in"][1:] + frames["out"], time.time())
            state = live.client.get("/v1/streams/cell").json()["safety"]
            assert state["state"] == "PROTECTIVE_STOP" and state["latched"], "the stop latches until a reset"
            reset = live.client.post("/v1/streams/cell/reset").json()["reset"]
            assert reset["blocked_by"] is None and reset["state"] == "CLEAR"
            live.wait_for(lambda: len(alerts.of("cell", "state")) >= 4, what="the state events")
        finally:
            alerts.close()
        # (once the pushing stops, the watchdog adds a FAULT: not part of the scene)
        states = _states(alerts.of("cell"))[:4]
        assert states == ["FAULT", "CLEAR", "PROTECTIVE_STOP", "CLEAR"], states
        transitions = alerts.of("cell", "state")[:4]
        assert all(t["reason"] for t in transitions)
        assert "hazard zone" in transitions[2]["reason"]
        crc = transitions[-1]["config_crc"]
        assert crc and all(e["config_crc"] == crc for e in alerts.of("cell") if e["type"] != "gap")
        persons = alerts.of("cell", "persons")
        inside = [p for e in persons for p in e["persons"] if p["zone"] == "hazard"]
        assert inside and all(p["distance"] == 0 and p["units"] == "pixels" for p in inside)
        assert all(e["safety_rated"] is False and e["schema"] == "cellwatch.event/1" for e in alerts.events)
        seqs = [e["seq"] for e in alerts.of("cell")]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "per-stream seq is gapless"
        # hysteresis: the clear after the reset needed frames without the cause first
        assert transitions[1]["reason"] and "3" in transitions[1]["reason"]


def test_a_stalled_camera_gives_fault_within_twice_the_watchdog_every_time(frames):
    watchdog_ms = 1000  # above the ~0.3-0.5 s between frames processed one by one here
    settings = load_settings(None, safety={"watchdog_ms": watchdog_ms, "clear_frames": 1, "clear_ms": 0})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        live.client.post("/v1/streams", json={"id": "cam"})
        alerts = Collector(live.ws_url, "?streams=cam")
        try:
            for trial in range(5):
                _push_and_wait(live, "cam", frames["out"][:2], time.time())
                last = time.time()
                live.wait_for(lambda: live.client.get("/v1/streams/cam").json()["safety"]["state"] == "FAULT",
                              timeout=5, interval=0.01, what=f"FAULT in trial {trial}")
                faults = [e for e in alerts.of("cam", "state") if e["state"] == "FAULT" and e["emit_ts"] > last]
                live.wait_for(lambda: [e for e in alerts.of("cam", "state")
                                       if e["state"] == "FAULT" and e["emit_ts"] > last], timeout=5, what="event")
                faults = [e for e in alerts.of("cam", "state") if e["state"] == "FAULT" and e["emit_ts"] > last]
                assert faults[0]["emit_ts"] - last <= 2 * watchdog_ms / 1000, (trial, faults[0]["emit_ts"] - last)
                assert "no frame" in faults[0]["reason"]
        finally:
            alerts.close()
        heartbeats = alerts.of("cam", "heartbeat")
        assert len(heartbeats) >= 5 and {h["state"] for h in heartbeats} >= {"FAULT"}


def test_an_engine_that_raises_gives_fault_and_recovers(frames):
    settings = load_settings(None, safety={"clear_frames": 2, "clear_ms": 0, "watchdog_ms": 5000},
                             batching={"max_batch": 1})
    with LiveServer(create_app(settings, engine=_FailsOnRedFrames())) as live:
        live.client.post("/v1/streams", json={"id": "cam"})
        alerts = Collector(live.ws_url, "?streams=cam")
        try:
            _push_and_wait(live, "cam", frames["out"][:3], time.time())
            red = _jpeg(np.dstack([np.zeros((576, 768), np.uint8)] * 2 + [np.full((576, 768), 255, np.uint8)]))
            with connect(f"{live.ws_url}/v1/streams/cam/ingest") as ws:
                ws.send(encode_frame(time.time(), red))
            live.wait_for(lambda: alerts.of("cam", "fault"), what="a fault event")
            assert live.client.get("/v1/streams/cam").json()["safety"]["state"] == "FAULT"
            _push_and_wait(live, "cam", frames["out"][3:6], time.time())
            live.wait_for(lambda: live.client.get("/v1/streams/cam").json()["safety"]["state"] == "CLEAR",
                          what="recovery once frames are processed again")
        finally:
            alerts.close()
        assert "model failed" in alerts.of("cam", "fault")[0]["reason"]
        assert _states(alerts.of("cam"))[-3:] == ["CLEAR", "FAULT", "CLEAR"]


class RawSubscriber:
    """A WebSocket client on a bare socket that reads nothing until told to:
    nothing in it drains the socket behind the test's back."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = b""

    def read_until_close(self, timeout: float) -> tuple[int, str, int]:
        """Read every frame; return the close code, reason and how many text frames came first."""
        self.sock.settimeout(timeout)
        texts = 0
        while True:
            frame = self._frame()
            opcode, payload = frame
            if opcode == 8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode(), texts
            texts += opcode == 1

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed without a close frame")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _frame(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._read(2), "big")
        elif length == 127:
            length = int.from_bytes(self._read(8), "big")
        return first & 0x0F, self._read(length)

    def close(self) -> None:
        self.sock.close()


def test_a_slow_subscriber_is_closed_while_a_fast_one_gets_every_event(frames):
    # Heartbeats every 10 ms make a steady flood; a subscriber that stops
    # reading (small socket buffer, a client queue of one message) falls behind
    # until its server-side queue of 16 events overflows. Pings are off so that
    # only the overflow can end it.
    settings = load_settings(None, events={"queue_size": 16, "heartbeat_ms": 10}, safety={"watchdog_ms": 60000})
    with LiveServer(create_app(settings, engine=HogEngine()), ws_ping_interval=None) as live:
        for stream in ("a", "b"):
            live.client.post("/v1/streams", json={"id": stream, "zones": ZONES})
        fast = Collector(live.ws_url, "?masks=1")
        slow = RawSubscriber(live.port, "/v1/alerts?masks=1")
        bus = live.app.state.events
        try:
            _push_and_wait(live, "a", frames["in"][:3], time.time())
            live.wait_for(lambda: bus.overflowed_count >= 1 or bus.subscriber_count < 2, timeout=90,
                          what="the slow subscriber to overflow")
            code, reason, received = slow.read_until_close(timeout=30)
            assert code == 1013 and "too slow" in reason, (code, reason)
            assert received > 16
            time.sleep(0.3)
        finally:
            fast.close()
            slow.close()
        assert fast.close_code in (None, 1000, 1001)
        for stream in ("a", "b"):
            seqs = [e["seq"] for e in fast.of(stream)]
            assert len(seqs) > 100 and seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"stream {stream}: gaps"


def test_a_reconnecting_subscriber_gets_exactly_what_it_missed(frames):
    settings = load_settings(None, events={"heartbeat_ms": 60000}, safety={"watchdog_ms": 60000})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        live.client.post("/v1/streams", json={"id": "cam", "zones": ZONES})
        first = Collector(live.ws_url, "?streams=cam")
        _push_and_wait(live, "cam", frames["out"][:3], time.time())
        live.wait_for(lambda: len(first.of("cam", "persons")) == 3, what="first events")
        first.close()
        seen = first.of("cam")[-1]["seq"]
        _push_and_wait(live, "cam", frames["in"][:4], time.time())
        everything = live.client.get("/v1/streams/cam/events", params={"since": 0, "limit": 1000}).json()["events"]
        assert all(e["schema"] == "cellwatch.event/1" and e["safety_rated"] is False for e in everything)
        missed = [e for e in everything if e["seq"] > seen]
        assert missed
        again = Collector(live.ws_url, f"?streams=cam&since={seen}")
        try:
            live.wait_for(lambda: len(again.of("cam")) >= len(missed), what="the replay")
            time.sleep(0.2)
        finally:
            again.close()
        assert [e["seq"] for e in again.of("cam")] == [e["seq"] for e in missed]
        assert [e["type"] for e in again.of("cam")] == [e["type"] for e in missed]


def test_zone_and_homography_validation_over_the_api(frames):
    with LiveServer(create_app(load_settings(None), engine=HogEngine())) as live:
        live.client.post("/v1/streams", json={"id": "cam"})
        before = live.client.get("/v1/streams/cam/zones").json()
        bad = [
            ({"units": "pixels", "hazard": [[0, 0], [10, 10], [0, 10], [10, 0]]}, "self-intersect"),
            ({"units": "pixels", "hazard": [[0, 0], [10, 0], [20, 0]]}, "hazard"),
            ({"units": "metres", "hazard": [[0, 0], [1, 0], [1, 1]],
              "homography": {"image": [[0, 0], [1, 0], [0, 1]], "floor": [[0, 0], [1, 0], [0, 1]]}}, "homography"),
            ({"units": "metres", "hazard": [[0, 0], [1, 0], [1, 1]],
              "homography": {"image": [[0, 0], [10, 0], [20, 0], [30, 0]],
                             "floor": [[0, 0], [1, 0], [2, 0], [3, 0]]}}, "homography"),
            ({"units": "pixels"}, "hazard"),
        ]
        for spec, word in bad:
            response = live.client.put("/v1/streams/cam/zones", json=spec)
            assert response.status_code == 422, (spec, response.text)
            assert word in response.json()["detail"], (word, response.json()["detail"])
        assert live.client.get("/v1/streams/cam/zones").json() == before
        good = live.client.put("/v1/streams/cam/zones", json=ZONES)
        assert good.status_code == 200 and len(good.json()["config_crc"]) == 8
        assert live.client.post("/v1/streams", json={"id": "x", "zones": bad[0][0]}).status_code == 422
        assert live.client.get("/v1/streams/x").status_code == 404


def test_safety_figures_use_the_measured_latency(frames):
    settings = load_settings(None, separation={"protective_distance_mm": 500})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        live.client.post("/v1/streams", json={"id": "cam"})
        before = live.client.get("/v1/streams/cam/safety").json()
        assert any("no latency measured" in w for w in before["warnings"])
        _push_and_wait(live, "cam", frames["out"][:3], time.time())
        body = live.client.get("/v1/streams/cam/safety").json()
        p99 = body["measured_p99_ms"]
        assert p99 > 0 and body["reaction_time_s"] == pytest.approx(0.1 + p99 / 1000)
        t_r = body["reaction_time_s"]
        expected = 1600 * (t_r + 0.3) + 1000 * t_r + 200 + 0 + 100 + 20
        assert body["protective_separation_mm"] == pytest.approx(expected)
        assert body["check"]["ok"] is False and any("shorter than the required" in w for w in body["warnings"])
        assert body["safety_rated"] is False
