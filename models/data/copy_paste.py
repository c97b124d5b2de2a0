"""Copy-paste augmentation of (key, reference) training pairs.

Owns the person bank (cutouts of the training annotations, decoded on demand),
the choice of a pair's background (its own frame, or one of
``models.data.backgrounds``), compositing with feathered edges, and the
occlusion bookkeeping that keeps every mask, box and identity valid.
Everything a pair gets is drawn from the sample's numpy Generator, so an
augmented pair is a pure function of (dataset seed, epoch, index).

Frames and targets are the numpy ones of ``models.data.transforms`` (after
resize and flip, before ``to_tensors``). Imports ``transforms``,
``backgrounds`` and ``ytvis`` of the project; the pair dataset receives the
bound augmenter and never imports this module.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .backgrounds import Backgrounds, EmptyScenes, PhotoBackgrounds
from .transforms import Frame, FrameTarget, boxes_from_masks
from .ytvis import YTVISAnnotations, decode_mask, read_frame

BACKGROUNDS = ("frame", "empty_scene", "photo", "texture")
PERSON_CACHE_SIZE = 256  # decoded cutouts kept per process


@dataclass(frozen=True)
class CopyPaste:
    """Settings of the augmentation; ``bind`` ties them to a training split.

    ``background_weights`` are the odds of (own frame, empty scene, photo,
    texture); the photo share goes to the others when there is no
    ``background_dir``. Photos of that folder are used only when a people-free
    list covers them (``models.data.backgrounds``): the shipped one, the
    folder's own ``people_free.sha256`` or ``people_free_lists``.
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
    min_background_side: int = 64
    people_free_lists: tuple[str | Path, ...] = ()

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

    def backgrounds(self, annotations: YTVISAnnotations, image_root: str | Path) -> Backgrounds:
        """The empty scenes of the split and the folder's people-free photos (if any)."""
        photos = None
        if self.background_dir is not None:
            photos = PhotoBackgrounds(self.background_dir, self.people_free_lists, self.min_background_side)
        return Backgrounds(EmptyScenes(annotations, image_root, self.median_frames), photos)

    def bind(self, annotations: YTVISAnnotations, image_root: str | Path,
             backgrounds: Backgrounds | None = None) -> CopyPasteAugmenter:
        """The augmenter for a split; ``backgrounds`` shared with other steps, else made from these settings."""
        backgrounds = backgrounds if backgrounds is not None else self.backgrounds(annotations, image_root)
        return CopyPasteAugmenter(self, annotations, image_root, backgrounds)


@dataclass
class Person:
    """A cutout ready to paste: its pixels, the feathered alpha used to blend
    them and the binary mask that becomes the label."""

    image: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) uint8
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    label: int


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


class CopyPasteAugmenter:
    """``CopyPaste`` bound to a split and its backgrounds: ``(key, reference,
    info) = augmenter.augment(key, reference, rng, video_id, flip)``. Binding
    only lists the bank's instance references (no mask is decoded); cutouts
    and empty scenes are computed when first needed and kept in memory."""

    def __init__(self, config: CopyPaste, annotations: YTVISAnnotations, image_root: str | Path,
                 backgrounds: Backgrounds) -> None:
        self.config = config
        self.annotations = annotations
        self.image_root = Path(image_root)
        self.backgrounds = backgrounds
        all_ids = [i.id for instances in annotations.instances.values() for i in instances]
        self.first_new_id = max(all_ids, default=0) + 1
        self.bank = self._bank_references()
        odds = backgrounds.odds(dict(zip(BACKGROUNDS, config.background_weights)))
        self.background_odds = np.array([odds[kind] for kind in BACKGROUNDS])
        self._people: OrderedDict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, int] | None] = OrderedDict()

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
        if len(self._people) > PERSON_CACHE_SIZE:
            self._people.popitem(last=False)
        return found

    def background(self, rng: np.random.Generator, kind: str, video_id: int, flip: bool,
                   height: int, width: int) -> np.ndarray | None:
        """A new background at the frame's size, or None to keep the frame's own."""
        return None if kind == "frame" else self.backgrounds.draw(rng, kind, video_id, flip, height, width)

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
        return tuple(frames[0]), tuple(frames[1]), {"background": kind, "pasted": pasted}
