"""A test double engine that finds real people: OpenCV's HOG people detector.

Until a trained person model ships, the service tests need an engine whose
detections follow the people in real footage (vtest.avi), so tracking,
zones and alerts can be checked on it. ``HogEngine`` implements
``service.engines.base.Engine`` like the real engines: boxes in working-size
pixels, masks as [N, 1, 28, 28] probabilities (a filled ellipse inside each
box), embeddings as normalised HSV colour histograms of the box, no support
frames, cache entries of lite's shapes at the working size (zeros).
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from export.spec import cache_shapes
from service.engines.base import Engine, EngineError, FrameInput, FrameOutput

MASK_SIZE = 28
LITE_CHANNELS = 128  # the lite preset's FPN channels
HUE_BINS, SATURATION_BINS, VALUE_BINS = 8, 4, 4


class HogEngine(Engine):
    """``upscale``: the detector's 64x128 window needs people taller than a
    working-size (360-line) frame shows them, so it looks at an enlarged copy."""

    name = "hog"

    def __init__(
        self,
        input_size: tuple[int, int] = (360, 480),
        upscale: float = 2.0,
        scale_step: float = 1.1,
        nms_iou: float = 0.4,
    ) -> None:
        self._input_size = (int(input_size[0]), int(input_size[1]))
        self.upscale = float(upscale)
        self.scale_step = float(scale_step)
        self.nms_iou = float(nms_iou)
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self._cache_shapes = cache_shapes(*self._input_size, LITE_CHANNELS)
        self._mask = _ellipse_mask()
        self.batches: list[int] = []  # batch sizes seen, for tests of batching

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def classes(self) -> list[str]:
        return ["person"]

    @property
    def support_frames(self) -> int:
        return 0

    @property
    def cache_shapes(self) -> list[tuple[int, int, int]]:
        return list(self._cache_shapes)

    def infer(self, batch: list[FrameInput]) -> list[FrameOutput]:
        self.batches.append(len(batch))
        return [self._infer_one(item) for item in batch]

    def _infer_one(self, item: FrameInput) -> FrameOutput:
        expected = (3, *self._input_size)
        if tuple(item.image.shape) != expected:
            raise EngineError(f"hog engine: image must be {expected}, got {tuple(item.image.shape)}")
        started = time.perf_counter()
        rgb = (item.image.transpose(1, 2, 0) * 255.0).round().clip(0, 255).astype(np.uint8)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        boxes, scores = self.detect(bgr)
        count = len(boxes)
        embeddings = np.zeros((0, self.embedding_dim), np.float32)
        if count:
            embeddings = np.stack([_colour_histogram(bgr, box) for box in boxes])
        return FrameOutput(
            boxes=boxes,
            scores=scores,
            labels=np.ones(count, dtype=np.int64),
            mask_probs=np.repeat(self._mask[None, None], count, axis=0),
            embeddings=embeddings,
            features=[np.zeros(shape, dtype=np.float32) for shape in self._cache_shapes],
            timing_ms={"inference": (time.perf_counter() - started) * 1000.0},
        )

    @property
    def embedding_dim(self) -> int:
        return HUE_BINS * SATURATION_BINS * VALUE_BINS

    def detect(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``[N, 4]`` x1 y1 x2 y2 (working-size pixels) and scores in (0.5, 1), best first."""
        big = cv2.resize(bgr, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        rects, weights = self.hog.detectMultiScale(big, winStride=(8, 8), padding=(8, 8), scale=self.scale_step)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        keep = cv2.dnn.NMSBoxes([list(map(int, r)) for r in rects], weights.tolist(), 0.0, self.nms_iou)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        keep = keep[np.argsort(-weights[keep], kind="stable")]
        rects = np.asarray(rects, dtype=np.float32)[keep] / self.upscale
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        height, width = self._input_size
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        # The SVM margin (> 0 for a detection) squashed to a probability-like score above 0.5.
        scores = (1.0 / (1.0 + np.exp(-2.0 * weights[keep]))).astype(np.float32)
        return boxes.astype(np.float32), scores


def _ellipse_mask() -> np.ndarray:
    """A person-ish blob: a filled ellipse touching the box's sides, as probabilities."""
    canvas = np.zeros((MASK_SIZE * 8, MASK_SIZE * 8), np.uint8)
    centre = (MASK_SIZE * 4, MASK_SIZE * 4)
    cv2.ellipse(canvas, centre, (MASK_SIZE * 3, MASK_SIZE * 4 - 4), 0, 0, 360, 255, -1)
    small = cv2.resize(canvas, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_AREA)
    return (small.astype(np.float32) / 255.0).clip(0.0, 1.0)


def _colour_histogram(bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box's HSV histogram, L2-normalised (cosine similarity tells people's clothes apart)."""
    height, width = bgr.shape[:2]
    x1, y1 = int(max(box[0], 0)), int(max(box[1], 0))
    x2, y2 = int(min(np.ceil(box[2]), width)), int(min(np.ceil(box[3]), height))
    dims = HUE_BINS * SATURATION_BINS * VALUE_BINS
    if x2 <= x1 or y2 <= y1:
        return np.full(dims, 1.0 / np.sqrt(dims), np.float32)
    hsv = cv2.cvtColor(bgr[y1:y2, x1:x2], cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [HUE_BINS, SATURATION_BINS, VALUE_BINS], [0, 180, 0, 256, 0, 256])
    hist = hist.reshape(-1).astype(np.float32)
    norm = float(np.linalg.norm(hist))
    return hist / norm if norm > 0 else np.full(dims, 1.0 / np.sqrt(dims), np.float32)
