"""Pull sources, push framing and the camera simulator, on real frames and real loopback servers.

Files are played through cv2/FFmpeg; MJPEG comes from an ``http.server`` the
test runs on 127.0.0.1 serving JPEG-encoded frames of OpenCV's vtest.avi; the
camera simulator pushes into a ``websockets`` server on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import io
import json
import random
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

from service.framing import decode_frame, encode_frame
from service.sources import (
    MultipartReader,
    PullSource,
    SourceError,
    backoff_delay,
    parse_boundary,
    parse_source,
)

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
needs_vtest = pytest.mark.skipif(not VTEST.exists(), reason=f"{VTEST} (package opencv-doc) is not installed")
REPO = Path(__file__).resolve().parents[2]
VIDEOS = [VTEST.parent]  # sources.file_dirs for vtest.avi


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class Recorder:
    """on_frame / on_event callbacks that keep what a test needs to look at."""

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self.frames: list[np.ndarray] = []  # the first `keep` frames
        self.last: np.ndarray | None = None
        self.capture_ts: list[float] = []
        self.events: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def on_frame(self, frame: np.ndarray, capture_ts: float) -> None:
        with self.lock:
            if len(self.frames) < self.keep:
                self.frames.append(frame.copy())
            self.last = frame
            self.capture_ts.append(capture_ts)

    def on_event(self, kind: str, detail: str) -> None:
        with self.lock:
            self.events.append((kind, detail, time.monotonic()))

    @property
    def count(self) -> int:
        return len(self.capture_ts)

    def kinds(self) -> list[str]:
        with self.lock:
            return [kind for kind, _, _ in self.events]

    def times(self, kind: str) -> list[float]:
        with self.lock:
            return [t for k, _, t in self.events if k == kind]


@pytest.fixture(scope="module")
def vtest_frames() -> list[np.ndarray]:
    if not VTEST.exists():
        pytest.skip(f"{VTEST} (package opencv-doc) is not installed")
    capture = cv2.VideoCapture(str(VTEST))
    frames = []
    for _ in range(24):
        ok, frame = capture.read()
        assert ok
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture(scope="module")
def vtest_jpegs(vtest_frames) -> list[bytes]:
    # every 4th frame, so neighbouring parts differ visibly
    return [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for f in vtest_frames[::4]]


def decoded(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------ specs
def test_parse_source_accepts_schemes_and_rejects_clearly(tmp_path):
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"x")
    dirs = [tmp_path]
    assert parse_source(str(clip), file_dirs=dirs).kind == "file"
    spec = parse_source(f"file://{clip}", {"loop": True, "fps": 0}, file_dirs=dirs)
    assert (spec.kind, spec.path, spec.loop, spec.fps) == ("file", str(clip.resolve()), True, 0.0)
    assert parse_source("rtsp://user:pw@10.0.0.2:554/s1", {"reconnect_max_s": 3}).kind == "rtsp"
    assert parse_source("https://cam.local/mjpg").kind == "http"

    for url, options, message in [
        ("ftp://cam/x", {}, "unsupported source scheme 'ftp'"),
        (str(tmp_path / "missing.avi"), {}, "does not exist"),
        (str(tmp_path), {}, "is not a file"),
        ("http:///nohost", {}, "has no host"),
        ("rtsp://cam/s", {"loop": True}, "file sources only"),
        ("rtsp://cam/s", {"bogus": 1}, "unknown source option"),
        ("rtsp://cam/s", {"file_dirs": ["/"]}, "unknown source option"),  # no option widens file_dirs
        ("rtsp://cam/s", {"reconnect_initial_s": 5, "reconnect_max_s": 1}, "reconnect_initial_s <= reconnect_max_s"),
        (str(clip), {"fps": -1}, "fps must be a finite number in [0, 1000]"),
        (str(clip), {"loop": "yes"}, "loop must be true or false"),
        ("", {}, "source URL is required"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_source(url, options, file_dirs=dirs)


# ------------------------------------------------------------------ files
@needs_vtest
def test_file_source_delivers_real_frames_then_ended(vtest_frames):
    expected_count = int(cv2.VideoCapture(str(VTEST)).get(cv2.CAP_PROP_FRAME_COUNT))
    recorder = Recorder(keep=len(vtest_frames))
    spec = parse_source(str(VTEST), {"fps": 0}, file_dirs=VIDEOS)
    source = PullSource("file", spec, recorder.on_frame, recorder.on_event)
    started = time.time()
    source.start()
    try:
        wait_until(lambda: "ended" in recorder.kinds(), 30, "the end of vtest.avi")
    finally:
        assert source.stop(5)
    assert recorder.kinds() == ["connected", "ended"]
    assert recorder.count == expected_count == 795
    for got, want in zip(recorder.frames, vtest_frames, strict=True):
        assert got.shape == (576, 768, 3) and got.dtype == np.uint8
        assert np.array_equal(got, want)
    assert started <= recorder.capture_ts[0] and np.all(np.diff(recorder.capture_ts) >= 0)
    assert source.stats()["frames"] == expected_count


@needs_vtest
def test_file_source_is_paced_at_the_files_frame_rate():
    recorder = Recorder(keep=0)
    source = PullSource("paced", parse_source(str(VTEST), file_dirs=VIDEOS), recorder.on_frame, recorder.on_event)
    source.start()
    try:
        wait_until(lambda: recorder.count >= 6, 5, "6 frames at 10 fps")
    finally:
        began = time.monotonic()
        assert source.stop(2)
        assert time.monotonic() - began < 0.5, "stop() must not wait out the frame period"
    span = recorder.capture_ts[5] - recorder.capture_ts[0]
    assert 0.45 <= span <= 0.75, f"5 frame periods at 10 fps took {span:.3f} s"


@needs_vtest
def test_file_source_loops_past_the_end_and_ends_without_loop(tmp_path, vtest_frames):
    clip = tmp_path / "five.avi"
    small = [cv2.resize(f, (192, 144)) for f in vtest_frames[:5]]
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (192, 144))
    assert writer.isOpened()
    for frame in small:
        writer.write(frame)
    writer.release()

    looped = Recorder(keep=15)
    spec = parse_source(str(clip), {"loop": True, "fps": 0}, file_dirs=[tmp_path])
    source = PullSource("loop", spec, looped.on_frame, looped.on_event)
    source.start()
    try:
        wait_until(lambda: looped.count >= 17, 10, "more than three passes over a 5-frame clip")
    finally:
        assert source.stop(5)
    assert "ended" not in looped.kinds() and "error" not in looped.kinds()
    assert looped.kinds().count("connected") >= 4  # every rewind resets the pipeline
    for i in range(5, 15):  # the second and third passes repeat the first
        assert np.array_equal(looped.frames[i], looped.frames[i % 5])
    assert looped.frames[0].shape == (144, 192, 3)

    once = Recorder()
    spec = parse_source(str(clip), {"fps": 0}, file_dirs=[tmp_path])
    source = PullSource("once", spec, once.on_frame, once.on_event)
    source.start()
    try:
        wait_until(lambda: "ended" in once.kinds(), 10, "the end of the clip")
    finally:
        assert source.stop(5)
    assert once.count == 5 and once.kinds() == ["connected", "ended"]
    assert source.stats()["state"] == "ended"


# ------------------------------------------------------------------ MJPEG
class MjpegServer:
    """multipart/x-mixed-replace over http.server on 127.0.0.1.

    ``parts`` are ``(body, send_length, extra_headers)``; with ``repeat`` they
    cycle until the server stops, else the stream closes after one pass.
    """

    def __init__(self, parts, port: int = 0, interval: float = 0.02, repeat: bool = True,
                 declared_boundary: str = "frame") -> None:
        stopping = self.stopping = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f'multipart/x-mixed-replace; boundary="{declared_boundary}"')
                self.end_headers()
                try:
                    while not stopping.is_set():
                        for body, send_length, extra in parts:
                            head = "--frame\r\nContent-Type: image/jpeg\r\n"
                            if send_length:
                                head += f"Content-Length: {len(body)}\r\n"
                            head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                            self.wfile.write(head.encode() + b"\r\n" + body + b"\r\n")
                            self.wfile.flush()
                            if stopping.wait(interval):
                                return
                        if not repeat:
                            self.wfile.write(b"--frame--\r\n")
                            return
                except (BrokenPipeError, ConnectionResetError):
                    return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/video.mjpg"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@needs_vtest
def test_mjpeg_source_reconnects_and_other_streams_keep_flowing(vtest_jpegs):
    parts = [(jpeg, True, {}) for jpeg in vtest_jpegs]
    references = [decoded(jpeg) for jpeg in vtest_jpegs]
    server_a, server_b = MjpegServer(parts), MjpegServer(parts)
    a, b = Recorder(keep=4), Recorder(keep=4)
    options = {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.4, "read_timeout_s": 2}
    source_a = PullSource("a", parse_source(server_a.url, options), a.on_frame, a.on_event)
    source_b = PullSource("b", parse_source(server_b.url, options), b.on_frame, b.on_event)
    source_a.start()
    source_b.start()
    try:
        wait_until(lambda: a.count >= 5 and b.count >= 5, 10, "frames from both MJPEG servers")
        for frame in a.frames + b.frames:
            assert frame.shape == (576, 768, 3)
            assert any(np.array_equal(frame, ref) for ref in references), "not one of the served JPEGs"
        assert a.kinds() == ["connected"]

        server_a.stop()
        wait_until(lambda: "reconnecting" in a.kinds(), 5, "stream a to notice its server is gone")
        kinds = a.kinds()
        assert kinds.index("disconnected") < kinds.index("reconnecting")
        b_during_outage = b.count
        wait_until(lambda: "error" in a.kinds(), 5, "a refused reconnect attempt")  # the port is closed now
        frames_a_down = a.count
        wait_until(lambda: b.count >= b_during_outage + 5, 5, "stream b to keep flowing while a is down")
        assert source_a.stats()["state"] in ("reconnecting", "disconnected")

        server_a = MjpegServer(parts, port=server_a.port)
        wait_until(lambda: a.kinds().count("connected") == 2, 10, "stream a to reconnect")
        wait_until(lambda: a.count >= frames_a_down + 5, 10, "frames on the reconnected stream a")
        assert any(np.array_equal(a.last, ref) for ref in references)
        stats = source_a.stats()
        assert stats["state"] == "connected" and stats["reconnects"] >= 2 and stats["last_error"]
        assert b.kinds() == ["connected"] and source_b.stats()["reconnects"] == 0
    finally:
        assert source_a.stop(3) and source_b.stop(3)
        server_a.stop()
        server_b.stop()


@needs_vtest
def test_mjpeg_corrupt_parts_are_skipped_and_counted(vtest_jpegs):
    noise = np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8).tobytes()
    stamp = time.time() - 1.25
    good = vtest_jpegs[:3]
    parts = [
        (good[0], True, {}),
        (b"\xff\xd8\xff\xe0" + noise, True, {}),  # a JPEG header, then garbage
        (good[1], False, {}),  # no Content-Length: found by scanning for the boundary
        (noise[:3000], False, {}),
        (b"", True, {}),
        (good[2], True, {"X-Timestamp": f"{stamp:.6f}"}),
    ]
    server = MjpegServer(parts, repeat=False, interval=0.005)
    recorder = Recorder()
    spec = parse_source(server.url, {"reconnect_initial_s": 5, "reconnect_max_s": 5})
    source = PullSource("corrupt", spec, recorder.on_frame, recorder.on_event)
    started = time.time()
    source.start()
    try:
        wait_until(lambda: "disconnected" in recorder.kinds(), 10, "the end of the one-pass stream")
    finally:
        assert source.stop(3)
        server.stop()
    assert recorder.count == 3
    for got, jpeg in zip(recorder.frames, good, strict=True):
        assert np.array_equal(got, decoded(jpeg))
    assert source.stats()["bad_parts"] == 3
    assert recorder.capture_ts[2] == pytest.approx(stamp, abs=1e-6)  # the part's own timestamp header
    assert all(started <= ts <= time.time() for ts in recorder.capture_ts[:2])
    assert recorder.kinds()[:3] == ["connected", "disconnected", "reconnecting"]


def test_multipart_reader_splits_parts_exactly():
    assert parse_boundary('multipart/x-mixed-replace; boundary="--myboundary"') == b"myboundary"
    assert parse_boundary("Multipart/X-Mixed-Replace;boundary=frame") == b"frame"
    with pytest.raises(SourceError, match="multipart/x-mixed-replace"):
        parse_boundary("image/jpeg")
    with pytest.raises(SourceError, match="no boundary"):
        parse_boundary("multipart/x-mixed-replace; charset=x")

    first = b"\xff\xd8 body\r\n--frameX\r\n not a delimiter \xff\xd9"
    second = b"line one\r\nline two\n\r\n--fram\r\n\xff\xd9"
    body = (
        b"preamble to skip\r\n"
        b"--myboundary\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(first)).encode() + b"\r\n\r\n"
        + first + b"\r\n"
        b"--myboundary\r\nX-Timestamp: 12.5\r\n\r\n" + second + b"\r\n"
        b"--myboundary--\r\n"
        b"--myboundary\r\n\r\nafter the close\r\n"
    )
    parts = list(MultipartReader(io.BytesIO(body), b"myboundary").parts())
    assert parts == [({"content-type": "image/jpeg", "content-length": str(len(first))}, first),
                     ({"x-timestamp": "12.5"}, second)]
    # a part cut off by the end of the connection is not delivered
    cut = b"--b\r\nContent-Length: 100\r\n\r\n" + b"x" * 50
    assert list(MultipartReader(io.BytesIO(cut), b"b").parts()) == []


# -------------------------------------------------------- reconnect policy
def test_backoff_grows_with_jitter_and_is_capped():
    delays = [backoff_delay(n, 0.5, 10.0, random.Random(7)) for n in range(12)]
    ceilings = [min(10.0, 0.5 * 2**n) for n in range(12)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 10.0 and min(delays[6:]) >= 5.0  # capped band from 0.5 * 2**5 on
    assert delays[0] <= 0.5 < delays[2]

    rng_a, rng_b = random.Random(42), random.Random(42)
    schedule_a = [backoff_delay(n, 0.2, 3.0, rng_a) for n in range(10)]
    assert schedule_a == [backoff_delay(n, 0.2, 3.0, rng_b) for n in range(10)]
    assert len(set(schedule_a)) == 10, "jitter: no two waits alike"

    class Edge:
        def __init__(self, value: float) -> None:
            self.value = value

        def random(self) -> float:
            return self.value

    assert backoff_delay(3, 0.5, 10.0, Edge(0.0)) == 2.0
    assert backoff_delay(3, 0.5, 10.0, Edge(0.999999)) == pytest.approx(4.0, rel=1e-5)
    assert backoff_delay(10**6, 0.5, 10.0, Edge(0.999999)) <= 10.0


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_unreachable_source_retries_on_schedule_and_stops_promptly(scheme):
    url = f"{scheme}://127.0.0.1:{free_port()}/stream"
    recorder = Recorder()
    spec = parse_source(url, {"reconnect_initial_s": 0.05, "reconnect_max_s": 0.4, "read_timeout_s": 2})
    source = PullSource("gone", spec, recorder.on_frame, recorder.on_event, rng=random.Random(5))
    source.start()
    try:
        wait_until(lambda: len(recorder.times("error")) >= 6, 10, "six failed connection attempts")
    finally:
        began = time.monotonic()
        assert source.stop(2)
        assert time.monotonic() - began < 0.5
    assert recorder.count == 0 and "connected" not in recorder.kinds()
    assert recorder.kinds()[:4] == ["error", "reconnecting", "error", "reconnecting"]
    expected = random.Random(5)
    planned = [backoff_delay(n, 0.05, 0.4, expected) for n in range(5)]
    errors = recorder.times("error")
    for n, plan in enumerate(planned):
        gap = errors[n + 1] - errors[n]
        assert plan - 0.005 <= gap <= plan + 0.25, f"retry {n}: waited {gap:.3f} s, planned {plan:.3f} s"
    stats = source.stats()
    assert stats["reconnects"] >= 6 and stats["state"] == "stopped" and stats["frames"] == 0
    assert stats["last_error"]


def test_stop_returns_while_blocked_on_a_read():
    """A server that accepts the connection and never answers: stop() must not wait out the read timeout."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        recorder = Recorder()
        spec = parse_source(f"http://127.0.0.1:{listener.getsockname()[1]}/mjpg", {"read_timeout_s": 30})
        source = PullSource("silent", spec, recorder.on_frame, recorder.on_event)
        source.start()
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(5)
            assert connection.recv(4096).startswith(b"GET /mjpg HTTP/1.1")  # it now waits for the response
            time.sleep(0.1)
            began = time.monotonic()
            assert source.stop(3)
            assert time.monotonic() - began < 1.0
    assert recorder.kinds() == [] and source.stats()["state"] == "stopped"


# ---------------------------------------------------------------- framing
def test_framing_round_trip_and_short_messages():
    payload = b"\xff\xd8\xff\xe0 jpeg bytes \xff\xd9"
    capture_ts = 1_767_225_600.123456
    message = encode_frame(capture_ts, payload)
    assert message[:8] == struct.pack(">d", capture_ts) and message[8:] == payload
    assert encode_frame(1.0, b"x") == b"\x3f\xf0\x00\x00\x00\x00\x00\x00x"  # big-endian float64 1.0
    assert decode_frame(message) == (capture_ts, payload)
    assert decode_frame(bytearray(message)) == (capture_ts, payload)
    assert decode_frame(memoryview(message)) == (capture_ts, payload)
    for short in (b"", b"\x00" * 8):
        with pytest.raises(ValueError, match=f"frame message of {len(short)} bytes is too short"):
            decode_frame(short)
    with pytest.raises(ValueError, match="not finite"):
        decode_frame(struct.pack(">d", float("nan")) + b"x")
    with pytest.raises(ValueError, match="empty"):
        encode_frame(1.0, b"")
    with pytest.raises(ValueError, match="finite"):
        encode_frame(float("inf"), b"x")


# ------------------------------------------------------------- camera_sim
def load_camera_sim():
    spec = importlib.util.spec_from_file_location("camera_sim", REPO / "deploy" / "camera_sim.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["camera_sim"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class IngestServer:
    """A websockets server on 127.0.0.1 recording pushed frames per connection."""

    def __init__(self, handle) -> None:

        self.connections: list[dict] = []
        self.lock = threading.Lock()

        def handler(websocket) -> None:
            record = {"path": websocket.request.path, "headers": websocket.request.headers, "frames": []}
            with self.lock:
                self.connections.append(record)
            handle(websocket, record)

        self.server = serve(handler, "127.0.0.1", 0, compression=None)
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/v1/streams/cam-1/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def frames(self) -> list[tuple[float, bytes]]:
        with self.lock:
            return [frame for record in self.connections for frame in record["frames"]]

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


def run_main(module, argv: list[str], timeout: float = 20.0) -> int:
    result = {}
    thread = threading.Thread(target=lambda: result.update(status=module.main(argv)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"camera_sim did not finish within {timeout} s"
    return result["status"]


@needs_vtest
def test_camera_sim_pushes_paced_jpeg_frames(capsys, vtest_frames):
    camera_sim = load_camera_sim()

    def handle(websocket, record) -> None:
        for message in websocket:
            record["frames"].append(decode_frame(message))
            n = len(record["frames"])
            try:
                websocket.send(json.dumps({"error": "frame 2 rejected"} if n == 2 else {"ack": n}))
            except ConnectionClosed:
                return  # the simulator closed after its last frame

    server = IngestServer(handle)
    started = time.time()
    try:
        status = run_main(camera_sim, ["--video", str(VTEST), "--url", server.url, "--max-frames", "5",
                                       "--fps", "50", "--token", "s3cret"])
    finally:
        server.close()
    finished = time.time()
    assert status == 0
    assert len(server.connections) == 1
    record = server.connections[0]
    assert record["path"] == "/v1/streams/cam-1/ingest" and record["headers"]["Authorization"] == "Bearer s3cret"
    frames = server.frames()
    assert len(frames) == 5
    stamps = [ts for ts, _ in frames]
    assert started <= stamps[0] and stamps[-1] <= finished
    assert all(later > earlier for earlier, later in zip(stamps, stamps[1:]))
    assert stamps[-1] - stamps[0] >= 4 * 0.02 * 0.75, "frames must be paced at --fps 50"
    for (_, jpeg), original in zip(frames, vtest_frames, strict=False):
        assert jpeg[:2] == b"\xff\xd8"
        image = decoded(jpeg)
        assert image.shape == (576, 768, 3)
        assert np.abs(image.astype(np.int16) - original).mean() < 4  # the video's frames, in order
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "sent 5 frames" in summary and "1 server errors" in summary and "0 reconnects" in summary


@needs_vtest
def test_camera_sim_reconnects_after_a_drop_and_stops_on_a_fatal_close(capsys):
    camera_sim = load_camera_sim()

    def handle(websocket, record) -> None:
        first = len(server.connections) == 1
        for message in websocket:
            record["frames"].append(decode_frame(message))
            if first and len(record["frames"]) == 2:
                websocket.close(1001, "going away")
                return

    server = IngestServer(handle)
    try:
        status = run_main(camera_sim, ["--video", str(VTEST), "--url", server.url, "--max-frames", "6",
                                       "--fps", "50"])
    finally:
        server.close()
    assert status == 0
    assert len(server.connections) == 2
    assert len(server.connections[0]["frames"]) == 2 and len(server.connections[1]["frames"]) >= 3
    stamps = [ts for ts, _ in server.frames()]
    assert all(later > earlier for earlier, later in zip(stamps, stamps[1:]))
    assert "1 reconnects" in capsys.readouterr().out

    def refuse(websocket, record) -> None:
        websocket.close(4409, "not a push stream")

    server = IngestServer(refuse)
    try:
        began = time.monotonic()
        status = run_main(camera_sim, ["--video", str(VTEST), "--url", server.url, "--max-frames", "3"])
    finally:
        server.close()
    assert status == 2 and time.monotonic() - began < 5
    assert len(server.connections) == 1, "a fatal close must not be retried"
    assert "not a push stream" in capsys.readouterr().err
