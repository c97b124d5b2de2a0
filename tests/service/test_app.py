"""The service over a real uvicorn server on 127.0.0.1 with real clients and real vtest.avi frames.

The engine here is ``HogEngine`` (OpenCV's HOG people detector behind the
engine interface), so tracking is exercised on real detections of real
people; the ONNX Runtime engine is covered end to end in test_serve.py.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from models.geometry import box_iou
from service.app import create_app
from service.config import load_settings
from service.framing import encode_frame

from .hog_engine import HogEngine
from .live import LiveServer

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")


def _frames(count: int, start: int = 0, step: int = 1) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        assert ok, "vtest.avi ended early"
        frames.append(frame)
        for _ in range(step - 1):
            capture.read()
    capture.release()
    return frames


def _jpeg(frame: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return data.tobytes()


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + iend


@pytest.fixture(scope="module")
def jpegs():
    return [_jpeg(f) for f in _frames(40, start=60)]


@pytest.fixture(scope="module")
def server():
    settings = load_settings(None, pipeline={"score_thresh": 0.5})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        yield live


def _processed(server, stream: str) -> int:
    return server.client.get(f"/v1/streams/{stream}").json()["frames"]["processed"]


def _push_and_wait(server, stream: str, frames: list[bytes], start_ts: float | None = None) -> list[dict]:
    """Push frames one by one, each after the previous one was processed; collect results.

    Each frame's capture time is when it is sent (``start_ts`` is kept for
    callers and not used: a frame labelled earlier than it was sent would
    look late to the safety deadline)."""
    results = []
    with connect(f"{server.ws_url}/v1/streams/{stream}/ingest") as ws:
        for i, data in enumerate(frames):
            before = _processed(server, stream)
            ws.send(encode_frame(time.time(), data))
            server.wait_for(lambda: _processed(server, stream) > before, what=f"frame {i} processed")
            results.append(server.client.get(f"/v1/streams/{stream}/latest").json())
    return results


def test_health_ready_and_metrics(server):
    assert server.client.get("/healthz").json() == {"status": "alive"}
    assert server.client.get("/readyz").json()["status"] == "ready"
    text = server.client.get("/metrics").text
    assert "cellwatch_engine_batch_size_count" in text and "cellwatch_streams" in text


def test_pushed_walking_people_keep_their_ids(server, jpegs):
    assert server.client.post("/v1/streams", json={"id": "walk"}).status_code == 201
    results = _push_and_wait(server, "walk", jpegs, time.time())
    assert all(r["safety_rated"] is False and r["stream_id"] == "walk" for r in results)
    assert [r["frame"] for r in results] == list(range(1, len(jpegs) + 1))
    # Consecutive frames: a person whose box overlaps a person of the previous
    # frame strongly is the same walker, and must keep the id.
    pairs = same = 0
    for previous, current in zip(results, results[1:]):
        if not previous["persons"] or not current["persons"]:
            continue
        old = np.array([p["box"] for p in previous["persons"]])
        new = np.array([p["box"] for p in current["persons"]])
        iou = box_iou(new, old)
        for i, j in enumerate(iou.argmax(axis=1)):
            if iou[i, j] >= 0.6:
                pairs += 1
                same += current["persons"][i]["track_id"] == previous["persons"][j]["track_id"]
    assert pairs >= 30, f"too few overlapping detections to judge ({pairs})"
    assert same / pairs >= 0.9, f"ids kept in {same} of {pairs} overlapping pairs"
    lifetimes: dict[int, int] = {}
    for r in results:
        for p in r["persons"]:
            lifetimes[p["track_id"]] = lifetimes.get(p["track_id"], 0) + 1
    assert max(lifetimes.values()) >= 20, lifetimes
    person = results[-1]["persons"][0]
    assert set(person) >= {"track_id", "score", "box", "mask", "class"} and person["class"] == "person"
    assert person["mask"]["size"] == [576, 768]
    timing = results[-1]["timing"]
    assert timing["end_to_end_ms"] > 0 and timing["inference_ms"] > 0 and timing["decode_ms"] > 0
    status = server.client.get("/v1/streams/walk").json()
    assert status["frames"]["received"] == status["frames"]["processed"] == len(jpegs)
    assert status["state"] == "online" and status["latency_ms"]["p99"] >= status["latency_ms"]["p50"] > 0
    tracks = server.client.get("/v1/streams/walk/tracks").json()["tracks"]
    assert tracks and all({"id", "box", "hits"} <= set(t) for t in tracks)
    overlay = server.client.get("/v1/streams/walk/latest", params={"overlay": "png"})
    assert overlay.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR).shape == (576, 768, 3)


def test_newest_frame_wins_and_nothing_is_lost_from_the_count(server, jpegs):
    assert server.client.post("/v1/streams", json={"id": "burst"}).status_code == 201
    with connect(f"{server.ws_url}/v1/streams/burst/ingest") as ws:
        for i, data in enumerate(jpegs[:20]):
            ws.send(encode_frame(time.time(), data))
    server.wait_for(
        lambda: (lambda s: s["received"] == 20 and s["processed"] + s["dropped"] == 20)(
            server.client.get("/v1/streams/burst").json()["frames"]
        ),
        what="every pushed frame processed or counted as dropped",
    )
    frames = server.client.get("/v1/streams/burst").json()["frames"]
    assert frames["dropped"] > 0, "20 frames sent at once must not all wait in a queue"
    assert 'cellwatch_frames_dropped_total{stream="burst"}' in server.client.get("/metrics").text


def test_two_streams_keep_separate_memories(server, jpegs):
    for stream in ("left", "right"):
        assert server.client.post("/v1/streams", json={"id": stream}).status_code == 201
    _push_and_wait(server, "left", jpegs[:6], time.time())
    left_tracks = server.client.get("/v1/streams/left/tracks").json()["tracks"]
    assert left_tracks
    # the right stream sees the scene mirrored: its own ids, its own memory
    mirrored = [_jpeg(cv2.flip(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), 1)) for j in jpegs[:6]]
    _push_and_wait(server, "right", mirrored, time.time())
    right_tracks = server.client.get("/v1/streams/right/tracks").json()["tracks"]
    assert right_tracks and min(t["id"] for t in right_tracks) == 0, "each stream numbers its own ids"
    assert server.client.get("/v1/streams/left/tracks").json()["tracks"] == left_tracks
    assert server.client.post("/v1/streams/right/reset").status_code == 200
    assert server.client.get("/v1/streams/right/tracks").json()["tracks"] == []
    assert server.client.get("/v1/streams/left/tracks").json()["tracks"] == left_tracks


def _snapshot(server) -> dict:
    streams = server.client.get("/v1/streams").json()["streams"]
    return {s["id"]: (s["frames"], s["tracks"], s["resets"]) for s in streams}


def test_bad_rest_input_gets_4xx_and_changes_nothing(server, jpegs):
    server.client.post("/v1/streams", json={"id": "steady"})
    _push_and_wait(server, "steady", jpegs[:2], time.time())
    before = _snapshot(server)
    truncated = jpegs[0][: len(jpegs[0]) // 2]
    cases = [
        ("random bytes", {"content": np.random.default_rng(0).bytes(5000), "headers": {"content-type": "image/jpeg"}}, 400),
        ("truncated JPEG", {"content": truncated, "headers": {"content-type": "image/jpeg"}}, 400),
        ("empty body", {"content": b"", "headers": {"content-type": "image/jpeg"}}, 400),
        ("0x0 PNG", {"content": _png_header(0, 0), "headers": {"content-type": "image/png"}}, 400),
        ("20000x20000 PNG", {"content": _png_header(20000, 20000), "headers": {"content-type": "image/png"}}, 413),
        ("wrong content type", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
    ]
    for label, request, status in cases:
        response = server.client.post("/v1/infer", **request)
        assert response.status_code == status, (label, response.status_code, response.text)
        assert response.json()["detail"], label
    assert server.client.get("/v1/streams/nope").status_code == 404
    assert "unknown stream 'nope'" in server.client.get("/v1/streams/nope/tracks").json()["detail"]
    assert server.client.post("/v1/streams/nope/reset").status_code == 404
    assert server.client.delete("/v1/streams/nope").status_code == 404
    duplicate = server.client.post("/v1/streams", json={"id": "steady"})
    assert duplicate.status_code == 409 and "already exists" in duplicate.json()["detail"]
    for body in ({"id": "bad id!"}, {"id": "x", "source": "ftp://host/x"}, {"id": "y", "source": "/no/such.avi"},
                 {"source": "push"}):
        assert server.client.post("/v1/streams", json=body).status_code == 422, body
    assert _snapshot(server) == before


def test_bad_pushed_frames_get_error_messages_and_close_codes(server, jpegs):
    server.client.post("/v1/streams", json={"id": "pushbad"})
    before = _snapshot(server)
    with connect(f"{server.ws_url}/v1/streams/pushbad/ingest") as ws:
        for payload in (b"\x00" * 4, encode_frame(time.time(), b"garbage!" * 100),
                        encode_frame(time.time(), jpegs[0][:2000]), encode_frame(time.time(), _png_header(20000, 20000))):
            ws.send(payload)
            message = json.loads(ws.recv(timeout=10))
            assert message["error"], payload[:20]
        ws.send("a text message")
        assert "binary" in json.loads(ws.recv(timeout=10))["error"]
        with pytest.raises(Exception):
            ws.recv(timeout=10)
        assert ws.close_code == 1003
    with connect(f"{server.ws_url}/v1/streams/ghost/ingest") as ws:
        assert "unknown stream" in json.loads(ws.recv(timeout=10))["error"]
        with pytest.raises(Exception):
            ws.recv(timeout=10)
        assert ws.close_code == 4404
    assert _snapshot(server) == before
    assert 'cellwatch_frames_rejected_total{stream="pushbad"} 4.0' in server.client.get("/metrics").text


def test_single_frame_infer_is_stateless(server, jpegs):
    before = _snapshot(server)
    raw = server.client.post("/v1/infer", content=jpegs[5], headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200
    body = raw.json()
    assert body["safety_rated"] is False and body["persons"]
    assert all(p["track_id"] is None for p in body["persons"])
    assert body["timing"]["inference_ms"] > 0
    multipart = server.client.post("/v1/infer", files={"image": ("f.jpg", jpegs[5], "image/jpeg")})
    assert multipart.status_code == 200
    assert [p["box"] for p in multipart.json()["persons"]] == [p["box"] for p in body["persons"]]
    png = server.client.post("/v1/infer", params={"overlay": "png"}, content=jpegs[5],
                             headers={"content-type": "image/jpeg"})
    assert png.headers["content-type"] == "image/png"
    assert _snapshot(server) == before


def test_delete_stops_a_stream_and_leaves_others(server, jpegs):
    server.client.post("/v1/streams", json={"id": "gone"})
    server.client.post("/v1/streams", json={"id": "stays"})
    assert server.client.delete("/v1/streams/gone").status_code == 204
    assert server.client.get("/v1/streams/gone").status_code == 404
    _push_and_wait(server, "stays", jpegs[:2], time.time())
    assert "cellwatch_frames_received_total{stream=\"gone\"}" not in server.client.get("/metrics").text


def test_stream_limit_is_enforced():
    settings = load_settings(None, limits={"max_streams": 1})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        assert live.client.post("/v1/streams", json={"id": "a"}).status_code == 201
        refused = live.client.post("/v1/streams", json={"id": "b"})
        assert refused.status_code == 409 and "max_streams=1" in refused.json()["detail"]
        assert [s["id"] for s in live.client.get("/v1/streams").json()["streams"]] == ["a"]


class _FailsOnRedFrames(HogEngine):
    """Raises for pure red frames, as a broken model would on some input."""

    def infer(self, batch):
        from service.engines.base import EngineError

        if any(float(item.image[0].mean()) > 0.9 and float(item.image[1:].mean()) < 0.1 for item in batch):
            raise EngineError("model failed on this frame")
        return super().infer(batch)


def test_one_streams_engine_failure_leaves_the_other_streams_running(jpegs):
    settings = load_settings(None, batching={"max_batch": 1})
    with LiveServer(create_app(settings, engine=_FailsOnRedFrames())) as live:
        for stream in ("broken", "fine"):
            assert live.client.post("/v1/streams", json={"id": stream}).status_code == 201
        dark = _jpeg(np.dstack([np.zeros((576, 768), np.uint8)] * 2 + [np.full((576, 768), 255, np.uint8)]))
        with connect(f"{live.ws_url}/v1/streams/broken/ingest") as ws:
            ws.send(encode_frame(time.time(), dark))
        live.wait_for(lambda: live.client.get("/v1/streams/broken").json()["state"] == "fault", what="fault")
        broken = live.client.get("/v1/streams/broken").json()
        assert broken["frames"]["errors"] == 1 and "model failed" in broken["last_error"]
        results = _push_and_wait(live, "fine", jpegs[:3], time.time())
        assert all(r["persons"] for r in results)
        assert live.client.get("/v1/streams/fine").json()["state"] == "online"
        # the broken stream recovers once its frames can be processed again
        _push_and_wait(live, "broken", jpegs[:1], time.time())
        assert live.client.get("/v1/streams/broken").json()["state"] == "online"


def test_frame_size_limits_are_configurable(jpegs):
    settings = load_settings(None, limits={"max_frame_bytes": 40_000, "max_side": 700})
    with LiveServer(create_app(settings, engine=HogEngine())) as live:
        big = live.client.post("/v1/infer", content=jpegs[0], headers={"content-type": "image/jpeg"})
        assert big.status_code == 413 and "exceeds" in big.json()["detail"]
        small = _jpeg(cv2.resize(cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR), (320, 240)))
        assert len(small) < 40_000 < len(jpegs[0])
        assert live.client.post("/v1/infer", content=small, headers={"content-type": "image/jpeg"}).status_code == 200
        wide = _jpeg(np.zeros((100, 800, 3), np.uint8))
        assert live.client.post("/v1/infer", content=wide, headers={"content-type": "image/jpeg"}).status_code == 413
        live.client.post("/v1/streams", json={"id": "cam"})
        with connect(f"{live.ws_url}/v1/streams/cam/ingest") as ws:
            ws.send(encode_frame(time.time(), jpegs[0]))
            assert "exceeds" in json.loads(ws.recv(timeout=10))["error"]
            with pytest.raises(Exception):
                ws.recv(timeout=10)
            assert ws.close_code == 1009
        assert live.client.get("/v1/streams/cam").json()["frames"]["received"] == 0


def test_readyz_is_503_until_the_engine_is_warm():
    import threading

    gate = threading.Event()

    class _SlowStart(HogEngine):
        def infer(self, batch):
            gate.wait(30)
            return super().infer(batch)

    with LiveServer(create_app(load_settings(None), engine=_SlowStart()), wait_ready=False) as live:
        try:
            assert live.client.get("/healthz").json() == {"status": "alive"}
            starting = live.client.get("/readyz")
            assert starting.status_code == 503 and starting.json()["status"] == "starting"
            assert live.client.get("/v1/streams").status_code == 503
        finally:
            gate.set()
        live.wait_for(lambda: live.client.get("/readyz").status_code == 200, what="ready after warm-up")
        assert live.client.get("/v1/streams").status_code == 200
