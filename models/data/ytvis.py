"""YouTube-VIS (2019 and 2021) annotations: loading with validation, the label
map, per-frame instances, frame reading, and the (key, reference) training pairs.

Augmentation is handed in: the pair dataset takes any ``PairAugmenter``
(``models.data.augment`` builds them) and imports no augmentation module.

Every problem found in an annotation file is a ``ValueError`` naming the file,
the video (and annotation, and frame where relevant) and what is wrong, so a
bad file stops a run at start-up instead of mid-epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import Frame, FrameTarget, hflip, keep_ratio_size, resize, to_tensors

Segmentation = dict[str, Any] | list[list[float]] | None


@dataclass(frozen=True)
class YTVISVideo:
    id: int
    width: int
    height: int
    file_names: tuple[str, ...]

    @property
    def length(self) -> int:
        return len(self.file_names)

    @property
    def name(self) -> str:
        """The video's folder, e.g. ``"0043f083b5"`` for ``"0043f083b5/00000.jpg"``."""
        return Path(self.file_names[0]).parent.as_posix() if self.file_names else str(self.id)

    def frame_paths(self, image_root: str | Path) -> list[Path]:
        return [Path(image_root) / name for name in self.file_names]


@dataclass(frozen=True)
class YTVISInstance:
    """One annotation: an object's track over its video, one entry per frame."""

    id: int
    video_id: int
    category_id: int
    iscrowd: bool
    segmentations: tuple[Segmentation, ...]
    bboxes: tuple[list[float] | None, ...] | None
    areas: tuple[float | None, ...] | None


@dataclass(frozen=True)
class FrameInstance:
    """An instance kept in one frame, box at the frame's original resolution."""

    annotation_id: int
    label: int
    iscrowd: bool
    box: tuple[float, float, float, float]  # x1 y1 x2 y2, pixel edges
    segmentation: Segmentation


def segmentation_to_rle(segmentation: Segmentation, height: int, width: int) -> dict[str, Any]:
    """Any YouTube-VIS segmentation (polygons, uncompressed or compressed RLE)
    as one compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def decode_mask(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(segmentation_to_rle(segmentation, height, width)).astype(np.uint8)


@dataclass
class YTVISAnnotations:
    """A parsed, validated annotation file. Labels are contiguous: category ids
    sorted map to 1..K (0 is background); ``category_names[label - 1]``."""

    path: Path
    videos: list[YTVISVideo]
    instances: dict[int, list[YTVISInstance]]  # by video id, file order
    category_ids: list[int]
    category_names: list[str]

    def __post_init__(self) -> None:
        self._videos_by_id = {video.id: video for video in self.videos}
        self.category_to_label = {cid: label for label, cid in enumerate(self.category_ids, start=1)}
        self.label_to_category = {label: cid for cid, label in self.category_to_label.items()}

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def categories(self) -> list[dict[str, Any]]:
        """``[{"id", "name"}]`` in label order (label = position + 1)."""
        return [{"id": cid, "name": name} for cid, name in zip(self.category_ids, self.category_names)]

    def video(self, video_id: int) -> YTVISVideo:
        return self._videos_by_id[video_id]

    def frame_instances(self, video_id: int, frame: int) -> list[FrameInstance]:
        """Instances present in a frame, with mmdet's filter: the box (the
        annotation's, else the mask's) must be at least 1x1 and the area > 0."""
        video = self.video(video_id)
        kept = []
        for instance in self.instances.get(video_id, []):
            segmentation = instance.segmentations[frame]
            if segmentation is None:
                continue
            bbox = instance.bboxes[frame] if instance.bboxes is not None else None
            area = instance.areas[frame] if instance.areas is not None else None
            if bbox is None or area is None:
                rle = segmentation_to_rle(segmentation, video.height, video.width)
                bbox = bbox if bbox is not None else mask_utils.toBbox(rle).tolist()
                area = area if area is not None else float(mask_utils.area(rle))
            x, y, w, h = bbox
            if area <= 0 or w < 1 or h < 1:
                continue
            # Clipped so that scaled boxes never leave the resized frame.
            box = (max(x, 0.0), max(y, 0.0), min(x + w, video.width), min(y + h, video.height))
            label = self.category_to_label[instance.category_id]
            kept.append(FrameInstance(instance.id, label, instance.iscrowd, box, segmentation))
        return kept


def _error(path: Path, problem: str, video: Any = None, annotation: Any = None, frame: int | None = None) -> ValueError:
    where = [f"video {video}"] if video is not None else []
    where += [f"annotation {annotation}"] if annotation is not None else []
    where += [f"frame {frame}"] if frame is not None else []
    return ValueError(f"{path}: {', '.join(where) + ': ' if where else ''}{problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field(path: Path, record: Any, key: str, kind: str, **where: Any) -> Any:
    if not isinstance(record, dict):
        raise _error(path, f"expected an object, got {type(record).__name__}", **where)
    if key not in record:
        raise _error(path, f"missing key {key!r}", **where)
    value = record[key]
    valid = {"int": _is_int, "list": lambda v: isinstance(v, list), "str": lambda v: isinstance(v, str)}[kind](value)
    if not valid:
        raise _error(path, f"{key!r} must be {kind}, got {value!r:.80}", **where)
    return value


def _parse_video(path: Path, record: Any) -> YTVISVideo:
    video_id = _field(path, record, "id", "int")
    width = _field(path, record, "width", "int", video=video_id)
    height = _field(path, record, "height", "int", video=video_id)
    file_names = _field(path, record, "file_names", "list", video=video_id)
    if width <= 0 or height <= 0:
        raise _error(path, f"size must be positive, got {width}x{height}", video=video_id)
    if not file_names or not all(isinstance(name, str) for name in file_names):
        raise _error(path, "'file_names' must be a non-empty list of strings", video=video_id)
    # "length" is optional (be liberal) but must agree when present.
    if "length" in record and record["length"] != len(file_names):
        raise _error(path, f"'length' is {record['length']} but there are {len(file_names)} file_names", video=video_id)
    return YTVISVideo(video_id, width, height, tuple(file_names))


def _check_segmentation(path: Path, segmentation: Any, height: int, width: int, **where: Any) -> None:
    if segmentation is None:
        return
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 or not all(map(_is_number, polygon)):
                raise _error(path, "a polygon must be a list of at least 3 (x, y) number pairs", **where)
        return
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise _error(path, "segmentation must be null, a list of polygons or an RLE with 'counts' and 'size'", **where)
    if list(segmentation["size"]) != [height, width]:
        raise _error(path, f"segmentation size {segmentation['size']} differs from the video's [{height}, {width}]", **where)
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(map(_is_int, counts)) or sum(counts) != height * width:
            raise _error(path, f"RLE counts must be integers summing to {height}*{width}", **where)
    elif not isinstance(counts, str):
        raise _error(path, "RLE counts must be a list of integers or a string", **where)


def _per_frame(path: Path, record: dict, key: str, length: int, check, required: bool, **where: Any):
    if key not in record and not required:
        return None
    values = _field(path, record, key, "list", **where)
    if len(values) != length:
        raise _error(path, f"{len(values)} {key} for a video of {length} frames", **where)
    for frame, value in enumerate(values):
        check(value, frame)
    return tuple(values)


def _parse_instance(path: Path, record: Any, videos: dict[int, YTVISVideo], category_ids: set[int]) -> YTVISInstance:
    annotation_id = _field(path, record, "id", "int")
    video_id = _field(path, record, "video_id", "int", annotation=annotation_id)
    where = {"video": video_id, "annotation": annotation_id}
    if video_id not in videos:
        raise _error(path, "points at an unknown video", **where)
    video = videos[video_id]
    category_id = _field(path, record, "category_id", "int", **where)
    if category_id not in category_ids:
        raise _error(path, f"unknown category_id {category_id}", **where)
    iscrowd = record.get("iscrowd", 0)
    if iscrowd not in (0, 1):
        raise _error(path, f"'iscrowd' must be 0 or 1, got {iscrowd!r}", **where)

    def check_box(box: Any, frame: int) -> None:
        if box is not None and not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            raise _error(path, f"bbox must be null or [x, y, w, h], got {box!r:.80}", frame=frame, **where)

    def check_area(area: Any, frame: int) -> None:
        if area is not None and not _is_number(area):
            raise _error(path, f"area must be null or a number, got {area!r:.80}", frame=frame, **where)

    def check_segmentation(segmentation: Any, frame: int) -> None:
        _check_segmentation(path, segmentation, video.height, video.width, frame=frame, **where)

    return YTVISInstance(
        annotation_id,
        video_id,
        category_id,
        bool(iscrowd),
        _per_frame(path, record, "segmentations", video.length, check_segmentation, True, **where),
        _per_frame(path, record, "bboxes", video.length, check_box, False, **where),
        _per_frame(path, record, "areas", video.length, check_area, False, **where),
    )


def _unique(path: Path, ids: list[int], what: str) -> None:
    seen: set[int] = set()
    for item_id in ids:
        if item_id in seen:
            raise _error(path, f"duplicate {what} id {item_id}")
        seen.add(item_id)


def load_ytvis(annotation_file: str | Path) -> YTVISAnnotations:
    """Parse and validate a YouTube-VIS 2019/2021 file. A valid/test split
    (no or empty ``annotations``) loads with no instances. Extra keys are ignored."""
    path = Path(annotation_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}") from None
    if not isinstance(data, dict):
        raise _error(path, "the top level must be an object")
    videos = [_parse_video(path, record) for record in _field(path, data, "videos", "list")]
    _unique(path, [video.id for video in videos], "video")
    categories = _field(path, data, "categories", "list")
    _unique(path, [_field(path, c, "id", "int") for c in categories], "category")
    names = {c["id"]: _field(path, c, "name", "str") for c in categories}
    by_id = {video.id: video for video in videos}
    records = data.get("annotations") or []
    if not isinstance(records, list):
        raise _error(path, "'annotations' must be a list")
    instances = [_parse_instance(path, record, by_id, set(names)) for record in records]
    _unique(path, [instance.id for instance in instances], "annotation")
    by_video: dict[int, list[YTVISInstance]] = {}
    for instance in instances:
        by_video.setdefault(instance.video_id, []).append(instance)
    category_ids = sorted(names)
    return YTVISAnnotations(path, videos, by_video, category_ids, [names[c] for c in category_ids])


def read_frame(path: str | Path, video_id: int | None = None) -> np.ndarray:
    """A frame as RGB uint8 (H, W, 3); a missing or undecodable file is an
    error naming the file (and the video)."""
    path = Path(path)
    of_video = f" of video {video_id}" if video_id is not None else ""
    if not path.is_file():
        raise FileNotFoundError(f"frame file {path}{of_video} is missing")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"frame file {path}{of_video} cannot be decoded as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def iter_video_frames(video: YTVISVideo, image_root: str | Path) -> Iterator[np.ndarray]:
    """A video's frames in order, RGB uint8 at original resolution (for inference)."""
    for path in video.frame_paths(image_root):
        yield read_frame(path, video.id)


class PairAugmenter(Protocol):
    """What the pair dataset calls on each (key, reference) pair after resize
    and flip: numpy frames in, numpy frames out, every random draw from
    ``rng`` (the sample's generator after its pair draw)."""

    def __call__(self, key: Frame, reference: Frame, rng: np.random.Generator, video_id: int,
                 flip: bool) -> tuple[Frame, Frame]: ...


class YTVISPairs(Dataset):
    """(key frame, reference frame) training pairs, MaskTrackRCNN style.

    One sample per frame with at least one kept non-crowd instance. Its
    reference is drawn uniformly from the video's other such frames (within
    ``frame_range`` of the key when given), or is the key itself when there is
    none. Both frames are keep-ratio resized to fit ``scale`` and flipped
    together with probability ``flip_prob``.

    Draws are a pure function of (``seed``, epoch, index), so DDP ranks and
    resumed runs see the same pairs; call ``set_epoch`` before each epoch
    (with persistent DataLoader workers, recreate the loader so they see it).

    ``__getitem__`` returns (key_image, key_target, reference_image,
    reference_target): images float32 RGB [3, H, W] in [0, 1], neither
    normalised nor padded (the model's transform does both); targets as in
    ``models.data.transforms`` (torch tensors), ``instance_ids`` being the
    annotation ids, crowd instances only in ``ignore_boxes``.

    With an ``augmenter`` a pair is augmented after resize and flip with the
    rest of the sample's random stream, so the pair draws stay the same as
    without it.
    """

    def __init__(
        self,
        annotations: YTVISAnnotations | str | Path,
        image_root: str | Path,
        scale: tuple[int, int] = (640, 360),
        flip_prob: float = 0.5,
        frame_range: int | None = None,
        seed: int = 0,
        augmenter: PairAugmenter | None = None,
    ) -> None:
        self.annotations = annotations if isinstance(annotations, YTVISAnnotations) else load_ytvis(annotations)
        self.image_root = Path(image_root)
        self.scale = scale
        self.flip_prob = flip_prob
        self.frame_range = frame_range
        self.seed = seed
        self.epoch = 0
        self.annotated_frames: dict[int, list[int]] = {
            video.id: [f for f in range(video.length) if self._has_valid_instance(video.id, f)]
            for video in self.annotations.videos
        }
        self.samples = [(video_id, f) for video_id, frames in self.annotated_frames.items() for f in frames]
        if not self.samples:
            raise ValueError(f"{self.annotations.path}: no frame has a non-crowd instance (a valid/test split?)")
        self.augmenter = augmenter

    def _has_valid_instance(self, video_id: int, frame: int) -> bool:
        return any(not i.iscrowd for i in self.annotations.frame_instances(video_id, frame))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def reference_candidates(self, video_id: int, key: int) -> list[int]:
        return [
            f
            for f in self.annotated_frames[video_id]
            if f != key and (self.frame_range is None or abs(f - key) <= self.frame_range)
        ]

    def draw(self, index: int) -> tuple[int, int, int, bool]:
        """(video id, key frame, reference frame, flip) of sample ``index`` this epoch."""
        return self.draw_with_rng(index)[0]

    def draw_with_rng(self, index: int) -> tuple[tuple[int, int, int, bool], np.random.Generator]:
        """``draw(index)`` and the sample's generator after it (for augmentation)."""
        rng = np.random.default_rng((self.seed, self.epoch, index))
        video_id, key = self.samples[index]
        candidates = self.reference_candidates(video_id, key)
        reference = candidates[rng.integers(len(candidates))] if candidates else key
        return (video_id, key, reference, bool(rng.random() < self.flip_prob)), rng

    def load_frame(self, video_id: int, frame: int, flip: bool) -> tuple[Tensor, dict[str, Tensor]]:
        return to_tensors(*self.frame_arrays(video_id, frame, flip))

    def frame_arrays(self, video_id: int, frame: int, flip: bool) -> Frame:
        """A frame and its target resized and flipped, as numpy arrays."""
        video = self.annotations.video(video_id)
        path = self.image_root / video.file_names[frame]
        image = read_frame(path, video_id)
        if image.shape[:2] != (video.height, video.width):
            raise ValueError(
                f"frame file {path} of video {video_id} is {image.shape[1]}x{image.shape[0]}, "
                f"the annotations say {video.width}x{video.height}"
            )
        image, target = resize(image, self._target(video, frame), keep_ratio_size(video.width, video.height, self.scale))
        if flip:
            image, target = hflip(image, target)
        return image, target

    def _target(self, video: YTVISVideo, frame: int) -> FrameTarget:
        instances = self.annotations.frame_instances(video.id, frame)
        kept = [i for i in instances if not i.iscrowd]
        masks = [decode_mask(i.segmentation, video.height, video.width) for i in kept]
        return {
            "boxes": np.array([i.box for i in kept], dtype=np.float32).reshape(-1, 4),
            "labels": np.array([i.label for i in kept], dtype=np.int64),
            "masks": np.stack(masks) if masks else np.zeros((0, video.height, video.width), np.uint8),
            "instance_ids": np.array([i.annotation_id for i in kept], dtype=np.int64),
            "ignore_boxes": np.array([i.box for i in instances if i.iscrowd], dtype=np.float32).reshape(-1, 4),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor], Tensor, dict[str, Tensor]]:
        (video_id, key, reference, flip), rng = self.draw_with_rng(index)
        key_frame = self.frame_arrays(video_id, key, flip)
        reference_frame = self.frame_arrays(video_id, reference, flip)
        if self.augmenter is not None:
            key_frame, reference_frame = self.augmenter(key_frame, reference_frame, rng, video_id, flip)
        return (*to_tensors(*key_frame), *to_tensors(*reference_frame))


def collate_pairs(batch: list[tuple]) -> tuple[list[Tensor], list[dict], list[Tensor], list[dict]]:
    """Batch of pairs -> (key_images, key_targets, reference_images, reference_targets)."""
    key_images, key_targets, reference_images, reference_targets = zip(*batch)
    return list(key_images), list(key_targets), list(reference_images), list(reference_targets)
