"""Copy-paste augmentation of (key, reference) training pairs, and its preview
command ``python -m models.data.copy_paste``.

Owns the person bank (cutouts of the training annotations, decoded on demand),
the backgrounds (the frame itself, the video's empty scene, photos from a
folder, procedural textures), compositing with feathered edges, the occlusion
bookkeeping that keeps every mask, box and identity valid, and the photometric
jitter. Everything a pair gets is drawn from the sample's numpy Generator, so
an augmented pair is a pure function of (dataset seed, epoch, index).

Frames and targets are the numpy ones of ``models.data.transforms`` (after
resize and flip, before ``to_tensors``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .transforms import FrameTarget
from .ytvis import YTVISAnnotations, decode_mask, read_frame

Frame = tuple[np.ndarray, FrameTarget]  # RGB uint8 (H, W, 3) and its target
BACKGROUNDS = ("frame", "empty_scene", "photo", "texture")
TEXTURES = ("noise", "gradient", "stripes", "checker", "blurred_noise")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class CopyPaste:
    """Settings of the augmentation; ``bind`` ties them to a training split.

    ``background_weights`` are the odds of (own frame, empty scene, photo,
    texture); the photo share goes to the others when there is no
    ``background_dir``. Photometric jitter draws one setting per pair and
    perturbs it by ``reference_jitter`` for the reference frame, as a camera's
    exposure drifts a little between two moments.
    """

    prob: float = 0.5  # chance that a pair is augmented at all
    max_paste: int = 3
    background_dir: str | Path | None = None
    background_weights: tuple[float, float, float, float] = (0.3, 0.3, 0.2, 0.2)
    min_source_height: int = 24  # person bank: source box height, pixels
    min_source_fill: float = 0.2  # person bank: mask area / box area
    min_source_area: int = 150
    scale_range: tuple[float, float] = (0.6, 1.5)
    min_paste_height: int = 24
    max_paste_height: float = 0.9  # fraction of the frame height
    max_shift: float = 0.1  # key -> reference displacement, fraction of the person's height
    reference_scale: float = 0.05  # key -> reference size change, fraction
    feather: float = 1.0  # Gaussian sigma of pasted edges, pixels
    person_jitter: float = 0.2  # brightness and contrast of a pasted person, +-fraction
    min_visible_fraction: float = 0.3
    min_visible_pixels: int = 20
    median_frames: int = 25
    photometric: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.3
    channel_gain: float = 0.05
    reference_jitter: float = 0.02
    min_background_side: int = 64

    def __post_init__(self) -> None:
        problems = [
            (not 0.0 <= self.prob <= 1.0, f"prob must be in [0, 1], got {self.prob}"),
            (self.max_paste < 0, f"max_paste must be >= 0, got {self.max_paste}"),
            (len(self.background_weights) != 4 or min(self.background_weights) < 0 or sum(self.background_weights) <= 0,
             f"background_weights must be 4 non-negative numbers, not all 0, got {self.background_weights}"),
            (not 0 < self.scale_range[0] <= self.scale_range[1], f"bad scale_range {self.scale_range}"),
            (not 0.0 <= self.min_visible_fraction <= 1.0, "min_visible_fraction must be in [0, 1]"),
            (self.feather < 0 or self.median_frames < 1, "feather must be >= 0 and median_frames >= 1"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(f"copy-paste: {message}")
        if self.background_dir is not None and not Path(self.background_dir).is_dir():
            raise ValueError(f"copy-paste: background folder {self.background_dir} does not exist")

    def bind(self, annotations: YTVISAnnotations, image_root: str | Path) -> CopyPasteAugmenter:
        return CopyPasteAugmenter(self, annotations, image_root)


@dataclass
class Person:
    """A cutout ready to paste: its pixels, the feathered alpha used to blend
    them and the binary mask that becomes the label."""

    image: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) uint8
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    label: int


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """[N, 4] float32 x1 y1 x2 y2 (pixel edges) of non-empty masks."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
        boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


def feathered(mask: np.ndarray, sigma: float) -> np.ndarray:
    alpha = mask.astype(np.float32)
    return cv2.GaussianBlur(alpha, (0, 0), sigma) if sigma > 0 else alpha


def paste_person(image: np.ndarray, target: FrameTarget, person: Person, x: int, y: int,
                 instance_id: int) -> Frame:
    """Blend ``person`` with its top-left corner at (x, y) (parts outside the
    frame are cut off) and add it on top: it occludes the instances below."""
    height, width = image.shape[:2]
    h, w = person.mask.shape
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    mask = np.zeros((height, width), np.uint8)
    if x1 < x2 and y1 < y2:  # else nothing shows: an empty mask, which ``settle`` drops
        source = np.s_[y1 - y:y2 - y, x1 - x:x2 - x]
        alpha = person.alpha[source][..., None]
        region = image[y1:y2, x1:x2].astype(np.float32)
        image = image.copy()
        image[y1:y2, x1:x2] = np.clip(np.rint(alpha * person.image[source] + (1 - alpha) * region), 0, 255)
        mask[y1:y2, x1:x2] = person.mask[source]
    masks = target["masks"] * (1 - mask)[None]
    return image, {
        **target,
        "masks": np.concatenate([masks, mask[None]]),
        "labels": np.append(target["labels"], np.int64(person.label)),
        "instance_ids": np.append(target["instance_ids"], np.int64(instance_id)),
        "boxes": np.concatenate([target["boxes"], np.zeros((1, 4), np.float32)]),
    }


def settle(target: FrameTarget, area_before: np.ndarray, min_fraction: float, min_pixels: int) -> FrameTarget:
    """Drop the instances that pasting hid (visible area below ``min_fraction``
    of ``area_before``, or below ``min_pixels`` once anything was hidden) and
    set every box to its mask's bounding box."""
    visible = target["masks"].reshape(len(target["masks"]), -1).sum(1)
    hidden = visible < area_before
    drop = (visible == 0) | (hidden & ((visible < min_fraction * area_before) | (visible < min_pixels)))
    keep = ~drop
    masks = target["masks"][keep]
    return {**target, "masks": masks, "labels": target["labels"][keep],
            "instance_ids": target["instance_ids"][keep], "boxes": boxes_from_masks(masks)}


def replace_background(image: np.ndarray, masks: np.ndarray, background: np.ndarray, feather: float) -> np.ndarray:
    """The frame's people (``masks``) over ``background``: their pixels stay
    exactly as they are, a feathered rim outside the masks blends the two."""
    union = masks.any(0).astype(np.float32) if len(masks) else np.zeros(image.shape[:2], np.float32)
    alpha = np.maximum(union, feathered(union, feather))[..., None]
    blended = alpha * image.astype(np.float32) + (1 - alpha) * background.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def adjust_colour(image: np.ndarray, brightness: float, contrast: float, saturation: float,
                  gains: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    grey = x @ _LUMA
    x = grey[..., None] + saturation * (x - grey[..., None])
    mean = float(grey.mean())
    x = (mean + contrast * (x - mean)) * brightness * gains
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


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


class CopyPasteAugmenter:
    """``CopyPaste`` bound to a split: ``(key, reference) = augmenter(key,
    reference, rng, video_id, flip)``. Binding only lists the bank's instance
    references (no mask is decoded) and checks the photo folder; cutouts and
    empty scenes are computed when first needed and kept in memory."""

    def __init__(self, config: CopyPaste, annotations: YTVISAnnotations, image_root: str | Path) -> None:
        self.config = config
        self.annotations = annotations
        self.image_root = Path(image_root)
        all_ids = [i.id for instances in annotations.instances.values() for i in instances]
        self.first_new_id = max(all_ids, default=0) + 1
        self.bank = self._bank_references()
        self.photos = self._usable_photos() if config.background_dir is not None else []
        weights = np.array(config.background_weights, np.float64)
        weights[2] = weights[2] if self.photos else 0.0
        if weights.sum() <= 0:
            raise ValueError("copy-paste: background_weights leave no background to choose")
        self.background_odds = weights / weights.sum()
        self._empty_scenes: dict[int, np.ndarray] = {}
        self._people: OrderedDict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, int] | None] = OrderedDict()
        self._photo_cache: OrderedDict[Path, np.ndarray] = OrderedDict()

    # --- sources ---

    def _bank_references(self) -> list[tuple[int, int, int]]:
        """(video id, instance position, frame) of every non-crowd instance that
        its stored box and area say is big enough (checked again when decoded)."""
        c = self.config
        references = []
        for video_id, instances in self.annotations.instances.items():
            for position, instance in enumerate(instances):
                if instance.iscrowd:
                    continue
                for frame, segmentation in enumerate(instance.segmentations):
                    box = instance.bboxes[frame] if instance.bboxes is not None else None
                    area = instance.areas[frame] if instance.areas is not None else None
                    if segmentation is None or (box is not None and area is not None and (
                            box[3] < c.min_source_height or area < c.min_source_area
                            or area < c.min_source_fill * box[2] * box[3])):
                        continue
                    references.append((video_id, position, frame))
        return references

    def _usable_photos(self) -> list[Path]:
        folder = Path(self.config.background_dir)
        usable = []
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None and min(image.shape[:2]) >= self.config.min_background_side:
                usable.append(path)
        if not usable:
            raise ValueError(f"copy-paste: no readable image of at least {self.config.min_background_side} px "
                             f"in background folder {folder}")
        return usable

    def _source_person(self, reference: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(image crop, mask crop, label) at the source's resolution, or None
        when the decoded mask fails the bank's minimums."""
        if reference in self._people:
            self._people.move_to_end(reference)
            return self._people[reference]
        c = self.config
        video_id, position, frame = reference
        video = self.annotations.video(video_id)
        instance = self.annotations.instances[video_id][position]
        mask = decode_mask(instance.segmentations[frame], video.height, video.width)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        found = None
        if len(rows):
            y1, y2, x1, x2 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            area = int(mask.sum())
            if y2 - y1 >= c.min_source_height and area >= c.min_source_area and area >= c.min_source_fill * (
                    (y2 - y1) * (x2 - x1)):
                image = read_frame(self.image_root / video.file_names[frame], video_id)
                if image.shape[:2] != mask.shape:
                    raise ValueError(f"frame {video.file_names[frame]} of video {video_id} is not "
                                     f"{video.width}x{video.height} as the annotations say")
                margin = max(2, round(0.1 * max(y2 - y1, x2 - x1)))
                y1, x1 = max(0, y1 - margin), max(0, x1 - margin)
                y2, x2 = min(video.height, y2 + margin), min(video.width, x2 + margin)
                found = (image[y1:y2, x1:x2].copy(), mask[y1:y2, x1:x2].copy(),
                         self.annotations.category_to_label[instance.category_id])
        self._people[reference] = found
        if len(self._people) > 256:
            self._people.popitem(last=False)
        return found

    def empty_scene(self, video_id: int) -> np.ndarray:
        """The video without its people at original resolution: per pixel, the
        median of evenly spaced frames where no annotation covers it (all of
        them where every frame does)."""
        if video_id in self._empty_scenes:
            return self._empty_scenes[video_id]
        video = self.annotations.video(video_id)
        frames = np.unique(np.linspace(0, video.length - 1, min(self.config.median_frames, video.length)).round())
        images = np.stack([read_frame(self.image_root / video.file_names[f], video_id) for f in frames.astype(int)])
        covered = np.zeros(images.shape[:3], bool)
        for i, frame in enumerate(frames.astype(int)):
            for instance in self.annotations.instances.get(video_id, []):
                if instance.segmentations[frame] is not None:
                    covered[i] |= decode_mask(instance.segmentations[frame], video.height, video.width).astype(bool)
        # Covered pixels become 256 and sort last: the median of the first ``count`` values skips them.
        stack = np.where(covered[..., None], np.uint16(256), images.astype(np.uint16))
        stack.sort(axis=0)
        count = (stack < 256).sum(0)
        low = np.take_along_axis(stack, (np.maximum(count - 1, 0) // 2)[None], 0)[0].astype(np.float32)
        high = np.take_along_axis(stack, (count // 2)[None], 0)[0].astype(np.float32)
        scene = np.where(count > 0, (low + high) / 2, np.median(images, axis=0))
        self._empty_scenes[video_id] = np.rint(scene).astype(np.uint8)
        return self._empty_scenes[video_id]

    def _photo(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        path = self.photos[int(rng.integers(len(self.photos)))]
        if path not in self._photo_cache:
            self._photo_cache[path] = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if len(self._photo_cache) > 8:
                self._photo_cache.popitem(last=False)
        photo = self._photo_cache[path]
        ph, pw = photo.shape[:2]
        crop_w = min(pw, ph * width / height) * rng.uniform(0.5, 1.0)
        crop_w, crop_h = max(1, int(crop_w)), max(1, int(crop_w * height / width))
        x, y = int(rng.integers(pw - crop_w + 1)), int(rng.integers(ph - crop_h + 1))
        background = cv2.resize(photo[y:y + crop_h, x:x + crop_w], (width, height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(background[:, ::-1]) if rng.random() < 0.5 else background

    def background(self, rng: np.random.Generator, kind: str, video_id: int, flip: bool,
                   height: int, width: int) -> np.ndarray | None:
        """A new background at the frame's size, or None to keep the frame's own."""
        if kind == "empty_scene":
            scene = cv2.resize(self.empty_scene(video_id), (width, height), interpolation=cv2.INTER_LINEAR)
            return np.ascontiguousarray(scene[:, ::-1]) if flip else scene
        if kind == "photo":
            return self._photo(rng, height, width)
        if kind == "texture":
            return procedural_texture(rng, height, width)
        return None

    # --- people ---

    def _draw_person(self, rng: np.random.Generator, frame_shape: tuple[int, int], frame_scale: float
                     ) -> tuple[Person, Person] | None:
        """One bank person as it appears in the key and in the reference frame."""
        c = self.config
        for _ in range(10):  # a reference can fail the minimums once decoded
            source = self._source_person(self.bank[int(rng.integers(len(self.bank)))])
            if source is not None:
                break
        else:
            return None
        image, mask, label = source
        height, width = frame_shape
        rows = np.flatnonzero(mask.any(1))
        mask_height = rows[-1] + 1 - rows[0]
        scale = frame_scale * rng.uniform(*c.scale_range)
        scale = max(scale, c.min_paste_height / mask_height)
        scale = min(scale, c.max_paste_height * height / mask_height, 0.9 * width / mask.shape[1])
        flip = rng.random() < 0.5
        gain, contrast = 1 + rng.uniform(-c.person_jitter, c.person_jitter, 2)
        reference_scale = scale * (1 + rng.uniform(-c.reference_scale, c.reference_scale))
        people = []
        for s in (scale, reference_scale):
            size = (max(1, round(mask.shape[1] * s)), max(1, round(mask.shape[0] * s)))
            patch = cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            patch_mask = (cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5)
            if flip:
                patch, patch_mask = patch[:, ::-1], patch_mask[:, ::-1]
            if not patch_mask.any():
                return None
            mean = patch[patch_mask].astype(np.float32).mean(0)
            patch = np.clip(np.rint((mean + contrast * (patch - mean)) * gain), 0, 255).astype(np.uint8)
            people.append(Person(patch, patch_mask.astype(np.uint8), feathered(patch_mask, c.feather), label))
        return people[0], people[1]

    def _place(self, rng: np.random.Generator, key: Person, reference: Person, height: int, width: int
               ) -> tuple[tuple[int, int], tuple[int, int]]:
        """Top-left corners of the key and reference patches: each mask inside
        its frame, the reference displaced by up to ``max_shift`` heights."""
        def bounds(person: Person) -> tuple[int, int, int, int]:
            rows, cols = np.flatnonzero(person.mask.any(1)), np.flatnonzero(person.mask.any(0))
            return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1

        kx1, ky1, kx2, ky2 = bounds(key)
        mx, my = int(rng.integers(width - (kx2 - kx1) + 1)), int(rng.integers(height - (ky2 - ky1) + 1))
        shift = rng.uniform(-1, 1, 2) * self.config.max_shift * (ky2 - ky1)
        rx1, ry1, rx2, ry2 = bounds(reference)
        centre = np.array([mx + (kx2 - kx1) / 2, my + (ky2 - ky1) / 2]) + shift
        rx = int(np.clip(round(centre[0] - (rx2 - rx1) / 2), 0, width - (rx2 - rx1)))
        ry = int(np.clip(round(centre[1] - (ry2 - ry1) / 2), 0, height - (ry2 - ry1)))
        return (mx - kx1, my - ky1), (rx - rx1, ry - ry1)

    # --- the pair ---

    def __call__(self, key: Frame, reference: Frame, rng: np.random.Generator, video_id: int,
                 flip: bool) -> tuple[Frame, Frame]:
        key, reference, _ = self.augment(key, reference, rng, video_id, flip)
        return key, reference

    def augment(self, key: Frame, reference: Frame, rng: np.random.Generator, video_id: int,
                flip: bool) -> tuple[Frame, Frame, dict]:
        """The augmented pair and what was done: ``{"background", "pasted"}``
        (pasted: the new instance ids, in paste order), or ``{}`` when skipped.
        Crowd regions (``ignore_boxes``) are left as they are."""
        c = self.config
        if rng.random() >= c.prob:
            return key, reference, {}
        frames = [list(key), list(reference)]
        height, width = key[0].shape[:2]
        video = self.annotations.video(video_id)
        kind = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=self.background_odds))]
        background = self.background(rng, kind, video_id, flip, height, width)
        areas = []
        for frame in frames:
            if background is not None:
                frame[0] = replace_background(frame[0], frame[1]["masks"], background, c.feather)
            areas.append(frame[1]["masks"].reshape(len(frame[1]["masks"]), -1).sum(1))
        pasted = []
        for _ in range(int(rng.integers(c.max_paste + 1)) if self.bank else 0):
            people = self._draw_person(rng, (height, width), width / video.width)
            if people is None:
                continue
            new_id = self.first_new_id + len(pasted)
            for i, (person, corner) in enumerate(zip(people, self._place(rng, *people, height, width))):
                frames[i][0], frames[i][1] = paste_person(*frames[i], person, *corner, new_id)
                areas[i] = np.append(areas[i], frames[i][1]["masks"][-1].sum())
            pasted.append(new_id)
        for frame, area in zip(frames, areas):
            frame[1] = settle(frame[1], area, c.min_visible_fraction, c.min_visible_pixels)
        if c.photometric:
            setting = np.concatenate([1 + rng.uniform(-1, 1, 3) * [c.brightness, c.contrast, c.saturation],
                                      1 + rng.uniform(-c.channel_gain, c.channel_gain, 3)])
            drift = 1 + rng.uniform(-c.reference_jitter, c.reference_jitter, 6)
            for frame, factors in zip(frames, (setting, setting * drift)):
                frame[0] = adjust_colour(frame[0], *factors[:3], factors[3:].astype(np.float32))
        return tuple(frames[0]), tuple(frames[1]), {"background": kind, "pasted": pasted}


# --- preview: python -m models.data.copy_paste ---

def _id_colour(instance_id: int) -> tuple[int, int, int]:
    hue = (instance_id * 0.6180339887) % 1.0
    rgb = cv2.cvtColor(np.array([[[hue * 179, 255, 255]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(int(v) for v in rgb)


def draw_instances(image: np.ndarray, target: FrameTarget, first_new_id: int, caption: str) -> np.ndarray:
    """Masks outlined and ids written in each instance's colour; pasted ids end in '+'."""
    canvas = np.ascontiguousarray(image.copy())
    for mask, box, instance_id in zip(target["masks"], target["boxes"], target["instance_ids"].tolist()):
        colour = _id_colour(instance_id)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour, 1)
        text = f"{instance_id}{'+' if instance_id >= first_new_id else ''}"
        origin = (int(box[0]), max(10, int(box[1]) - 2))
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1], 16), (0, 0, 0), -1)
    cv2.putText(canvas, caption, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def main(argv: list[str] | None = None) -> int:
    from .split_args import add_split_arguments, resolve_split_arguments
    from .ytvis import YTVISPairs

    parser = argparse.ArgumentParser(prog="python -m models.data.copy_paste",
                                     description="Contact sheet of copy-paste augmented key frames.")
    add_split_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--n", type=int, default=12, help="frames on the sheet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backgrounds", type=Path, metavar="DIR", help="folder of background photos")
    parser.add_argument("--max-paste", type=int, default=3, help="people pasted into a pair at most")
    parser.add_argument("--columns", type=int, default=4)
    args = parser.parse_args(argv)
    resolve_split_arguments(parser, args)
    if args.n < 1 or args.columns < 1:
        parser.error("--n and --columns must be at least 1")
    try:
        if not args.ann.is_file():
            raise FileNotFoundError(f"annotation file {args.ann} does not exist")
        config = CopyPaste(prob=1.0, max_paste=args.max_paste, background_dir=args.backgrounds)
        pairs = YTVISPairs(args.ann, args.images, seed=args.seed, copy_paste=config)
        rng = np.random.default_rng(args.seed)
        tiles = []
        for t in tqdm(range(args.n), desc="copy-paste preview", file=sys.stderr):
            pairs.set_epoch(t)
            index = int(rng.integers(len(pairs)))
            (video_id, key, reference, flip), sample_rng = pairs.draw_with_rng(index)
            frames = pairs.frame_arrays(video_id, key, flip), pairs.frame_arrays(video_id, reference, flip)
            (image, target), _, info = pairs.augmenter.augment(*frames, sample_rng, video_id, flip)
            caption = f"v{video_id} f{key} bg={info['background']} pasted={len(info['pasted'])}"
            tiles.append(draw_instances(image, target, pairs.augmenter.first_new_id, caption))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tile_h, tile_w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    columns = min(args.columns, len(tiles))
    sheet = np.zeros((tile_h * math.ceil(len(tiles) / columns), tile_w * columns, 3), np.uint8)
    for t, tile in enumerate(tiles):
        row, column = divmod(t, columns)
        sheet[row * tile_h:row * tile_h + tile.shape[0], column * tile_w:column * tile_w + tile.shape[1]] = tile
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        print(f"error: could not write {args.out}", file=sys.stderr)
        return 2
    print(f"copy-paste preview: {len(tiles)} frames -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
