"""Backgrounds for augmented training pairs: procedural textures, photos that
were checked to contain no person, and each video's empty scene.

Owns the people-free photo lists (``*.sha256`` files in ``sha256sum``
format, one checked photo a line) and the rule that a photo not on a list is
refused: a person in an unlabelled background teaches the model that people
are background. Owns the empty scene too: a per-pixel temporal median that
skips every pixel a person may cover, and fills by inpainting the pixels that
were almost never free, so a person who stands still does not stay in it.

May import ``transforms`` and ``ytvis``; nothing else of the project.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from .ytvis import YTVISAnnotations, YTVISInstance, YTVISVideo, decode_mask, read_frame

log = logging.getLogger(__name__)

TEXTURES = ("noise", "gradient", "stripes", "checker", "blurred_noise")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Photos checked by eye to show no person; by content hash, so another file of the same name is not trusted.
PEOPLE_FREE_LIST = Path(__file__).with_name("people_free_photos.sha256")
FOLDER_LIST_NAME = "people_free.sha256"  # a background folder's own list, read when present
PHOTO_CACHE_SIZE = 8  # decoded photos kept per process: a DataLoader worker holds this many
# Labels are tighter than people: feet, hair and shadows stick out of teacher masks.
SCENE_MARGIN = 0.15  # fraction of the box height added around each person
# A pixel needs this share of its samples free of people (at least 1, and never
# more than MIN_CLEAN_SAMPLES) to be trusted: a median of one or two frames is
# whatever stood there then; five keep their median when two show a missed person.
MIN_CLEAN_FRACTION = 0.1
MIN_CLEAN_SAMPLES = 5
# Pixels that are too rarely free get a second look over this many frames (their
# values only, so it costs little memory) before inpainting: a busy crossing is
# free in some frame more often than a work station is.
MAX_SCENE_FRAMES = 200
INPAINT_RADIUS = 5


class PeopleFreeListError(ValueError):
    """A people-free list that cannot be read; the message names the file and line."""


def procedural_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random texture (noise, gradient, stripes, checker, blurred noise) between two random colours."""
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == "noise":
        t = rng.random((height, width), dtype=np.float32)
    elif kind == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * along / rng.uniform(4, 48))
        t = (t > 0.5).astype(np.float32) if rng.random() < 0.5 else t
    elif kind == "checker":
        cell = rng.uniform(4, 48)
        across = yy * math.cos(angle) - xx * math.sin(angle)
        t = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    else:
        step = int(rng.integers(4, 32))
        coarse = rng.random((max(2, height // step), max(2, width // step)), dtype=np.float32)
        t = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    image = colours[0] + (colours[1] - colours[0]) * t[..., None]
    image += rng.normal(0, rng.uniform(0, 8), (height, width, 1)).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --- photos ---

def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_people_free_list(path: str | Path) -> dict[str, str]:
    """``{sha256: name}`` of a list: ``<sha256>  <file name>  [# note]`` a line,
    as ``sha256sum`` writes it; blank lines and ``#`` lines are comments."""
    path = Path(path)
    if not path.is_file():
        raise PeopleFreeListError(f"people-free list {path} does not exist")
    entries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        digest, _, name = text.partition(" ")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()) or not name.strip():
            raise PeopleFreeListError(f"{path}: line {number}: expected '<sha256>  <file name>', got {line!r}")
        entries[digest.lower()] = name.strip().lstrip("*")
    return entries


class PhotoBackgrounds:
    """The photos of a folder that a people-free list covers, cropped to a frame's shape on demand.

    Lists read: the shipped ``people_free_photos.sha256``, the folder's own
    ``people_free.sha256`` when present, and ``people_free_lists``. Any other
    image is refused (named in ``refused``, counted in a logged warning).
    Unreadable images and images under ``min_side`` pixels are skipped.
    """

    def __init__(self, folder: str | Path, people_free_lists: tuple[str | Path, ...] = (), min_side: int = 64) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"background folder {self.folder} does not exist")
        lists = [PEOPLE_FREE_LIST, *map(Path, people_free_lists)]
        if (self.folder / FOLDER_LIST_NAME).is_file():
            lists.append(self.folder / FOLDER_LIST_NAME)
        allowed: dict[str, str] = {}
        for path in lists:
            allowed.update(read_people_free_list(path))
        self.photos: list[Path] = []
        self.refused: list[str] = []
        candidates = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in candidates:
            if file_sha256(path) not in allowed:
                self.refused.append(path.name)
                continue
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None and min(image.shape[:2]) >= min_side:
                self.photos.append(path)
        if self.refused:
            named = ", ".join(self.refused[:8]) + (" ..." if len(self.refused) > 8 else "")
            log.warning("%d of %d photos in %s refused: not on a people-free list (%s)", len(self.refused),
                        len(candidates), self.folder, named)
        if not self.photos:
            raise ValueError(f"no readable image of at least {min_side} px on a people-free list in background "
                             f"folder {self.folder} ({len(self.refused)} refused; list checked photos in "
                             f"{self.folder / FOLDER_LIST_NAME})")
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()

    def _load(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            self._cache[path] = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if len(self._cache) > PHOTO_CACHE_SIZE:
                self._cache.popitem(last=False)
        return self._cache[path]

    def crop(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random photo's random crop (half to all of the largest window of
        the frame's shape), resized to the frame and mirrored half the time."""
        photo = self._load(self.photos[int(rng.integers(len(self.photos)))])
        ph, pw = photo.shape[:2]
        crop_w = min(pw, ph * width / height) * rng.uniform(0.5, 1.0)
        crop_w, crop_h = max(1, int(crop_w)), max(1, int(crop_w * height / width))
        x, y = int(rng.integers(pw - crop_w + 1)), int(rng.integers(ph - crop_h + 1))
        background = cv2.resize(photo[y:y + crop_h, x:x + crop_w], (width, height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(background[:, ::-1]) if rng.random() < 0.5 else background


# --- the empty scene ---

def _box_region(box: list[float] | tuple[float, ...], margin: float, height: int, width: int) -> np.ndarray:
    """A COCO box [x, y, w, h] grown by ``margin`` of its height on every side, as a mask."""
    x, y, w, h = box
    pad = margin * h
    x1, y1 = max(0, math.floor(x - pad)), max(0, math.floor(y - pad))
    x2, y2 = min(width, math.ceil(x + w + pad)), min(height, math.ceil(y + h + pad))
    region = np.zeros((height, width), bool)
    region[y1:y2, x1:x2] = True
    return region


def person_region(instance: YTVISInstance, frame: int, video: YTVISVideo, margin: float) -> np.ndarray:
    """Where ``instance`` may be in ``frame``: its mask and grown box; in a gap
    inside its track (a label the teacher missed), the grown boxes of its
    labelled frames on either side; nothing outside its track."""
    height, width = video.height, video.width
    labelled = [f for f, s in enumerate(instance.segmentations) if s is not None]
    if not labelled or not labelled[0] <= frame <= labelled[-1]:
        return np.zeros((height, width), bool)

    def at(f: int) -> np.ndarray:
        mask = decode_mask(instance.segmentations[f], height, width).astype(bool)
        box = instance.bboxes[f] if instance.bboxes is not None and instance.bboxes[f] is not None else None
        if box is None:
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if not len(rows):
                return mask
            box = [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]
        return mask | _box_region(box, margin, height, width)

    if instance.segmentations[frame] is not None:
        return at(frame)
    before = max(f for f in labelled if f < frame)
    after = min(f for f in labelled if f > frame)
    return at(before) | at(after)


def masked_median(images: np.ndarray, covered: np.ndarray, min_clean: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the median of ``images`` [F, H, W, 3] uint8 over the frames
    where ``covered`` [F, H, W] is False; and the pixels with fewer than
    ``min_clean`` such frames (their value is not to be trusted)."""
    # Covered pixels become 256 and sort last: the median of the first ``count`` values skips them.
    stack = np.where(covered[..., None], np.uint16(256), images.astype(np.uint16))
    stack.sort(axis=0)
    count = (stack < 256).sum(0)
    low = np.take_along_axis(stack, (np.maximum(count - 1, 0) // 2)[None], 0)[0].astype(np.float32)
    high = np.take_along_axis(stack, (np.maximum(count, 1) // 2)[None], 0)[0].astype(np.float32)
    median = np.where(count > 0, (low + high) / 2, 0)
    return np.rint(np.clip(median, 0, 255)).astype(np.uint8), count[..., 0] < min_clean


class EmptyScenes:
    """Each video without its people at original resolution, computed on
    first use and kept: the median over ``frames`` evenly spaced frames of the
    pixels no person region (``person_region``) covers. Where fewer than
    ``min_clean_fraction`` of them (at least 1, at most ``MIN_CLEAN_SAMPLES``)
    are free, the same over up to ``MAX_SCENE_FRAMES`` frames; where that is
    still too few, inpainted."""

    def __init__(self, annotations: YTVISAnnotations, image_root: str | Path, frames: int = 25,
                 margin: float = SCENE_MARGIN, min_clean_fraction: float = MIN_CLEAN_FRACTION) -> None:
        if frames < 1:
            raise ValueError(f"empty scene: frames must be >= 1, got {frames}")
        self.annotations = annotations
        self.image_root = Path(image_root)
        self.frames = frames
        self.margin = margin
        self.min_clean_fraction = min_clean_fraction
        self._scenes: dict[int, np.ndarray] = {}
        self.inpainted: dict[int, float] = {}  # video id -> share of pixels inpainted

    def __call__(self, video_id: int) -> np.ndarray:
        if video_id not in self._scenes:
            self._scenes[video_id] = self._compute(video_id)
        return self._scenes[video_id]

    def _samples(self, video: YTVISVideo, count: int, pixels: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(images, covered) of ``count`` evenly spaced frames; only at ``pixels``
        (a boolean map) when given, as [F, P, 3] and [F, P]."""
        frames = np.unique(np.linspace(0, video.length - 1, min(count, video.length)).round()).astype(int)
        images, covered = [], []
        for frame in frames:
            image = read_frame(self.image_root / video.file_names[frame], video.id)
            region = np.zeros((video.height, video.width), bool)
            for instance in self.annotations.instances.get(video.id, []):  # crowds hide people too
                region |= person_region(instance, frame, video, self.margin)
            images.append(image if pixels is None else image[pixels])
            covered.append(region if pixels is None else region[pixels])
        return np.stack(images), np.stack(covered)

    def _min_clean(self, samples: int) -> int:
        return max(1, min(math.ceil(self.min_clean_fraction * samples), MIN_CLEAN_SAMPLES))

    def _compute(self, video_id: int) -> np.ndarray:
        video = self.annotations.video(video_id)
        images, covered = self._samples(video, self.frames)
        scene, unsure = masked_median(images, covered, self._min_clean(len(images)))
        if unsure.any() and video.length > len(images):
            more_images, more_covered = self._samples(video, MAX_SCENE_FRAMES, unsure)
            values, still_unsure = masked_median(more_images[:, :, None], more_covered[:, :, None],
                                                 self._min_clean(len(more_images)))
            scene[unsure] = values[:, 0]
            unsure[unsure] = still_unsure[:, 0]
        self.inpainted[video_id] = float(unsure.mean())
        if unsure.any():
            scene = cv2.inpaint(scene, unsure.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA)
        return scene


class Backgrounds:
    """Every kind of new background a pair can get, at the frame's size:
    ``"empty_scene"`` (mirrored with the pair), ``"photo"``, ``"texture"``;
    without empty scenes or photos, those kinds are not offered."""

    def __init__(self, empty_scenes: EmptyScenes | None = None, photos: PhotoBackgrounds | None = None) -> None:
        self.empty_scenes = empty_scenes
        self.photos = photos

    def odds(self, weights: dict[str, float]) -> dict[str, float]:
        """``weights`` by kind normalised, zero for the kinds there is nothing of."""
        missing = {"photo": self.photos is None, "empty_scene": self.empty_scenes is None}
        usable = {kind: float(w) for kind, w in weights.items() if not missing.get(kind, False)}
        total = sum(usable.values())
        if total <= 0:
            raise ValueError(f"background weights {weights} leave no background to choose")
        return {kind: usable.get(kind, 0.0) / total for kind in weights}

    def draw(self, rng: np.random.Generator, kind: str, video_id: int, flip: bool, height: int, width: int
             ) -> np.ndarray:
        if kind == "empty_scene" and self.empty_scenes is not None:
            scene = cv2.resize(self.empty_scenes(video_id), (width, height), interpolation=cv2.INTER_LINEAR)
            return np.ascontiguousarray(scene[:, ::-1]) if flip else scene
        if kind == "photo" and self.photos is not None:
            return self.photos.crop(rng, height, width)
        if kind == "texture":
            return procedural_texture(rng, height, width)
        raise ValueError(f"no background of kind {kind!r}")
