"""The auto-labeller's identities: an IoU + colour-histogram tracker with hysteresis.

A track starts on a confident box, continues on weaker ones, survives short
misses and is kept only when seen in enough frames. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from models.geometry import box_iou

from .people import Detection, TeacherSettings


@dataclass
class Track:
    id: int
    box: np.ndarray
    histogram: np.ndarray
    last_frame: int
    max_score: float
    observations: dict[int, Detection] = field(default_factory=dict)


class IoUTracker:
    """Greedy IoU matching gated by colour, with hysteresis on the detection score."""

    def __init__(self, settings: TeacherSettings) -> None:
        self.s = settings
        self.active: list[Track] = []
        self.finished: list[Track] = []
        self._next_id = 1

    def update(self, frame: int, detections: list[Detection]) -> None:
        s = self.s
        alive = [t for t in self.active if frame - t.last_frame <= s.max_age]
        self.finished.extend(t for t in self.active if frame - t.last_frame > s.max_age)
        self.active = alive
        matched_tracks: set[int] = set()
        unmatched = list(range(len(detections)))
        if alive and detections:
            iou = box_iou(np.stack([t.box for t in alive]), np.stack([d.box for d in detections]))
            pairs = sorted(((iou[i, j], i, j) for i in range(len(alive)) for j in range(len(detections))), reverse=True)
            used: set[int] = set()
            for value, i, j in pairs:
                if value < s.track_iou or i in matched_tracks or j in used:
                    continue
                distance = cv2.compareHist(alive[i].histogram, detections[j].histogram, cv2.HISTCMP_BHATTACHARYYA)
                if distance > s.max_colour_distance:
                    continue
                self._extend(alive[i], frame, detections[j])
                matched_tracks.add(i)
                used.add(j)
            unmatched = [j for j in range(len(detections)) if j not in used]
        for j in unmatched:
            det = detections[j]
            if det.score >= s.score:
                track = Track(self._next_id, det.box, det.histogram, frame, det.score)
                track.observations[frame] = det
                self._next_id += 1
                self.active.append(track)

    @staticmethod
    def _extend(track: Track, frame: int, det: Detection) -> None:
        track.box = det.box
        track.histogram = 0.7 * track.histogram + 0.3 * det.histogram
        track.last_frame = frame
        track.max_score = max(track.max_score, det.score)
        track.observations[frame] = det

    def tracks(self) -> list[Track]:
        """Every track seen in at least ``min_hits`` frames, in order of first appearance."""
        done = self.finished + self.active
        kept = [t for t in done if len(t.observations) >= self.s.min_hits]
        return sorted(kept, key=lambda t: (min(t.observations), t.id))
