"""`cellwatch demo` (``client.demo``) end to end: a real `cellwatch serve` subprocess,
vtest.avi pushed into its ingest WebSocket, alerts from /v1/alerts, the summary and
the annotated MP4; and the ways it must fail clearly."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from client import demo_setup, demo_video
from client.server_process import free_port
from service.cli import main

ROOT = Path(__file__).resolve().parents[2]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")
STATES = {"CLEAR", "WARNING", "PROTECTIVE_STOP", "FAULT"}


def _demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", "demo", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` (closed connections may still linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """The first ``frames`` frames of vtest.avi resized to ``size`` (width, height), as MJPG AVI."""
    capture = cv2.VideoCapture(str(VTEST))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for _ in range(frames):
        ok, frame = capture.read()
        assert ok
        writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
    writer.release()
    capture.release()
    return path


def test_demo_runs_the_service_on_vtest_and_writes_summary_and_video(lite_roialign_onnx, tmp_path):
    out = tmp_path / "out"
    port = free_port()
    run = _demo("--model", str(lite_roialign_onnx), "--out", str(out), "--max-frames", "40", "--speed", "4",
                "--port", str(port))
    assert run.returncode == 0, run.stdout + run.stderr
    assert _port_is_free(port), "the service is still running after the demo"

    summary = json.loads((out / "demo-summary.json").read_text())
    assert summary["frames_sent"] == 40 and summary["safety_rated"] is False
    service = summary["service_frames"]
    assert service["received"] == 40 and service["processed"] + service["dropped"] + service["errors"] == 40
    # every frame the service processed reached the demo as a persons event, matched by capture time
    assert 0 < summary["frames_processed"] == service["processed"]
    assert summary["frames_not_processed"] == 40 - summary["frames_processed"]
    assert summary["processing_fps"] > 0 and summary["send_fps"] > 10  # 10 fps x 4, paced
    event, received = summary["latency_ms"]["capture_to_event"], summary["latency_ms"]["capture_to_received"]
    assert 0 < event["p50"] <= event["p99"] <= event["max"] < 60_000
    assert received["p50"] >= event["p50"] and received["p99"] >= event["p99"]  # an event arrives after it is sent
    persons = summary["persons"]
    assert persons["distinct_track_ids"] == len(persons["track_ids"]) == len(set(persons["track_ids"]))
    assert summary["final_state"] in STATES
    assert summary["transition_count"] == len(summary["transitions"])

    # the transitions the demo saw are the service's own (its log has one line per transition)
    logged = [json.loads(line) for line in (out / "serve.log").read_text().splitlines() if line.startswith("{")]
    changes = [(e["from"], e["to"], e["reason"]) for e in logged if e["message"] == "state" and e["from"] != e["to"]]
    seen = [(t["from"], t["to"], t["reason"]) for t in summary["transitions"]]
    assert [c[:2] for c in changes[:len(seen)]] == [s[:2] for s in seen]
    assert all(s[2].startswith(c[2]) for c, s in zip(changes, seen))
    assert len(changes) - len(seen) in (0, 1)  # at most the watchdog's FAULT after the demo unsubscribed
    assert any(e["message"] == "model" and e["path"] == str(lite_roialign_onnx) for e in logged)

    # what it printed: the progress bar (stderr) and the summary (stdout)
    assert "40/40" in run.stderr
    assert "40 frames sent" in run.stdout and f"{summary['frames_processed']} processed" in run.stdout
    assert f"p50 {event['p50']:g} ms" in run.stdout and "not safety-rated" in run.stdout
    for transition in summary["transitions"]:
        assert f"{transition['from']} -> {transition['to']}" in run.stdout

    # the annotated video: every frame sent, at the video's size, with the banner and the zones drawn
    capture = cv2.VideoCapture(str(out / "demo.mp4"))
    assert capture.isOpened()
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (768, 576)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 40
    original = cv2.VideoCapture(str(VTEST)).read()[1]
    banner = slice(0, 30)
    assert frames[0][banner].mean() < 0.6 * original[banner].mean()  # darkened behind the state text
    hazard = np.array([[430, 250], [540, 250], [565, 310], [445, 310]], np.int32)
    inside = np.zeros((576, 768), np.uint8)
    cv2.fillPoly(inside, [hazard], 1)
    tint = frames[0][inside.astype(bool)].astype(float).mean(axis=0) - original[inside.astype(bool)].mean(axis=0)
    assert tint[0] < -30 and tint[2] > -5  # the grey walkway in the hazard zone is tinted red (BGR)
    edge = np.zeros((576, 768), np.uint8)
    cv2.polylines(edge, [hazard], True, 1, 1)
    blue, _, red = np.median(frames[0][edge.astype(bool)], axis=0)
    assert blue < 100 and red > 180  # and outlined in red

    config = yaml.safe_load((out / "demo-cell.yaml").read_text())
    assert config["server"] == {"host": "127.0.0.1", "port": port, "log_level": "info"}
    assert config["model"]["path"] == str(lite_roialign_onnx)
    assert config["streams"][0]["zones"]["hazard"] == hazard.tolist()


def test_demo_reports_a_service_that_cannot_start_and_stops_it(tmp_path):
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not an onnx model")
    port = free_port()
    run = _demo("--model", str(model), "--out", str(tmp_path / "out"), "--port", str(port), timeout=120)
    assert run.returncode == 1
    assert "the service could not start" in run.stderr and "broken" in run.stderr
    assert _port_is_free(port)
    assert not (tmp_path / "out" / "demo.mp4").exists()


def test_demo_reports_a_service_that_exits_with_its_last_log_lines(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"never loaded: the port is taken")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = _demo("--model", str(model), "--out", str(tmp_path / "out"), "--port", str(port), timeout=120)
    assert run.returncode == 1
    assert "the service exited with status" in run.stderr and "serve.log" in run.stderr
    assert "address already in use" in run.stderr.lower() or "errno 98" in run.stderr.lower()


def test_demo_names_a_missing_video(tmp_path, capsys):
    assert main(["demo", "--video", str(tmp_path / "missing.avi"), "--out", str(tmp_path)]) == 2
    assert f"{tmp_path / 'missing.avi'}: no such video file" in capsys.readouterr().err
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"not a video")
    assert main(["demo", "--video", str(broken), "--out", str(tmp_path)]) == 2
    assert f"{broken}: not a video OpenCV can read" in capsys.readouterr().err


def test_demo_says_how_to_get_the_default_video_and_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_setup, "DEFAULT_VIDEO", tmp_path / "vtest.avi")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "apt-get install opencv-doc" in err and "VIDEO=" in err and "--video" in err
    monkeypatch.setattr(demo_setup, "SHIPPED_MODEL", tmp_path / "person-lite.onnx")
    assert main(["demo", "--video", str(VTEST), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "person-lite.onnx is missing" in err and "make model" in err and "--model" in err


def test_demo_config_needs_a_push_stream_named_demo(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"unused")
    config = tmp_path / "cell.yaml"
    config.write_text("streams:\n  - {id: cam1, source: push}\n")
    assert main(["demo", "--model", str(model), "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert f"{config}: needs a push stream with id 'demo'" in capsys.readouterr().err
    config.write_text("streams:\n  - id: demo\n    zones: {units: pixels, hazard: [[0, 0], [10, 10], [0, 10], [10, 0]]}\n")
    assert main(["demo", "--model", str(model), "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "self-intersecting" in capsys.readouterr().err


def test_zones_follow_a_video_of_another_size(tmp_path):
    """Pixel zones drawn on 768x576 are scaled to the video; another aspect ratio gets a note."""
    wide = demo_setup.open_video(str(_clip(tmp_path / "wide.avi", 3, (640, 360))))
    assert (wide.width, wide.height, wide.fps, wide.frames) == (640, 360, 10.0, 3)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"unused")
    (tmp_path / "model.json").write_text(json.dumps({"frame_width": 768, "frame_height": 576}))
    path, zones = demo_setup.write_cell_config(demo_setup.DEMO_CONFIG, tmp_path / "out", model, 8123, wide, scale=True)
    written = yaml.safe_load(path.read_text())["streams"][0]["zones"]
    sx, sy = 640 / 768, 360 / 576
    assert written["hazard"] == [[round(x * sx, 2), round(y * sy, 2)] for x, y in
                                 [[430, 250], [540, 250], [565, 310], [445, 310]]]
    assert written["protective"]["distance"] == round(30 * (sx * sy) ** 0.5, 2)
    assert np.allclose(zones.hazard, written["hazard"])
    note = demo_setup.aspect_note(wide, model)
    assert note is not None and "640x360" in note and "768x576" in note
    same_shape = demo_setup.open_video(str(_clip(tmp_path / "half.avi", 2, (384, 288))))
    assert demo_setup.aspect_note(same_shape, model) is None

    # the drawn zones are the ones the service measures with: a ground point's label is its zone
    labels = demo_video.zone_labels(zones, 640, 360)
    for (x, y) in [(400, 160), (50, 20), (float(zones.hazard[0][0]) - 10, float(zones.hazard[0][1]))]:
        mask = np.zeros((360, 640), bool)
        mask[int(y) - 5:int(y), int(x)] = True  # a one-pixel-wide person whose lowest pixel is at (x, y - 1)
        placed = zones.person(mask)
        expected = {"hazard": 3, "protective": 2, "warning": 1, None: 0}[placed["zone"]]
        assert labels[int(y) - 1, int(x)] == expected
