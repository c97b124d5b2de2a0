"""Pulled sources on a real server: a lost source is a fault at once, files only
from ``sources.file_dirs``, every source option within finite bounds.

A cellwatch server (``LiveServer``, ``HogEngine``) pulls MJPEG from
``MjpegServer`` on 127.0.0.1; the test stops and restarts that camera and
reads the stream's events and status over REST. The watchdog and the deadline
are set to their maximum (a minute), so a FAULT within seconds of losing the
camera can only come from the source's own report.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import cv2
import pytest

from service.app import create_app
from service.config import ConfigError, load_settings
from service.sources import MAX_FPS, MAX_READ_TIMEOUT_S, MAX_RECONNECT_S, parse_source

from .hog_engine import HogEngine
from .live import LiveServer
from .test_sources import VTEST, MjpegServer, free_port

pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")

# clear_frames stays at its default 3: up to two frames read before the loss (one in the engine, one
# waiting) are still processed after the fault, and must not clear it.
SLOW_WATCHDOG = {"watchdog_ms": 60_000, "deadline_ms": 60_000, "clear_frames": 3, "clear_ms": 0}
FAST_RETRY = {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.2, "read_timeout_s": 2}
REPORTED_WITHIN_S = 5.0


@pytest.fixture(scope="module")
def parts() -> list[tuple[bytes, bool, dict]]:
    """MjpegServer parts: eight JPEG-encoded vtest.avi frames, half size."""
    capture = cv2.VideoCapture(str(VTEST))
    frames = []
    for _ in range(8):
        ok, frame = capture.read()
        assert ok
        frames.append((cv2.imencode(".jpg", cv2.resize(frame, (384, 288)))[1].tobytes(), True, {}))
    capture.release()
    return frames


def write_clip(path: Path, frames: int = 5) -> Path:
    capture = cv2.VideoCapture(str(VTEST))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (192, 144))
    assert writer.isOpened()
    for _ in range(frames):
        ok, frame = capture.read()
        assert ok
        writer.write(cv2.resize(frame, (192, 144)))
    writer.release()
    capture.release()
    return path


class Events:
    """A stream's events, paged from GET /v1/streams/{id}/events."""

    def __init__(self, live: LiveServer, stream: str) -> None:
        self.live, self.stream, self.seq, self.seen = live, stream, 0, []

    def faults(self) -> list[dict]:
        while True:
            page = self.live.client.get(f"/v1/streams/{self.stream}/events",
                                        params={"since": self.seq, "limit": 10_000}).json()
            if not page["events"]:
                return [e for e in self.seen if e["type"] == "fault"]
            self.seen += page["events"]
            self.seq = page["events"][-1]["seq"]


def status(live: LiveServer, stream: str) -> dict:
    return live.client.get(f"/v1/streams/{stream}").json()


def wait_state(live: LiveServer, stream: str, state: str, timeout: float = 30.0) -> dict:
    return live.wait_for(lambda: (lambda s: s["safety"]["state"] == state and s)(status(live, stream)), timeout,
                         what=f"stream {stream} in {state}")


# ---------------------------------------------------------- lost sources
def test_a_camera_lost_mid_stream_is_a_fault_event_at_once_and_clears_on_reconnect(parts):
    camera = MjpegServer(parts, interval=0.05)
    settings = load_settings(None, safety=SLOW_WATCHDOG)
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        try:
            body = {"id": "door", "source": camera.url, "options": FAST_RETRY}
            created = live.client.post("/v1/streams", json=body)
            assert created.status_code == 201, created.text
            events = Events(live, "door")
            wait_state(live, "door", "CLEAR")
            assert events.faults() == []

            camera.stop()
            lost = time.monotonic()
            fault = live.wait_for(events.faults, REPORTED_WITHIN_S, what="a fault event for the lost camera")[0]
            assert time.monotonic() - lost < REPORTED_WITHIN_S
            assert fault["state"] == "FAULT" and fault["safety_rated"] is False
            assert fault["reason"].startswith("source disconnected: "), fault["reason"]
            now = status(live, "door")
            assert now["safety"]["state"] == "FAULT" and now["safety"]["reason"] == fault["reason"]
            assert now["frames"]["errors"] == 0, "a lost source is no engine error"

            # The port is closed now: the refused retries are one more fault, reported once however often retried.
            def refused() -> list[str]:
                return [f["reason"] for f in events.faults() if "ConnectionRefusedError" in f["reason"]]

            live.wait_for(refused, REPORTED_WITHIN_S, what="the refused reconnect's fault")
            assert refused()[0].startswith("source error: ConnectionRefusedError"), refused()
            puller = live.app.state.cellwatch.manager.sources["door"]
            retries = puller.stats()["reconnects"]
            live.wait_for(lambda: puller.stats()["reconnects"] >= retries + 3, 5, what="three more refused retries")
            assert len(refused()) == 1
            assert status(live, "door")["last_error"] == refused()[0]
            faults_while_down = len(events.faults())

            camera = MjpegServer(parts, port=camera.port, interval=0.05)
            processed = status(live, "door")["frames"]["processed"]
            live.wait_for(lambda: status(live, "door")["frames"]["processed"] >= processed + 3, 30,
                          what="frames after the camera came back")
            back = wait_state(live, "door", "CLEAR")
            assert back["source_state"] == "connected" and back["last_error"] is None
            assert back["frames"]["errors"] == 0 and len(events.faults()) == faults_while_down
        finally:
            camera.stop()


def test_a_camera_refusing_from_the_start_is_a_fault_event(parts):
    port = free_port()
    settings = load_settings(None, safety=SLOW_WATCHDOG)
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        url = f"http://127.0.0.1:{port}/video.mjpg"
        created = live.client.post("/v1/streams", json={"id": "gate", "source": url, "options": FAST_RETRY})
        assert created.status_code == 201, created.text
        events = Events(live, "gate")
        fault = live.wait_for(events.faults, REPORTED_WITHIN_S, what="a fault event for the refused camera")[0]
        assert fault["state"] == "FAULT" and fault["reason"].startswith("source error: ConnectionRefusedError")
        now = status(live, "gate")
        assert now["safety"]["state"] == "FAULT" and now["last_error"] == fault["reason"]
        assert now["frames"]["errors"] == 0

        camera = MjpegServer(parts, port=port, interval=0.05)
        try:
            live.wait_for(lambda: status(live, "gate")["frames"]["processed"] >= 3, 30, what="frames once it answers")
            assert status(live, "gate")["last_error"] is None
            assert len(events.faults()) == 1
        finally:
            camera.stop()


def test_a_file_played_to_its_end_is_a_fault_event(tmp_path):
    clip = write_clip(tmp_path / "clip.avi")
    settings = load_settings(None, safety=SLOW_WATCHDOG, sources={"file_dirs": [str(tmp_path)]})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        created = live.client.post("/v1/streams", json={"id": "replay", "source": str(clip), "options": {"fps": 10}})
        assert created.status_code == 201, created.text
        events = Events(live, "replay")
        fault = live.wait_for(events.faults, 10, what="a fault event at the end of the file")[0]
        assert fault["reason"] == f"source ended: {clip.resolve()}: end of file after 5 frames"
        now = status(live, "replay")
        assert now["source_state"] == "ended" and now["safety"]["state"] == "FAULT"
        assert now["frames"]["received"] == 5 and now["frames"]["errors"] == 0


# ---------------------------------------------------------- file directories
@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """An allowed directory with a clip, and every way out of it."""
    root = tmp_path_factory.mktemp("sources")
    allowed = root / "videos"
    allowed.mkdir()
    sibling = root / "videos-private"  # shares the allowed directory's name as a prefix
    sibling.mkdir()
    clip = write_clip(allowed / "clip.avi")
    outside = write_clip(sibling / "secret.avi")
    link = allowed / "link.avi"
    link.symlink_to(outside)
    (allowed / "loop-a").symlink_to(allowed / "loop-b")
    (allowed / "loop-b").symlink_to(allowed / "loop-a")
    return {"allowed": allowed, "clip": clip, "outside": outside, "link": link,
            "dotdot": allowed / ".." / "videos-private" / "secret.avi", "loop": allowed / "loop-a" / "clip.avi"}


def refused_paths(videos: dict[str, Path]) -> list[str]:
    return ["/etc/passwd", "file:///etc/passwd", "file://localhost/etc/passwd", str(videos["outside"]),
            str(videos["link"]), str(videos["dotdot"]), "/no/such/clip.avi"]


def test_parse_source_plays_files_only_from_inside_file_dirs(videos):
    dirs = [str(videos["allowed"])]
    spec = parse_source(str(videos["clip"]), file_dirs=dirs)
    assert spec.kind == "file" and spec.path == str(videos["clip"].resolve())
    # the spec names the real file: the worker opens what was checked
    assert parse_source(f"file://{videos['allowed']}/sub/../clip.avi", file_dirs=dirs).path == spec.path
    for url in refused_paths(videos):
        with pytest.raises(ValueError, match=r"outside sources\.file_dirs .*add its directory to sources\.file_dirs"):
            parse_source(url, file_dirs=dirs)
    resolved = f"'{videos['link']}' (resolved: '{videos['outside'].resolve()}')"
    with pytest.raises(ValueError, match=re.escape(resolved)):
        parse_source(str(videos["link"]), file_dirs=dirs)
    with pytest.raises(ValueError, match=r"outside sources\.file_dirs \(none configured\)"):
        parse_source(str(videos["clip"]))
    with pytest.raises(ValueError, match="does not exist"):
        parse_source(str(videos["allowed"] / "missing.avi"), file_dirs=dirs)
    with pytest.raises(ValueError, match=re.escape(f"path '{videos['loop']}' cannot be resolved")):
        parse_source(str(videos["loop"]), file_dirs=dirs)


@pytest.fixture(scope="module")
def live(videos):
    settings = load_settings(None, sources={"file_dirs": [str(videos["allowed"])]})
    with LiveServer(create_app(settings, engine=HogEngine())) as server:
        yield server


def test_rest_refuses_files_outside_file_dirs_and_any_option_widening_them(live, videos):
    before = live.client.get("/v1/streams").json()["streams"]
    for url in refused_paths(videos):
        response = live.client.post("/v1/streams", json={"id": "x", "source": url})
        assert response.status_code == 422, (url, response.text)
        detail = response.json()["detail"]
        assert "outside sources.file_dirs" in detail and "add its directory to sources.file_dirs" in detail, detail
        assert url.removeprefix("file://").removeprefix("localhost") in detail
    widen = live.client.post("/v1/streams",
                             json={"id": "x", "source": "/etc/passwd", "options": {"file_dirs": ["/"]}})
    assert widen.status_code == 422 and "unknown source option(s) ['file_dirs']" in widen.json()["detail"]
    loop = live.client.post("/v1/streams", json={"id": "x", "source": str(videos["loop"])})
    assert loop.status_code == 422 and "cannot be resolved" in loop.json()["detail"]
    assert live.client.get("/v1/streams").json()["streams"] == before

    created = live.client.post("/v1/streams",
                               json={"id": "clip", "source": str(videos["clip"]), "options": {"loop": True}})
    assert created.status_code == 201, created.text
    assert live.client.delete("/v1/streams/clip").status_code in (200, 204)


def test_config_streams_are_checked_against_file_dirs_at_start_up(tmp_path, videos):
    config = tmp_path / "cell.yaml"
    config.write_text(f"streams:\n  - {{id: cam, source: {videos['clip']}}}\n")
    with LiveServer(create_app(load_settings(config), engine=HogEngine()), wait_ready=False) as server:
        failed = server.wait_for(lambda: (lambda r: r.status_code == 503 and r.json()["status"] == "failed" and r)(
            server.client.get("/readyz")), 30, what="start-up to fail")
        error = failed.json()["error"]
        assert str(videos["clip"]) in error and "add its directory to sources.file_dirs" in error, error

    config.write_text(f"sources:\n  file_dirs: [{videos['allowed']}]\n"
                      f"streams:\n  - {{id: cam, source: {videos['clip']}}}\n")
    with LiveServer(create_app(load_settings(config), engine=HogEngine())) as server:
        assert server.client.get("/v1/streams/cam").status_code == 200


def test_source_settings_are_strict_and_read_from_the_environment(tmp_path, monkeypatch):
    config = tmp_path / "cell.yaml"
    for text, message in [("sources: {file_dir: [/srv]}\n", "sources.file_dir: Extra inputs are not permitted"),
                          ("sources: {file_dirs: [videos]}\n", "file_dirs entry 'videos' must be an absolute path"),
                          ("sources: {file_dirs: /srv}\n", "sources.file_dirs")]:
        config.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_settings(config)
    assert load_settings(None).sources.file_dirs == []
    monkeypatch.setenv("CELLWATCH_SOURCES__FILE_DIRS", json.dumps(["/srv/videos", "/mnt/clips"]))
    assert load_settings(None).sources.file_dirs == ["/srv/videos", "/mnt/clips"]


# ---------------------------------------------------------- option bounds
ABSURD = [math.inf, -math.inf, math.nan, 1e308, 10**400, -1.0]
BOUNDS = {  # option: values refused besides ABSURD, and the interval the message states
    "read_timeout_s": ([0, MAX_READ_TIMEOUT_S + 1], "(0, 300]"),
    "reconnect_initial_s": ([0, 0.001, 61], "[0.01, 60]"),
    "reconnect_max_s": ([0, MAX_RECONNECT_S + 1], "[0.01, 3600]"),
    "fps": ([MAX_FPS + 1], "[0, 1000]"),
}
CASES = [(option, value) for option, (extra, _) in BOUNDS.items() for value in ABSURD + extra]


def _source(option: str, videos: dict[str, Path]) -> str:
    return str(videos["clip"]) if option == "fps" else "rtsp://192.0.2.10:554/stream1"


@pytest.mark.parametrize("option, value", CASES, ids=[f"{o}={v!r}"[:40] for o, v in CASES])
def test_absurd_source_options_are_refused_naming_the_option(videos, option, value):
    with pytest.raises(ValueError, match=rf"^{option} must be a finite number"):
        parse_source(_source(option, videos), {option: value}, file_dirs=[videos["allowed"]])


def test_rest_refuses_absurd_source_options_with_422(live, videos):
    for option, value in CASES:
        # json.dumps writes inf and nan as Infinity and NaN, which the server's JSON parser reads
        body = json.dumps({"id": "bounded", "source": _source(option, videos), "options": {option: value}})
        response = live.client.post("/v1/streams", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (option, value, response.text)
        detail = response.json()["detail"]
        assert f"{option} must be a finite number" in detail, detail
        if not isinstance(value, int) or abs(value) < 2**1024:
            assert BOUNDS[option][1] in detail, detail
    # the bounds themselves are accepted
    edges = {"read_timeout_s": MAX_READ_TIMEOUT_S, "reconnect_initial_s": 0.01, "reconnect_max_s": MAX_RECONNECT_S}
    url = f"http://127.0.0.1:{free_port()}/video.mjpg"  # refused at once: the stream is removed promptly
    response = live.client.post("/v1/streams", json={"id": "edges", "source": url, "options": edges})
    assert response.status_code == 201, response.text
    assert live.client.delete("/v1/streams/edges").status_code in (200, 204)
