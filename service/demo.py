"""``cellwatch demo``: the whole product on a video, as a robot cell would run it.

1. ``cellwatch serve`` starts as a subprocess on 127.0.0.1 with a cell config
   written to ``OUT/demo-cell.yaml`` (from ``deploy/demo-cell.yaml``: one push
   stream ``demo`` with a hazard zone and its rings; pixel zones are scaled to
   the video's size); its log goes to ``OUT/serve.log``.
2. Once ``/readyz`` says ready, the demo subscribes to ``/v1/alerts`` (with
   masks) and pushes the video into ``/v1/streams/demo/ingest`` at the video's
   frame rate times ``--speed`` (framing: ``service.framing``), as a camera would.
   Safety state transitions are printed as they arrive.
3. At the end it waits for the last results, stops the server (SIGTERM, then
   kill), prints a summary, writes it to ``OUT/demo-summary.json`` and writes
   ``OUT/demo.mp4``: the frames it sent with person masks, track ids, the zones
   and a banner with the safety state.

Figures are what the run measured: a frame the service dropped (newest frame
wins) counts as not processed; latencies are capture time to the event's
publication (``emit_ts``) and to its arrival here. Advisory, NOT safety-rated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import yaml
from tqdm import tqdm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .cli import SHIPPED_MODEL
from .config import ConfigError, load_settings, read_yaml
from .demo_video import ADVISORY, write_video
from .framing import encode_frame
from .zones import ZoneError, ZoneSet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DEMO_CONFIG = ROOT / "deploy" / "demo-cell.yaml"
DEMO_CONFIG_SIZE = (768, 576)  # width, height: the frames deploy/demo-cell.yaml's pixel zones are drawn on
STREAM = "demo"
ENGINES = {".onnx": "onnxruntime", ".pt": "torch", ".engine": "tensorrt"}
JPEG_QUALITY = 90
SETTLE_TIMEOUT_S = 15.0  # for the last results after the last frame is sent
STOP_TIMEOUT_S = 15.0


class DemoError(Exception):
    """Ends the demo with its message; ``status`` 2 for bad input, 1 for a failed run."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def say(message: str) -> None:
    tqdm.write(f"cellwatch demo: {message}", file=sys.stderr)


# ------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Video:
    path: Path
    width: int
    height: int
    fps: float
    frames: int | None  # as the container reports it


def open_video(path: str | None) -> Video:
    if path is None:
        if not DEFAULT_VIDEO.is_file():
            raise DemoError(f"the default video {DEFAULT_VIDEO} is missing: install Debian's opencv-doc "
                            "(as root: apt-get install opencv-doc), or pass a video: make demo VIDEO=path, "
                            "cellwatch demo --video path", 2)
        path = str(DEFAULT_VIDEO)
    video = Path(path)
    if not video.is_file():
        raise DemoError(f"{video}: no such video file", 2)
    capture = cv2.VideoCapture(str(video))
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok or frame is None:
            raise DemoError(f"{video}: not a video OpenCV can read (no frame could be decoded)", 2)
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        capture.release()
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        say(f"{video} reports no usable frame rate ({fps!r}); replaying at 25 fps")
        fps = 25.0
    frames = int(count) if math.isfinite(count) and count > 0 else None
    return Video(video, frame.shape[1], frame.shape[0], float(fps), frames)


def resolve_model(path: str | None) -> Path:
    if path is None:
        if not SHIPPED_MODEL.is_file():
            raise DemoError(f"the shipped person model {SHIPPED_MODEL} is missing: run `make model` "
                            "(exports models/weights/person-lite.pt to ONNX), or pass --model MODEL.onnx", 2)
        return SHIPPED_MODEL
    model = Path(path)
    if not model.is_file():
        raise DemoError(f"{model}: no such model file", 2)
    if model.suffix not in ENGINES:
        raise DemoError(f"{model}: unknown model type {model.suffix!r}; expected {', '.join(ENGINES)}", 2)
    return model.resolve()


def scale_zones(spec: dict[str, Any], sx: float, sy: float) -> dict[str, Any]:
    """A zone spec drawn for one frame size, for frames ``sx`` x ``sy`` times as large:
    image points scale per axis; pixel distances by the geometric mean."""
    def points(value):
        return [[round(float(x) * sx, 2), round(float(y) * sy, 2)] for x, y in value]

    spec = json.loads(json.dumps(spec))
    if spec.get("units") == "metres":  # only the image side of the calibration is in pixels
        if isinstance(spec.get("homography"), dict) and "image" in spec["homography"]:
            spec["homography"]["image"] = points(spec["homography"]["image"])
        return spec
    spec["hazard"] = points(spec["hazard"])
    for name in ("protective", "warning"):
        ring = spec.get(name)
        if isinstance(ring, dict) and "polygon" in ring:
            ring["polygon"] = points(ring["polygon"])
        elif isinstance(ring, dict) and "distance" in ring:
            ring["distance"] = round(float(ring["distance"]) * math.sqrt(sx * sy), 2)
    return spec


def write_cell_config(base: Path, out: Path, model: Path, port: int, video: Video,
                      scale: bool) -> tuple[Path, ZoneSet | None]:
    """OUT/demo-cell.yaml from ``base``; the demo stream's zones (validated), or None."""
    try:
        values = read_yaml(base)
    except ConfigError as exc:
        raise DemoError(str(exc), 2) from exc
    streams = values.get("streams") or []
    stream = next((s for s in streams if isinstance(s, dict) and s.get("id") == STREAM), None)
    if stream is None or stream.get("source", "push") != "push":
        raise DemoError(f"{base}: needs a push stream with id {STREAM!r} (streams: [{{id: {STREAM}, source: push}}])", 2)
    zones = stream.get("zones")
    if zones is not None and scale and (video.width, video.height) != DEMO_CONFIG_SIZE:
        try:
            zones = stream["zones"] = scale_zones(zones, video.width / DEMO_CONFIG_SIZE[0],
                                                  video.height / DEMO_CONFIG_SIZE[1])
        except (KeyError, TypeError, ValueError) as exc:
            raise DemoError(f"{base}: streams[{STREAM}].zones cannot be scaled: {exc}", 2) from exc
    values["server"] = {**(values.get("server") or {}), "host": "127.0.0.1", "port": port}
    engine = ENGINES[model.suffix]
    values["model"] = {**(values.get("model") or {}), "engine": engine, "path": str(model)}
    if engine == "torch":
        values["model"]["frame_size"] = f"{video.width}x{video.height}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo-cell.yaml"
    path.write_text("# written by `cellwatch demo` from " + str(base) + "\n" + yaml.safe_dump(values, sort_keys=False))
    try:
        load_settings(path)
        zone_set = ZoneSet.from_spec(zones) if zones is not None else None
    except ConfigError as exc:
        raise DemoError(f"{exc} (made from {base})", 2) from exc
    except ZoneError as exc:
        raise DemoError(f"{base}: streams[{STREAM}].zones: {exc}", 2) from exc
    return path, zone_set


def aspect_note(video: Video, model: Path) -> str | None:
    """A note when the video's aspect ratio is not the one the model was exported for."""
    try:
        sidecar = json.loads(model.with_suffix(".json").read_text())
        frame_w, frame_h = int(sidecar["frame_width"]), int(sidecar["frame_height"])
    except (OSError, ValueError, KeyError, TypeError):
        frame_w, frame_h = DEMO_CONFIG_SIZE
    if abs(video.width / video.height - frame_w / frame_h) <= 0.01 * frame_w / frame_h:
        return None
    return (f"the video is {video.width}x{video.height} (aspect {video.width / video.height:.2f}), the model was "
            f"exported for {frame_w}x{frame_h} ({frame_w / frame_h:.2f}): the service resizes every frame to the "
            "model's working size, so people look stretched to the network")


# ------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cellwatch serve`` as a subprocess; its log (stdout + stderr) goes to ``log_path``."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.exit_status: int | None = None

    def log_tail(self, lines: int = 12) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in text) or "    (nothing)"

    def died(self) -> DemoError | None:
        status = self.process.poll()
        if status is None:
            return None
        return DemoError(f"the service exited with status {status}; the last lines of {self.log_path}:\n"
                         f"{self.log_tail()}")

    def wait_ready(self, timeout: float) -> str:
        """The engine's name once /readyz says ready; DemoError if it fails, dies or times out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                error = self.died()
                if error is not None:
                    raise error
                try:
                    response = client.get("/readyz")
                    body = response.json()
                except (httpx.HTTPError, ValueError):
                    body = {}
                if body.get("status") == "ready":
                    return str(body.get("engine"))
                if body.get("status") == "failed":
                    raise DemoError(f"the service could not start: {body.get('error')} (log: {self.log_path})")
                time.sleep(0.25)
        raise DemoError(f"the service was not ready within {timeout:g} s; the last lines of {self.log_path}:\n"
                        f"{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM, then kill after STOP_TIMEOUT_S; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say(f"the service did not stop within {STOP_TIMEOUT_S:g} s of SIGTERM; killing it")
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        self.exit_status = self.process.returncode
        return self.exit_status


# ------------------------------------------------------------------ replay
@dataclass
class Run:
    """What the replay sent and what came back."""

    progress: tqdm
    started: float = field(default_factory=time.time)
    sent_ts: list[float] = field(default_factory=list)  # capture_ts per sent frame
    frame_of: dict[float, int] = field(default_factory=dict)
    results: dict[int, dict] = field(default_factory=dict)  # frame -> its persons event (+ received_ts)
    states: list[dict] = field(default_factory=list)  # state events as received
    transitions: list[dict] = field(default_factory=list)
    state: str | None = None
    last_zones: tuple[float | None, dict] = (None, {})  # (capture_ts, zones) of the latest persons event
    ingest_errors: list[str] = field(default_factory=list)
    sending_done: float | None = None

    def on_event(self, event: dict, received: float) -> None:
        kind = event.get("type")
        if kind == "persons":
            frame = self.frame_of.get(event.get("capture_ts"))
            self.last_zones = (event.get("capture_ts"), event.get("zones") or {})
            if frame is not None:
                self.results[frame] = {**event, "received_ts": received}
                self._postfix()
        elif kind == "state":
            self.states.append(event)
            if self.state is not None and event["state"] != self.state:
                self._transition(event)
            self.state = event["state"]
            self._postfix()

    def _transition(self, event: dict) -> None:
        capture_ts = event.get("capture_ts")
        frame = self.frame_of.get(capture_ts)
        zones = self.last_zones[1] if capture_ts is not None and capture_ts == self.last_zones[0] else {}
        reason = event.get("reason") or ""
        if capture_ts is None and self.sending_done is not None and event["emit_ts"] > self.sending_done:
            reason += " (the video has ended)"
        origin = self.sent_ts[0] if self.sent_ts else self.started
        record = {"time_s": round((capture_ts or event["emit_ts"]) - origin, 3), "frame": frame,
                  "from": self.state, "to": event["state"], "latched": event.get("latched"), "reason": reason,
                  "zones": zones}
        self.transitions.append(record)
        tqdm.write(format_transition(record))

    def _postfix(self) -> None:
        self.progress.set_postfix_str(f"processed {len(self.results)}, {self.state}", refresh=False)


def format_transition(t: dict) -> str:
    frame = "-" if t["frame"] is None else str(t["frame"])
    zones = ", ".join(f"{name}: {ids}" for name, ids in sorted(t["zones"].items())) or "none"
    latched = " (latched)" if t["latched"] else ""
    return (f"  t={t['time_s']:7.2f}s frame {frame:>5}  {t['from']} -> {t['to']}{latched}  {t['reason']}  "
            f"[tracks in zones: {zones}]")


async def _read_frame(capture: cv2.VideoCapture) -> bytes | None:
    def read() -> bytes | None:
        ok, frame = capture.read()
        if not ok:
            return None
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise DemoError("OpenCV could not encode a frame as JPEG")
        return jpeg.tobytes()

    return await asyncio.to_thread(read)


async def _send(ws, video: Video, run: Run, fps: float, limit: int | None) -> None:
    """Push frames on the camera's clock: frame i is due at start + i / fps."""
    period = 1.0 / fps
    capture = cv2.VideoCapture(str(video.path))
    try:
        start = time.monotonic()
        index = 0
        while limit is None or index < limit:
            delay = start + index * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -period:  # fell behind (slow reads): no burst, the clock restarts here
                start -= delay
            capture_ts = time.time()  # the shutter; reading and encoding are the camera's latency
            jpeg = await _read_frame(capture)
            if jpeg is None:
                break
            run.sent_ts.append(capture_ts)
            run.frame_of[capture_ts] = index
            await ws.send(encode_frame(capture_ts, jpeg))
            run.progress.update(1)
            index += 1
    finally:
        capture.release()
        run.sending_done = time.time()


async def _alerts(ws, run: Run) -> None:
    async for message in ws:
        event = json.loads(message)
        if "type" not in event:
            raise DemoError(f"the alerts WebSocket answered {event}")
        run.on_event(event, time.time())
    raise DemoError(f"the service closed the alerts WebSocket ({ws.close_code} {ws.close_reason!r})")


async def _ingest_replies(ws, run: Run) -> None:
    async for message in ws:
        if isinstance(message, str):
            reply = json.loads(message)
            if isinstance(reply, dict) and "error" in reply:
                run.ingest_errors.append(str(reply["error"]))
                if len(run.ingest_errors) <= 3:
                    say(f"the service rejected a frame: {reply['error']}")


async def _watch(server: Server) -> None:
    while True:
        error = server.died()
        if error is not None:
            raise error
        await asyncio.sleep(0.3)


async def _settle(client: httpx.AsyncClient, run: Run) -> dict:
    """The stream's status once every sent frame is accounted for and its event is here (or on timeout)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        status = (await client.get(f"/v1/streams/{STREAM}")).json()
        frames = status["frames"]
        accounted = frames["processed"] + frames["dropped"] + frames["errors"] + len(run.ingest_errors)
        if accounted >= len(run.sent_ts) and len(run.results) >= frames["processed"]:
            return status
        if time.monotonic() > deadline:
            say(f"gave up waiting for the last results after {SETTLE_TIMEOUT_S:g} s")
            return status
        await asyncio.sleep(0.2)


async def _first(*tasks: asyncio.Task) -> Any:
    """The result of the first task to finish; any task's exception is raised; the rest are cancelled."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def replay(server: Server, video: Video, run: Run, fps: float, limit: int | None) -> tuple[dict, dict]:
    ws_url = f"ws://127.0.0.1:{server.port}"
    try:
        async with connect(f"{ws_url}/v1/alerts?streams={STREAM}&masks=1&since=0", max_size=None,
                           open_timeout=10) as alerts, \
                connect(f"{ws_url}/v1/streams/{STREAM}/ingest", open_timeout=10) as ingest, \
                httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            listeners = [asyncio.create_task(_alerts(alerts, run)), asyncio.create_task(_ingest_replies(ingest, run))]
            try:
                await _first(asyncio.create_task(_send(ingest, video, run, fps, limit)), asyncio.create_task(_watch(server)),
                             *(asyncio.shield(task) for task in listeners))
                status = await _first(asyncio.create_task(_settle(client, run)), asyncio.create_task(_watch(server)),
                                      *(asyncio.shield(task) for task in listeners))
                safety = (await client.get(f"/v1/streams/{STREAM}/safety")).json()
            finally:
                for task in listeners:
                    task.cancel()
                await asyncio.gather(*listeners, return_exceptions=True)
    except (ConnectionClosed, OSError, InvalidHandshake, httpx.HTTPError) as exc:
        try:  # a connection lost because the service is going down: report why it went
            server.process.wait(3)
        except subprocess.TimeoutExpired:
            pass
        raise server.died() or DemoError(f"lost the service: {type(exc).__name__}: {exc}") from exc
    return status, safety


# ------------------------------------------------------------------ summary
def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "max": round(float(max(values)), 1)}


def summarise(run: Run, video: Video, model: Path, engine: str, speed: float, status: dict, safety: dict,
              out: Path, notes: list[str]) -> dict:
    sent, results = len(run.sent_ts), run.results
    emitted = [r["emit_ts"] for r in results.values()]
    duration = (run.sending_done or time.time()) - run.sent_ts[0] if sent else 0.0
    tracks = sorted({p["track_id"] for r in results.values() for p in r["persons"] if p["track_id"] is not None})
    return {
        "schema": "cellwatch.demo-summary/1",
        "video": {"path": str(video.path), "width": video.width, "height": video.height, "fps": video.fps},
        "model": str(model),
        "engine": engine,
        "speed": speed,
        "frames_sent": sent,
        "send_fps": round((sent - 1) / duration, 2) if sent > 1 and duration > 0 else None,
        "frames_processed": len(results),
        "frames_not_processed": sent - len(results),
        "service_frames": status.get("frames"),
        "processing_fps": (round(len(results) / (max(emitted) - run.sent_ts[0]), 2)
                           if emitted and max(emitted) > run.sent_ts[0] else None),
        "latency_ms": {
            "capture_to_event": _percentiles([(r["emit_ts"] - r["capture_ts"]) * 1000 for r in results.values()]),
            "capture_to_received": _percentiles([(r["received_ts"] - r["capture_ts"]) * 1000
                                                 for r in results.values()]),
        },
        "persons": {"distinct_track_ids": len(tracks), "track_ids": tracks,
                    "max_in_one_frame": max((len(r["persons"]) for r in results.values()), default=0),
                    "frames_with_persons": sum(1 for r in results.values() if r["persons"])},
        "transition_count": len(run.transitions),
        "transitions": run.transitions,
        "final_state": run.state,
        "frames_rejected": len(run.ingest_errors),
        "separation": {k: safety.get(k) for k in ("measured_p99_ms", "reaction_time_s", "protective_separation_mm")},
        "outputs": {"video": str(out / "demo.mp4"), "summary": str(out / "demo-summary.json"),
                    "config": str(out / "demo-cell.yaml"), "service_log": str(out / "serve.log")},
        "notes": notes,
        "safety_rated": False,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def print_summary(summary: dict) -> None:
    s, lat, fmt = summary, summary["latency_ms"], _fmt
    dropped = (s["service_frames"] or {}).get("dropped")
    print(f"cellwatch demo: {s['frames_sent']} frames sent ({fmt(s['send_fps'])} fps), {s['frames_processed']} "
          f"processed ({fmt(s['processing_fps'])} fps), {s['frames_not_processed']} not processed "
          f"({dropped} dropped by the service: newest frame wins)")
    print(f"  end-to-end latency, capture to event: p50 {fmt(lat['capture_to_event']['p50'])} ms, "
          f"p99 {fmt(lat['capture_to_event']['p99'])} ms; capture to this client: "
          f"p50 {fmt(lat['capture_to_received']['p50'])} ms, p99 {fmt(lat['capture_to_received']['p99'])} ms")
    print(f"  persons: {s['persons']['distinct_track_ids']} distinct track ids, up to "
          f"{s['persons']['max_in_one_frame']} in one frame, in {s['persons']['frames_with_persons']} frames")
    print(f"  safety state transitions: {s['transition_count']}; final state {s['final_state']}")
    for transition in s["transitions"]:
        print(format_transition(transition))
    separation = s["separation"].get("protective_separation_mm")
    if separation is not None:
        print(f"  ISO/TS 15066 protective separation with the measured p99 in the reaction time: {separation:.0f} mm")
    for note in s["notes"]:
        print(f"  note: {note}")
    print(f"  wrote {s['outputs']['video']} and {s['outputs']['summary']}; {ADVISORY}")


# ------------------------------------------------------------------ video
def run_demo(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except DemoError as exc:
        say(f"error: {exc}")
        return exc.status
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def _run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.speed) and args.speed > 0):
        raise DemoError(f"--speed must be > 0, got {args.speed}", 2)
    if args.max_frames is not None and args.max_frames < 1:
        raise DemoError(f"--max-frames must be >= 1, got {args.max_frames}", 2)
    video = open_video(args.video)
    model = resolve_model(args.model)
    out = Path(args.out).resolve()
    base = Path(args.config) if args.config else DEMO_CONFIG
    port = args.port or free_port()
    config, zones = write_cell_config(base, out, model, port, video, scale=args.config is None)
    notes = [n for n in (aspect_note(video, model),) if n]
    for note in notes:
        say(f"note: {note}")
    say(f"starting the service: {model.name} on 127.0.0.1:{port} (config {config}, log {out / 'serve.log'})")
    server = Server(config, port, out / "serve.log")
    try:
        engine = server.wait_ready(args.ready_timeout)
        total = min((n for n in (args.max_frames, video.frames) if n), default=None)
        fps = video.fps * args.speed
        say(f"ready ({engine}); pushing {video.path.name} ({video.width}x{video.height}, "
            f"{total or 'all'} frames) at {fps:g} fps; {ADVISORY}")
        progress = tqdm(total=total, desc="demo", unit="frame", file=sys.stderr, mininterval=0.5)
        run = Run(progress)
        try:
            status, safety = asyncio.run(replay(server, video, run, fps, args.max_frames))
        finally:
            progress.close()
    finally:
        exit_status = server.stop()
    if exit_status not in (0, -signal.SIGTERM):
        say(f"note: the service exited with status {exit_status} (log: {server.log_path})")
    summary = summarise(run, video, model, engine, args.speed, status, safety, out, notes)
    try:
        written = write_video(out / "demo.mp4", video, run, zones)
    except OSError as exc:
        raise DemoError(str(exc)) from exc
    if written != len(run.sent_ts):
        summary["notes"].append(f"demo.mp4 has {written} of the {len(run.sent_ts)} frames sent "
                                "(the video could not be read again to the end)")
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    if not summary["frames_processed"]:
        raise DemoError(f"no frame was processed (see {server.log_path})")
    return 0
