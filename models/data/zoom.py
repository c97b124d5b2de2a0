"""Scale augmentation of training pairs: zoom both frames in on a person (or
a group) or out onto a new background, so that a model trained on one
camera's 40-120 px walkers sees people from a few pixels to the full frame.

Owns the draw of the target height (log-uniform between ``min_height`` px and
``max_height`` of the frame), the choice of the person who gets it, the one
transform shared by the key and the reference frame, and the bookkeeping that
keeps targets valid: masks moved with the pixels, boxes recomputed from them,
identities unchanged; an instance the crop cuts keeps its visible part, and
one left with too little of it is dropped from that frame's instances and
marked in ``ignore_boxes`` instead. Every draw comes from the sample's
numpy Generator.

Imports ``transforms`` and ``backgrounds`` of the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .backgrounds import Backgrounds
from .transforms import Frame, FrameTarget, boxes_from_masks

CANVAS_KINDS = ("empty_scene", "photo", "texture")


@dataclass(frozen=True)
class Zoom:
    """Settings. ``prob`` of a pair being zoomed. Then, with ``out_prob``, a
    person taller than ``min_height`` is shrunk to a height log-uniform in
    [``min_height``, its height) (the others shrink with it: that is where
    tiny people come from); otherwise a height log-uniform in [``min_height``
    px, ``max_height`` x frame height] is drawn and given to a person it
    needs at most ``max_upscale`` for (failing that, the tallest is enlarged
    by ``max_upscale``). Zooming out shrinks the frame onto a canvas drawn by
    ``background_weights`` (empty scene, photo, texture) with a seam
    feathered by ``feather`` pixels."""

    prob: float = 0.5
    min_height: float = 40.0  # pixels: the smallest person the product must find
    max_height: float = 1.0  # fraction of the frame height: a person right in front of the camera
    max_upscale: float = 6.0  # beyond this an upscaled person is a few source pixels smeared out
    out_prob: float = 0.3  # a camera that sees a fixed cell from afar: people of a few tens of pixels
    group_prob: float = 0.3  # keep the anchor's neighbours in view with it
    min_visible_pixels: int = 20
    min_visible_fraction: float = 0.25  # of the instance's area at the new scale
    feather: float = 2.0
    background_weights: tuple[float, float, float] = (0.2, 0.5, 0.3)

    def __post_init__(self) -> None:
        problems = [
            (not 0.0 <= self.prob <= 1.0, f"prob must be in [0, 1], got {self.prob}"),
            (not 0 < self.min_height, f"min_height must be > 0 pixels, got {self.min_height}"),
            (not 0 < self.max_height <= 1, f"max_height must be a frame fraction in (0, 1], got {self.max_height}"),
            (self.max_upscale < 1, f"max_upscale must be >= 1, got {self.max_upscale}"),
            (not 0.0 <= self.group_prob <= 1.0, f"group_prob must be in [0, 1], got {self.group_prob}"),
            (not 0.0 <= self.out_prob <= 1.0, f"out_prob must be in [0, 1], got {self.out_prob}"),
            (len(self.background_weights) != 3 or min(self.background_weights) < 0,
             f"background_weights must be 3 non-negative numbers, got {self.background_weights}"),
        ]
        for failed, message in problems:
            if failed:
                raise ValueError(f"zoom: {message}")

    def bind(self, backgrounds: Backgrounds) -> ZoomAugmenter:
        return ZoomAugmenter(self, backgrounds)


def _scaled_boxes(boxes: np.ndarray, scale: float, dx: float, dy: float, height: int, width: int) -> np.ndarray:
    """Boxes moved by ``x -> scale * x + dx``, clipped to the frame; empty ones dropped."""
    moved = boxes * scale + np.array([dx, dy, dx, dy], np.float32)
    moved = np.clip(moved, 0, [width, height, width, height]).astype(np.float32)
    return moved[(moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])].reshape(-1, 4)


def zoom_in(frame: Frame, scale: float, x0: float, y0: float) -> Frame:
    """The window of the frame's size / ``scale`` at (x0, y0), enlarged to the frame."""
    image, target = frame
    height, width = image.shape[:2]
    # Pixel edges map as x -> scale * (x - x0); cv2 maps pixel centres, half a pixel in.
    centring = 0.5 * (scale - 1)
    matrix = np.array([[scale, 0, centring - scale * x0], [0, scale, centring - scale * y0]], np.float32)
    image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    masks = np.zeros_like(target["masks"])
    for i, mask in enumerate(target["masks"]):  # linear then 0.5: smooth edges when enlarged
        masks[i] = cv2.warpAffine(mask.astype(np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR) >= 0.5
    ignore = _scaled_boxes(target["ignore_boxes"], scale, -scale * x0, -scale * y0, height, width)
    return image, {**target, "masks": masks, "ignore_boxes": ignore}


def zoom_out(frame: Frame, scale: float, x0: int, y0: int, canvas: np.ndarray, feather: float) -> Frame:
    """The frame shrunk by ``scale`` with its top-left corner at (x0, y0) of ``canvas``."""
    image, target = frame
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    window = np.s_[y0:y0 + size[1], x0:x0 + size[0]]
    inside = np.zeros((height, width), np.float32)
    inside[window] = 1
    alpha = cv2.GaussianBlur(inside, (0, 0), feather) * inside if feather > 0 else inside
    placed = canvas.astype(np.float32)
    placed[window] = small
    out = np.clip(np.rint(alpha[..., None] * placed + (1 - alpha[..., None]) * canvas), 0, 255).astype(np.uint8)
    masks = np.zeros_like(target["masks"])
    for i, mask in enumerate(target["masks"]):
        masks[i][window] = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
    ignore = _scaled_boxes(target["ignore_boxes"], size[0] / width, x0, y0, height, width)
    return out, {**target, "masks": masks, "ignore_boxes": ignore}


def settle_cut(target: FrameTarget, expected_area: np.ndarray, min_pixels: int, min_fraction: float) -> FrameTarget:
    """Drop the instances with fewer than ``min_pixels`` visible or less than
    ``min_fraction`` of ``expected_area`` (their whole area at the new scale);
    what is still visible of them goes to ``ignore_boxes``. Boxes are set to
    their masks' bounding boxes."""
    visible = target["masks"].reshape(len(target["masks"]), -1).sum(1)
    keep = (visible >= min_pixels) & (visible >= min_fraction * expected_area) & (visible > 0)
    cut = (~keep) & (visible > 0)
    masks = target["masks"][keep]
    ignore = np.concatenate([target["ignore_boxes"], boxes_from_masks(target["masks"][cut])]).astype(np.float32)
    return {**target, "masks": masks, "labels": target["labels"][keep], "instance_ids": target["instance_ids"][keep],
            "boxes": boxes_from_masks(masks), "ignore_boxes": ignore.reshape(-1, 4)}


def _window_start(low: float, high: float, size: float, limit: float, rng: np.random.Generator) -> float:
    """A start in [0, limit - size] that keeps [low, high) inside the window
    when it fits, else centres the window on it."""
    lo, hi = max(0.0, high - size), min(limit - size, low)
    if lo <= hi:
        return float(rng.uniform(lo, hi))
    return float(np.clip((low + high - size) / 2, 0, limit - size))


class ZoomAugmenter:
    """``Zoom`` bound to the backgrounds that fill a zoomed-out canvas:
    ``augment(key, reference, rng, video_id, flip) -> (key, reference, info)``,
    info ``{"zoom", "anchor", "anchor_height", "canvas"}`` or ``{}`` when skipped."""

    def __init__(self, config: Zoom, backgrounds: Backgrounds) -> None:
        self.config = config
        self.backgrounds = backgrounds
        self.canvas_odds = backgrounds.odds(dict(zip(CANVAS_KINDS, config.background_weights)))

    def _anchor(self, rng: np.random.Generator, heights: np.ndarray, frame_height: int) -> tuple[int, float]:
        """(instance position, scale) as the settings' docstring says."""
        c = self.config
        tall = np.flatnonzero(heights > c.min_height)
        heights = np.maximum(heights, 1e-6)  # an empty mask: never reachable, never chosen
        if rng.random() < c.out_prob and len(tall):
            anchor = int(tall[rng.integers(len(tall))])
            wanted = math.exp(rng.uniform(math.log(c.min_height), math.log(heights[anchor])))
            return anchor, float(wanted / heights[anchor])
        low, high = math.log(c.min_height), math.log(max(c.max_height * frame_height, c.min_height))
        wanted = math.exp(rng.uniform(low, high))
        scales = wanted / heights
        reachable = np.flatnonzero(scales <= c.max_upscale)
        if not len(reachable):
            return int(np.argmax(heights)), c.max_upscale
        anchor = int(reachable[rng.integers(len(reachable))])
        return anchor, float(scales[anchor])

    def _region(self, rng: np.random.Generator, anchor: int, key: FrameTarget, reference: FrameTarget,
                key_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(region to keep in view, the anchor's key box): the anchor in both
        frames, with its neighbours (boxes within one anchor height) when grouped."""
        box = key_boxes[anchor]
        region = box.copy()
        in_reference = np.flatnonzero(reference["instance_ids"] == key["instance_ids"][anchor])
        if len(in_reference) and reference["masks"][in_reference[0]].any():
            other = boxes_from_masks(reference["masks"][in_reference[:1]])[0]
            region = np.concatenate([np.minimum(region[:2], other[:2]), np.maximum(region[2:], other[2:])])
        if rng.random() < self.config.group_prob:
            reach = box + np.array([-1, -1, 1, 1]) * (box[3] - box[1])
            near = (key_boxes[:, 0] < reach[2]) & (key_boxes[:, 2] > reach[0]) & (key_boxes[:, 1] < reach[3]) & (
                key_boxes[:, 3] > reach[1]) & (key_boxes[:, 3] > key_boxes[:, 1])
            region = np.concatenate([np.minimum(region[:2], key_boxes[near, :2].min(0)),
                                     np.maximum(region[2:], key_boxes[near, 2:].max(0))])
        return region, box

    def augment(self, key: Frame, reference: Frame, rng: np.random.Generator, video_id: int,
                flip: bool) -> tuple[Frame, Frame, dict]:
        c = self.config
        masks = key[1]["masks"]
        present = masks.reshape(len(masks), -1).any(1)
        if rng.random() >= c.prob or not present.any():
            return key, reference, {}
        height, width = key[0].shape[:2]
        key_boxes = np.zeros((len(masks), 4), np.float32)  # an empty mask (resized away) has no box: height 0
        key_boxes[present] = boxes_from_masks(masks[present])
        anchor, scale = self._anchor(rng, key_boxes[:, 3] - key_boxes[:, 1], height)
        areas = [frame[1]["masks"].reshape(len(frame[1]["masks"]), -1).sum(1) * scale**2 for frame in (key, reference)]
        canvas_kind = None
        if scale >= 1:
            region, box = self._region(rng, anchor, key[1], reference[1], key_boxes)
            size_w, size_h = width / scale, height / scale
            fits = region[2] - region[0] <= size_w and region[3] - region[1] <= size_h
            keep = region if fits else box
            x0 = _window_start(keep[0], keep[2], size_w, width, rng)
            y0 = _window_start(keep[1], keep[3], size_h, height, rng)
            frames = [zoom_in(frame, scale, x0, y0) for frame in (key, reference)]
        else:
            kinds = list(self.canvas_odds)
            canvas_kind = kinds[int(rng.choice(len(kinds), p=list(self.canvas_odds.values())))]
            canvas = self.backgrounds.draw(rng, canvas_kind, video_id, flip, height, width)
            x0 = int(rng.integers(width - max(1, round(width * scale)) + 1))
            y0 = int(rng.integers(height - max(1, round(height * scale)) + 1))
            frames = [zoom_out(frame, scale, x0, y0, canvas, c.feather) for frame in (key, reference)]
        frames = [(image, settle_cut(target, area, c.min_visible_pixels, c.min_visible_fraction))
                  for (image, target), area in zip(frames, areas)]
        anchor_id = int(key[1]["instance_ids"][anchor])
        kept = np.flatnonzero(frames[0][1]["instance_ids"] == anchor_id)
        boxes = frames[0][1]["boxes"]
        anchor_height = float(boxes[kept[0], 3] - boxes[kept[0], 1]) if len(kept) else 0.0
        info = {"zoom": scale, "anchor": anchor_id, "anchor_height": anchor_height, "canvas": canvas_kind}
        return frames[0], frames[1], info
