"""One stream's per-frame step: support cache -> engine -> threshold -> tracker.

``StreamStep`` is the one place where a frame of a stream becomes
``Detections`` with track ids. It is synchronous and numpy-only; the service's
pipeline wraps it thinly in asyncio (``prepare`` in a worker thread, the
engine call through the shared batching queue, ``finish`` in a worker
thread), and offline inference and the benchmarks call it directly
(``step(frame)``).

The engine is anything with the ``FrameEngine`` shape (the service's engines,
or ``models.infer``'s eager model): a batch of ``FrameInput`` in, one
``FrameOutput`` per frame out. Both are plain numpy containers defined here.

Owns: the frame preprocessing (``prepare_frame``), the support-feature cache
(the last T frames' features, for Temporal RoI Align), the score threshold
(applied once, here) and the tracker's memory. Imports numpy, OpenCV and
``models.tracker`` / ``models.detections``; no torch, nothing from export or
service.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from .detections import Detections
from .tracker import Tracker


@dataclass
class FrameInput:
    """image: float32 ``[3, H, W]`` RGB in [0, 1] at the engine's input size.
    cache: per cache level ``[T, C, H_l, W_l]`` float32, oldest first (T may be 0)."""

    image: np.ndarray
    cache: list[np.ndarray]


@dataclass
class FrameOutput:
    """Detections in the engine's input-size pixels, and this frame's cache entry.

    boxes ``[N, 4]`` x1 y1 x2 y2; scores ``[N]``; labels ``[N]`` int64
    (1..num_classes); mask_probs ``[N, 1, M, M]`` per-box probabilities, or
    None when ``masks`` holds binary ``[N, H, W]`` masks at input size instead;
    embeddings ``[N, D]``; features per level ``[C, H_l, W_l]``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    mask_probs: np.ndarray | None
    embeddings: np.ndarray
    features: list[np.ndarray]
    timing_ms: dict[str, float] = field(default_factory=dict)
    masks: np.ndarray | None = None


class FrameEngine(Protocol):
    """What ``StreamStep`` needs of an engine (``service.engines.base.Engine`` has it)."""

    @property
    def input_size(self) -> tuple[int, int]: ...  # (height, width) of FrameInput.image

    @property
    def support_frames(self) -> int: ...

    @property
    def cache_shapes(self) -> list[tuple[int, int, int]]: ...

    def empty_cache(self) -> list[np.ndarray]: ...

    def infer(self, batch: list[FrameInput]) -> list[FrameOutput]: ...


def prepare_frame(frame_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A BGR uint8 frame -> float32 ``[3, H, W]`` RGB in [0, 1] at ``size`` (height, width)."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise ValueError(f"frame must be HxWx3 BGR, got shape {frame_bgr.shape}")
    height, width = size
    if frame_bgr.shape[:2] != (height, width):
        frame_bgr = cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0


def detections_from_output(output: FrameOutput, frame_hw: tuple[int, int],
                           input_hw: tuple[int, int]) -> Detections:
    """An engine's output in the frame's pixels (boxes scaled back, masks kept as they came)."""
    height, width = frame_hw
    masks = output.masks
    if masks is not None and tuple(masks.shape[1:]) != (height, width):
        resized = [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0 for m in masks]
        masks = np.stack(resized) if resized else np.zeros((0, height, width), bool)
    probs = output.mask_probs
    if probs is not None:
        probs = probs.reshape(len(output.boxes), *probs.shape[-2:])  # [N, 1, M, M] -> [N, M, M]
    return Detections.from_working_size(output.boxes, output.scores, output.labels, frame_hw, input_hw,
                                        embeddings=output.embeddings, mask_probs=probs, masks=masks)


class StreamStep:
    """See the module docstring. ``tracker=None``: no identities (``track_ids`` None)."""

    def __init__(self, engine: FrameEngine, tracker: Tracker | None, score_thresh: float) -> None:
        if not 0.0 <= score_thresh <= 1.0:
            raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
        self.engine = engine
        self.tracker = tracker
        self.score_thresh = float(score_thresh)
        self.frames = 0
        self.last_all: Detections | None = None  # the last frame's detections before the threshold (for benchmarks)
        self._lock = threading.Lock()  # cache and tracker: prepare and finish may run in different threads
        self._cache: list[deque[np.ndarray]] = [deque(maxlen=max(engine.support_frames, 1))
                                                for _ in engine.cache_shapes]

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        """The whole step for one frame, engine call included."""
        item = self.prepare(frame_bgr)
        return self.finish(frame_bgr.shape[:2], self.engine.infer([item])[0])

    def prepare(self, frame_bgr: np.ndarray) -> FrameInput:
        """The engine's input for this frame: the resized image and the support cache."""
        image = prepare_frame(frame_bgr, self.engine.input_size)
        with self._lock:
            if self.engine.support_frames == 0:
                cache = self.engine.empty_cache()
            else:
                cache = [np.stack(level) if level else empty
                         for level, empty in zip(self._cache, self.engine.empty_cache())]
        return FrameInput(image, cache)

    def finish(self, frame_hw: tuple[int, int], output: FrameOutput) -> Detections:
        """Keep the engine's cache entry, apply the score threshold, track."""
        detections = detections_from_output(output, frame_hw, self.engine.input_size)
        self.last_all = detections
        kept = detections[detections.scores >= self.score_thresh]
        with self._lock:
            if self.engine.support_frames > 0:  # a model without Temporal RoI Align reads no cache
                for level, feature in zip(self._cache, output.features):
                    level.append(np.array(feature, dtype=np.float32, copy=True))
            if self.tracker is not None:
                kept = kept.with_track_ids(self.tracker.update(kept.embeddings, kept.boxes, kept.labels, kept.scores))
            self.frames += 1
        return kept

    def reset(self) -> None:
        """Forget the cache and the tracker's memory (ids keep increasing)."""
        with self._lock:
            for level in self._cache:
                level.clear()
            if self.tracker is not None:
                self.tracker.reset()

    @property
    def support_kept(self) -> int:
        return len(self._cache[0]) if self.engine.support_frames and self._cache else 0

    def memory_bytes(self) -> int:
        """Support cache + tracker memory."""
        with self._lock:
            tracker = self.tracker.memory_bytes() if self.tracker is not None else 0
            return int(sum(f.nbytes for level in self._cache for f in level) + tracker)

    def tracks(self) -> list[dict]:
        with self._lock:
            return self.tracker.tracks() if self.tracker is not None else []
