"""Probes of a running service that once found fail-safe holes, kept as tests.

Each runs against a real uvicorn server on 127.0.0.1 with real clients: a
camera clock ahead or unset, oversized zones, unknown fields, unauthenticated
large bodies, deleted streams' events, odd queries and stream ids.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.app import create_app
from service.config import load_settings
from service.events import MAX_SEQ
from service.framing import encode_frame

from .hog_engine import HogEngine
from .live import LiveServer
from .test_alerts_live import ZONES, Collector
from .test_app import _frames, _jpeg, _processed

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")

ADMIN, VIEWER = "admin-token-0123456789", "viewer-token-0123456789"
TOKENS = {"tokens": [{"name": "ops", "role": "admin", "token": ADMIN},
                     {"name": "dash", "role": "viewer", "token": VIEWER}]}


class SlowHog(HogEngine):
    """Real detections, a known minimum latency: the deadline's arithmetic is then certain."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def infer(self, batch):
        time.sleep(self.delay_s)
        return super().infer(batch)


@pytest.fixture(scope="module")
def jpegs():
    return [_jpeg(f) for f in _frames(8, start=75)]  # nobody near the zone in these


def _push(live, stream: str, frames: list[bytes], capture_ts) -> None:
    """Push each frame once the previous one was processed; ``capture_ts()`` labels it."""
    with connect(f"{live.ws_url}/v1/streams/{stream}/ingest") as ws:
        for i, data in enumerate(frames):
            before = _processed(live, stream)
            ws.send(encode_frame(capture_ts(), data))
            live.wait_for(lambda: _processed(live, stream) > before, what=f"frame {i} processed")


def _safety(live, stream: str) -> dict:
    return live.client.get(f"/v1/streams/{stream}").json()["safety"]


# ------------------------------------------------------------ camera clocks
def test_a_late_stream_is_fault_whatever_its_camera_clock_says(jpegs):
    # every frame takes >= 350 ms (once the delay is on); the deadline is 300 ms
    settings = load_settings(None, safety={"deadline_ms": 300, "watchdog_ms": 60000, "clear_frames": 1,
                                           "clear_ms": 0})
    with LiveServer(create_app(settings, engine=SlowHog(0.35))) as live:
        clocks = {"true": time.time, "ahead": lambda: time.time() + 60.0, "zero": lambda: 0.0,
                  "slightly-ahead": lambda: time.time() + 0.4}
        engine = live.app.state.cellwatch.engine
        for name in clocks:
            assert live.client.post("/v1/streams", json={"id": name}).status_code == 201
        engine.delay_s = 0.0  # first on time, with true clocks: every stream CLEAR
        for name in clocks:
            _push(live, name, jpegs[:2], time.time)
            assert _safety(live, name)["state"] == "CLEAR"
        engine.delay_s = 0.35
        for name, clock in clocks.items():
            _push(live, name, jpegs[2:5], clock)
        reasons = {name: _safety(live, name) for name in clocks}
        for name, safety in reasons.items():
            assert safety["state"] == "FAULT", (name, safety)
        assert "falling behind" in reasons["true"]["reason"]
        assert "clock ahead" in reasons["ahead"]["reason"]
        assert "not a clock reading" in reasons["zero"]["reason"]
        # 0.4 s ahead is within clock_ahead_ms; the time since arrival still shows the frame late
        assert "falling behind" in reasons["slightly-ahead"]["reason"]


# ------------------------------------------------------------------ zones
def _square_ring(vertices: int, size: float = 500.0) -> list[list[float]]:
    """A valid convex polygon with many vertices (points on a circle)."""
    import math

    return [[size + size * 0.9 * math.cos(2 * math.pi * k / vertices),
             size + size * 0.9 * math.sin(2 * math.pi * k / vertices)] for k in range(vertices)]


def test_a_huge_zone_is_refused_at_once_and_other_streams_keep_their_heartbeats():
    settings = load_settings(None, events={"heartbeat_ms": 50}, safety={"watchdog_ms": 60000})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        for stream in ("a", "b"):
            assert live.client.post("/v1/streams", json={"id": stream}).status_code == 201
        beats = Collector(live.ws_url, "?streams=b")
        try:
            time.sleep(0.5)
            for vertices in (10_000, 20_000):
                started = time.monotonic()
                response = live.client.put("/v1/streams/a/zones",
                                           json={"units": "pixels", "hazard": _square_ring(vertices)})
                took = time.monotonic() - started
                assert response.status_code == 422, response.text
                assert "at most 256" in response.json()["detail"] and took < 1.0, (took, response.text)
            # a polygon at the limit is checked off the event loop and accepted
            ok = live.client.put("/v1/streams/a/zones", json={"units": "pixels", "hazard": _square_ring(256)})
            assert ok.status_code == 200, ok.text
            time.sleep(0.3)
        finally:
            beats.close()
        times = [e["emit_ts"] for e in beats.of("b", "heartbeat")]
        gaps = [b - a for a, b in zip(times, times[1:])]
        # 50 ms beats measure 50-100 ms gaps here; the O(n^2) check on the event loop froze the server
        # for seconds (5.6 s at 4,000 vertices). 1 s leaves room for a busy 2-core CI machine.
        assert len(times) > 10 and max(gaps) < 1.0, f"heartbeats of b stalled: max gap {max(gaps):.3f} s"


def test_the_zone_vertex_limit_is_configurable():
    settings = load_settings(None, limits={"max_zone_vertices": 8})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        body = {"id": "a", "zones": {"units": "pixels", "hazard": _square_ring(9)}}
        response = live.client.post("/v1/streams", json=body)
        assert response.status_code == 422 and "at most 8" in response.json()["detail"]
        assert live.client.get("/v1/streams/a").status_code == 404


# ------------------------------------------------------- unknown fields, ids
def test_unknown_fields_are_refused_by_name_and_nothing_is_created():
    with LiveServer(create_app(load_settings(None), engine=HogEngine())) as live:
        response = live.client.post("/v1/streams", json={"id": "typo1", "source": "push", "zone": ZONES})
        assert response.status_code == 422
        body = response.json()
        assert "zone" in body["detail"] and "not permitted" in body["detail"]
        assert body["errors"][0]["loc"] == ["body", "zone"]
        assert live.client.get("/v1/streams/typo1").status_code == 404


def test_a_stream_id_with_a_trailing_newline_is_refused():
    with LiveServer(create_app(load_settings(None), engine=HogEngine())) as live:
        response = live.client.post("/v1/streams", json={"id": "a\n"})
        assert response.status_code == 422 and response.json()["errors"][0]["loc"] == ["body", "id"]
        assert live.client.get("/v1/streams").json()["streams"] == []
    with pytest.raises(ValueError, match="stream ids"):
        load_settings(None, streams=[{"id": "cam\n"}])


# ------------------------------------------------ bodies before authentication
def _raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes, float]:
    """Send a request head (and the first bytes of a body); return the status,
    the response and the seconds it took, without ever sending the rest."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    status = int(response.split(b" ", 2)[1])
    return status, response, time.monotonic() - started


def test_large_bodies_are_refused_before_they_are_read():
    settings = load_settings(None, auth=TOKENS)
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        huge = 200_000_000
        head = (f"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {huge}\r\n")
        # no token: 401 although only 10 of 200 MB were sent
        status, response, took = _raw_request(live.port, head + "\r\n", b'{"id": "a"')
        assert status == 401 and b"missing bearer token" in response and took < 2.0
        status, _, _ = _raw_request(live.port, head + "Authorization: Bearer wrong-token-0123456789\r\n\r\n", b"{")
        assert status == 401
        # a valid token: the declared size alone is refused
        status, response, took = _raw_request(live.port, head + f"Authorization: Bearer {VIEWER}\r\n\r\n", b"{")
        assert status == 413 and b"limit of 1000000 bytes" in response and took < 2.0
        # a chunked body is cut off at the limit
        chunked = live.client.post("/v1/streams", headers={"Authorization": f"Bearer {ADMIN}"},
                                   content=iter([b'{"id": "a", "options": {"x": "' + b"y" * 600_000,
                                                 b"y" * 600_000 + b'"}}']))
        assert chunked.status_code == 413
        # and a normal request still works
        ok = live.client.post("/v1/streams", headers={"Authorization": f"Bearer {ADMIN}"}, json={"id": "a"})
        assert ok.status_code == 201
        assert live.client.get("/v1/streams", headers={"Authorization": f"Bearer {VIEWER}"}).json()["streams"]


# ------------------------------------------------------------ deleted streams
def test_a_deleted_stream_says_so_and_its_events_do_not_outlive_it(jpegs):
    settings = load_settings(None, events={"heartbeat_ms": 60000}, safety={"watchdog_ms": 60000})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        live.client.post("/v1/streams", json={"id": "gone"})
        live.client.post("/v1/streams", json={"id": "stays"})
        watcher = Collector(live.ws_url, "?streams=gone")
        try:
            _push(live, "gone", jpegs[:2], time.time)
            old_last = live.client.get("/v1/streams/gone/events").json()["last_seq"]
            assert live.client.delete("/v1/streams/gone").status_code == 204
            live.wait_for(lambda: watcher.of("gone", "fault"), what="the deletion's fault event")
        finally:
            watcher.close()
        final = watcher.of("gone")[-1]
        assert final["type"] == "fault" and final["state"] == "FAULT" and final["reason"] == "stream deleted"
        assert final["seq"] == old_last + 1

        # an all-streams replay holds nothing of the deleted stream
        replay = Collector(live.ws_url, "?since=0")
        try:
            live.wait_for(lambda: replay.of("stays"), what="the replay")
            time.sleep(0.3)
        finally:
            replay.close()
        assert replay.of("gone") == []

        # the same id again: numbering continues, the old events are not served
        live.client.post("/v1/streams", json={"id": "gone"})
        page = live.client.get("/v1/streams/gone/events", params={"since": 0}).json()
        assert page["gap"]["missed_from"] == 1 and page["gap"]["missed_to"] == final["seq"]
        assert [e["seq"] for e in page["events"]] == [final["seq"] + 1]
        assert page["events"][0]["reason"] == "no frame yet"


# ----------------------------------------------------------------- odd queries
def test_odd_queries_get_4xx_not_500():
    with LiveServer(create_app(load_settings(None), engine=HogEngine())) as live:
        live.client.post("/v1/streams", json={"id": "young"})
        for since in ("-1", "99999999999999999999999", str(MAX_SEQ + 1), "x"):
            response = live.client.get("/v1/streams/young/events", params={"since": since})
            assert response.status_code == 422, (since, response.text)
            assert "since" in response.json()["detail"]
        for limit in ("0", "10001"):
            assert live.client.get("/v1/streams/young/events", params={"limit": limit}).status_code == 422
        assert live.client.get("/v1/streams/young/events", params={"since": MAX_SEQ}).status_code == 200

        for since in ("-1", "99999999999999999999999"):
            with connect(f"{live.ws_url}/v1/alerts?since={since}") as ws:
                assert "since" in json.loads(ws.recv())["error"]
                with pytest.raises(ConnectionClosed):
                    ws.recv()
                assert ws.close_code == 1008 and "since" in ws.close_reason

        deep = "[" * 5000 + "]" * 5000
        for method, path, body in (("PUT", "/v1/streams/young/zones", '{"hazard": ' + deep + "}"),
                                   ("POST", "/v1/streams", '{"id": "d", "options": {"x": ' + deep + "}}")):
            response = live.client.request(method, path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code in (400, 422), (path, response.status_code, response.text)
            assert response.json()["detail"]
        assert live.client.get("/healthz").status_code == 200


# ------------------------------------------------------------- settings refused
@pytest.mark.parametrize("section,field,value", [
    ("safety", "watchdog_ms", float("inf")), ("safety", "deadline_ms", float("inf")),
    ("safety", "clear_ms", float("inf")), ("events", "heartbeat_ms", float("inf")),
    ("separation", "t_s_s", float("inf")), ("batching", "max_wait_ms", float("inf")),
    ("safety", "watchdog_ms", 1e308), ("separation", "v_h_mm_s", float("nan")),
    ("separation", "z_d_mm", 1e308), ("events", "heartbeat_ms", 0.001),
])
def test_infinite_or_absurd_settings_are_refused_naming_the_field(section, field, value, tmp_path):
    from service.config import ConfigError

    with pytest.raises(ConfigError, match=f"{section}.{field}"):
        load_settings(None, **{section: {field: value}})
    path = tmp_path / "cell.yaml"
    literal = {float("inf"): ".inf", 1e308: "1e308"}.get(value, ".nan" if value != value else repr(value))
    path.write_text(f"{section}:\n  {field}: {literal}\n")
    with pytest.raises(ConfigError, match=f"{section}.{field}"):
        load_settings(path)


def test_an_infinite_watchdog_from_the_environment_is_refused(monkeypatch):
    from service.config import ConfigError

    monkeypatch.setenv("CELLWATCH_SAFETY__WATCHDOG_MS", "inf")
    with pytest.raises(ConfigError, match="safety.watchdog_ms"):
        load_settings(None)


def test_the_served_openapi_lists_the_error_responses():
    app = create_app(load_settings(None), engine=HogEngine())
    paths = app.openapi()["paths"]
    create = paths["/v1/streams"]["post"]["responses"]
    assert {"401", "403", "409", "413", "422"} <= set(create)
    assert create["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"404", "422"} <= set(paths["/v1/streams/{stream_id}/events"]["get"]["responses"])
    assert {"400", "413", "415"} <= set(paths["/v1/infer"]["post"]["responses"])
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "HTTPValidationError" not in json.dumps(app.openapi())

