"""The demo's annotated video: the frames it sent, with masks, track ids, zones and the safety state.

A frame the service dropped (newest frame wins) is labelled "not processed";
the zones are drawn from a per-pixel map computed with ``service.zones``, so
they show exactly what the service measures against. Masks come as the events'
COCO RLE (``models.masks``), track colours from ``models.drawing``, as in
every picture the project makes.
"""

from __future__ import annotations

import bisect
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from models.drawing import track_colour
from models.masks import decode_rle
from service.zones import ZoneSet, distance_to_polygon, project

if TYPE_CHECKING:  # the replay's records, read here only
    from .demo_replay import Run
    from .demo_setup import Video

ADVISORY = "advisory - not safety-rated"
STATE_COLOURS = {"CLEAR": (80, 200, 60), "WARNING": (0, 200, 255), "PROTECTIVE_STOP": (40, 40, 230),
                 "FAULT": (200, 60, 200)}  # BGR
ZONE_COLOURS = {1: (0, 220, 255), 2: (0, 140, 255), 3: (40, 40, 230)}  # warning, protective, hazard


def zone_labels(zones: ZoneSet, width: int, height: int) -> np.ndarray:
    """Per pixel the zone the service would place a ground point there in:
    0 none, 1 warning, 2 protective, 3 hazard (computed by ``service.zones``)."""
    step = max(1, math.ceil(max(width, height) / 1024))
    xs, ys = np.arange(0, width, step) + 0.5 * step, np.arange(0, height, step) + 0.5 * step
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    labels = np.zeros(len(grid), np.uint8)
    for start in range(0, len(grid), 65536):
        points = grid[start:start + 65536]
        if zones.matrix is not None:
            points = project(zones.matrix, points)
        on_floor = np.isfinite(points).all(axis=1)
        points = np.where(on_floor[:, None], points, 0.0)
        hazard = distance_to_polygon(points, zones.hazard)
        label = np.where(hazard <= 0.0, 3, 0)
        for value, ring in ((2, zones.protective), (1, zones.warning)):
            if ring is None:
                continue
            inside = (distance_to_polygon(points, ring.polygon) <= 0.0 if ring.polygon is not None
                      else hazard <= ring.distance)
            label = np.where((label == 0) & inside, value, label)
        labels[start:start + 65536] = np.where(on_floor, label, 0)
    labels = labels.reshape(len(ys), len(xs))
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST) if step > 1 else labels


class Annotator:
    def __init__(self, zones: ZoneSet | None, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.labels = zone_labels(zones, width, height) if zones is not None else None
        self.contours = []
        if self.labels is not None:
            for value in (1, 2, 3):
                found, _ = cv2.findContours((self.labels >= value).astype(np.uint8), cv2.RETR_EXTERNAL,
                                            cv2.CHAIN_APPROX_SIMPLE)
                self.contours.append((found, ZONE_COLOURS[value]))

    def draw(self, frame: np.ndarray, index: int, fps: float, result: dict | None, state: str | None,
             latched: bool) -> np.ndarray:
        canvas = frame
        if self.labels is not None:
            hazard = self.labels == 3
            canvas[hazard] = (canvas[hazard] * 0.75 + np.array(ZONE_COLOURS[3]) * 0.25).astype(np.uint8)
            for contours, colour in self.contours:
                cv2.drawContours(canvas, contours, -1, colour, 2, cv2.LINE_AA)
        persons = result["persons"] if result else []
        for k, person in enumerate(persons):
            colour = track_colour(person["track_id"] if person["track_id"] is not None else k)
            if person.get("mask"):
                mask = decode_rle(person["mask"])
                if mask.shape != canvas.shape[:2]:
                    mask = cv2.resize(mask.astype(np.uint8), (self.width, self.height),
                                      interpolation=cv2.INTER_NEAREST) > 0
                canvas[mask] = (canvas[mask] * 0.5 + np.array(colour) * 0.5).astype(np.uint8)
        for k, person in enumerate(persons):
            colour = track_colour(person["track_id"] if person["track_id"] is not None else k)
            if person.get("box"):
                x1, y1, x2, y2 = (int(round(v)) for v in person["box"])
                cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
                text = f"id {person['track_id']}" + (f" {person['zone']}" if person.get("zone") else "")
                cv2.putText(canvas, text, (x1, max(y1 - 5, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 2, cv2.LINE_AA)
        self._banner(canvas, index, fps, len(persons), result is not None, state, latched)
        return canvas

    def _banner(self, canvas, index, fps, persons, processed, state, latched) -> None:
        scale = max(self.width / 768, 0.5)
        height = int(34 * scale)
        canvas[:height] = (canvas[:height] * 0.3).astype(np.uint8)
        label = (state or "UNKNOWN") + (" (latched)" if latched else "")
        colour = STATE_COLOURS.get(state or "", (200, 200, 200))
        font = cv2.FONT_HERSHEY_SIMPLEX
        cv2.putText(canvas, label, (int(8 * scale), int(25 * scale)), font, 0.8 * scale, colour, 2, cv2.LINE_AA)
        x = int(8 * scale) + cv2.getTextSize(label, font, 0.8 * scale, 2)[0][0] + int(16 * scale)
        info = f"frame {index}  {index / fps:.1f} s  " + (f"{persons} persons" if processed else "not processed")
        cv2.putText(canvas, info, (x, int(24 * scale)), font, 0.5 * scale, (255, 255, 255), 1, cv2.LINE_AA)
        # The advisory notice gets a strip of its own at the bottom, so long state text never covers it.
        (width, text_height), _ = cv2.getTextSize(ADVISORY, font, 0.5 * scale, 1)
        bottom = canvas.shape[0]
        strip = text_height + int(12 * scale)
        left = self.width - width - int(16 * scale)
        canvas[bottom - strip:, left:] = (canvas[bottom - strip:, left:] * 0.3).astype(np.uint8)
        cv2.putText(canvas, ADVISORY, (left + int(8 * scale), bottom - int(6 * scale)), font, 0.5 * scale,
                    (255, 255, 255), 1, cv2.LINE_AA)


def frame_states(run: Run) -> list[tuple[str | None, bool]]:
    """Per sent frame, the state shown on it: after its own result for a processed frame,
    else the state in force when it was sent."""
    events = sorted(run.states, key=lambda e: e["seq"])
    seqs = [e["seq"] for e in events]
    by_time = sorted(events, key=lambda e: e["emit_ts"])
    times = [e["emit_ts"] for e in by_time]
    shown = []
    for index, capture_ts in enumerate(run.sent_ts):
        result = run.results.get(index)
        if result is not None:
            k = bisect.bisect_right(seqs, result["seq"] + 1) - 1  # its transition, if any, is the next event
            event = events[k] if k >= 0 else None
        else:
            k = bisect.bisect_right(times, capture_ts) - 1
            event = by_time[k] if k >= 0 else None
        shown.append((event["state"], bool(event["latched"])) if event else (None, False))
    return shown


def write_video(path: Path, video: Video, run: Run, zones: ZoneSet | None) -> int:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), video.fps, (video.width, video.height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write an MP4 (mp4v) file here")
    capture = cv2.VideoCapture(str(video.path))
    annotator = Annotator(zones, video.width, video.height)
    written = 0
    try:
        states = frame_states(run)
        for index in tqdm(range(len(run.sent_ts)), desc="demo.mp4", unit="frame", file=sys.stderr, mininterval=0.5):
            ok, frame = capture.read()
            if not ok:
                break
            state, latched = states[index]
            writer.write(annotator.draw(frame, index, video.fps, run.results.get(index), state, latched))
            written += 1
    finally:
        capture.release()
        writer.release()
    return written
