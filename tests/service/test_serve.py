"""`cellwatch serve` end to end: the lite model exported to ONNX, run by ONNX Runtime
in a real server process, on pushed and pulled streams of vtest.avi."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import pytest

from .test_sources import MjpegServer

ROOT = Path(__file__).resolve().parents[2]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def lite_onnx(lite_temporal):
    return lite_temporal[1]


@pytest.fixture
def service(lite_onnx, tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--model", str(lite_onnx), "--port", str(port), "--threads", "2"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        # file sources play only from sources.file_dirs: here vtest.avi's directory
        env={**os.environ, "PYTHONUNBUFFERED": "1",
             "CELLWATCH_SOURCES__FILE_DIRS": json.dumps([str(VTEST.parent)])},
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        _wait(lambda: client.get("/readyz").status_code == 200, 120, "the server to be ready")
        yield {"client": client, "port": port, "process": process, "log": log}
    finally:
        client.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


def test_serve_runs_lite_on_pushed_and_pulled_streams_and_shuts_down_cleanly(service):
    client, port = service["client"], service["port"]
    assert "torch" not in client.get("/readyz").json()["engine"]
    mjpeg_frames = []
    capture = cv2.VideoCapture(str(VTEST))
    for _ in range(10):
        ok, frame = capture.read()
        mjpeg_frames.append((cv2.imencode(".jpg", frame)[1].tobytes(), True, {}))
    capture.release()
    camera = MjpegServer(mjpeg_frames, interval=0.1)
    mjpeg_port = camera.port

    assert client.post("/v1/streams", json={"id": "cam"}).status_code == 201
    assert client.post("/v1/streams", json={"id": "file", "source": str(VTEST), "options": {"loop": True}}).status_code == 201
    assert client.post("/v1/streams", json={"id": "mjpeg", "source": camera.url}).status_code == 201
    outside = client.post("/v1/streams", json={"id": "passwd", "source": "/etc/passwd"})
    assert outside.status_code == 422 and "outside sources.file_dirs" in outside.json()["detail"]

    # a camera pushing at its real frame rate, as deploy/camera_sim.py does in compose
    sim = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "camera_sim.py"), "--video", str(VTEST), "--url",
         f"ws://127.0.0.1:{port}/v1/streams/cam/ingest", "--max-frames", "15", "--fps", "10"],
        capture_output=True, text=True, timeout=120,
    )
    assert sim.returncode == 0, sim.stderr

    def processed(stream):
        return client.get(f"/v1/streams/{stream}").json()["frames"]["processed"]

    try:
        # 15 pushed frames in 1.5 s against ~1 s per frame: newest-frame-wins
        # drops most, but every frame is either processed or counted as dropped
        _wait(lambda: (lambda f: f["received"] == 15 and f["processed"] + f["dropped"] == 15 and f["processed"] >= 1)(
            client.get("/v1/streams/cam").json()["frames"]), 120, "the pushed frames to be accounted for")
        _wait(lambda: processed("file") >= 3 and processed("mjpeg") >= 3, 120, "the pulled streams to process frames")
    except TimeoutError as exc:
        raise AssertionError(json.dumps(client.get("/v1/streams").json(), indent=1)) from exc
    latest = client.get("/v1/streams/cam/latest").json()
    assert latest["safety_rated"] is False and latest["timing"]["inference_ms"] > 0

    # the MJPEG camera goes away: that stream reconnects, the others keep going
    camera.stop()
    _wait(lambda: client.get("/v1/streams/mjpeg").json()["source_state"] in ("disconnected", "reconnecting", "error"),
          30, "the MJPEG stream to notice the camera is gone")
    # ... and says so at once: a fault event, the stream's state FAULT
    faults = _wait(lambda: [e for e in client.get("/v1/streams/mjpeg/events", params={"limit": 1000}).json()["events"]
                            if e["type"] == "fault"], 10, "a fault event for the lost camera")
    assert faults[0]["reason"].startswith("source ") and faults[0]["state"] == "FAULT"
    assert client.get("/v1/streams/mjpeg").json()["safety"]["state"] == "FAULT"
    file_before = processed("file")
    resets_before = client.get("/v1/streams/mjpeg").json()["resets"]
    camera = MjpegServer(mjpeg_frames, port=mjpeg_port, interval=0.1)
    try:
        _wait(lambda: client.get("/v1/streams/mjpeg").json()["resets"] > resets_before, 60,
              "the MJPEG stream to reconnect (a reconnect resets tracker and cache)")
        mjpeg_after = processed("mjpeg")
        _wait(lambda: processed("mjpeg") > mjpeg_after, 60, "frames after the reconnect")
        assert client.get("/v1/streams/mjpeg").json()["last_error"] is None
        _wait(lambda: processed("file") > file_before, 60, "the file stream to keep going")
    finally:
        camera.stop()
    metrics = client.get("/metrics").text
    for stream in ("cam", "file", "mjpeg"):
        assert f'cellwatch_frames_processed_total{{stream="{stream}"}}' in metrics

    process = service["process"]
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, so a
    # supervisor sees the process end by SIGTERM; "stopped" below is the app's
    # own shutdown having run.
    assert process.wait(30) in (0, -signal.SIGTERM)
    service["log"].seek(0)
    lines = [line for line in service["log"].read().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert any(e["message"] == "ready" for e in entries) and any(e["message"] == "stopped" for e in entries)


def test_serve_without_a_model_says_what_to_pass(tmp_path, monkeypatch, capsys):
    import service.cli

    # without --model, serve runs the shipped model when `make model` has exported it; here it has not
    monkeypatch.setattr(service.cli, "SHIPPED_MODEL", tmp_path / "person-lite.onnx")
    assert service.cli.main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "make model" in err and "person-lite.onnx" in err


def test_serve_with_a_malformed_config_fails_clearly(tmp_path):
    config = tmp_path / "cell.yaml"
    config.write_text("streams:\n  - id: [not, a, string]\n")
    out = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--config", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and str(config) in out.stderr and "streams.0.id" in out.stderr
    config.write_text("server: {port: 8080\n")
    out = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--config", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not valid YAML" in out.stderr
