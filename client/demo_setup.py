"""What ``cellwatch demo`` sets up before the service starts: the video, the
model, and the cell config written to ``OUT/demo-cell.yaml``; and ``DemoError``,
how every part of the demo ends it with a message.

The config comes from ``deploy/demo-cell.yaml`` (or ``--config``): it needs one
push stream ``demo``; its pixel zones, drawn on 768x576 frames, are scaled to
the video's size. Reads the config and zones with ``service.config`` and
``service.zones``, the service's own checks; imports nothing else of the project.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import yaml
from tqdm import tqdm

from service.config import ConfigError, load_settings, read_yaml
from service.shipped_model import SHIPPED_MODEL
from service.zones import ZoneError, ZoneSet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DEMO_CONFIG = ROOT / "deploy" / "demo-cell.yaml"
DEMO_CONFIG_SIZE = (768, 576)  # width, height: the frames deploy/demo-cell.yaml's pixel zones are drawn on
STREAM = "demo"
ENGINES = {".onnx": "onnxruntime", ".pt": "torch", ".engine": "tensorrt"}


class DemoError(Exception):
    """Ends the demo with its message; ``status`` 2 for bad input, 1 for a failed run."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def say(message: str) -> None:
    tqdm.write(f"cellwatch demo: {message}", file=sys.stderr)


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
