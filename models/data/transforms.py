"""Training-frame geometry: the keep-ratio resize rule, resize, horizontal flip,
boxes from masks, and the conversion of a frame and its target to tensors.

A frame target here is a dict of numpy arrays at the frame's current
resolution: ``boxes`` [N, 4] float32 (x1 y1 x2 y2, pixel edges), ``labels``
[N] int64, ``masks`` [N, H, W] uint8, ``instance_ids`` [N] int64 and
``ignore_boxes`` [M, 4] float32. Normalisation and padding are not done here:
they belong to the model's own transform.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

FrameTarget = dict[str, np.ndarray]
Frame = tuple[np.ndarray, FrameTarget]  # RGB uint8 (H, W, 3) and its target


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """[N, 4] float32 x1 y1 x2 y2 (pixel edges) of non-empty masks [N, H, W]."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
        boxes[i] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


def keep_ratio_size(width: int, height: int, scale: tuple[int, int] = (640, 360)) -> tuple[int, int]:
    """The (width, height) a frame is resized to so that it fits ``scale``.

    The rule of mmdet's keep-ratio rescale: the larger number of ``scale``
    bounds the long side, the smaller bounds the short side, whatever the
    frame's orientation; the factor is the smaller of the two ratios and
    sizes are rounded to the nearest pixel.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if min(scale) <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _scale_boxes(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return (boxes * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)


def resize(image: np.ndarray, target: FrameTarget, size: tuple[int, int]) -> tuple[np.ndarray, FrameTarget]:
    """Resize ``image`` (H, W, 3) to ``size`` = (width, height): bilinear for
    the image, nearest for the masks (they stay binary), boxes scaled per axis
    by the exact ratio of the rounded sizes so that they stay on the masks."""
    height, width = image.shape[:2]
    new_width, new_height = size
    if (new_width, new_height) == (width, height):
        return image, target
    sx, sy = new_width / width, new_height / height
    image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    masks = target["masks"]
    resized_masks = np.zeros((len(masks), new_height, new_width), dtype=np.uint8)
    # One mask at a time: cv2 caps the channel count, videos may not.
    for i, mask in enumerate(masks):
        resized_masks[i] = cv2.resize(mask, (new_width, new_height), interpolation=cv2.INTER_NEAREST)
    return image, {
        **target,
        "boxes": _scale_boxes(target["boxes"], sx, sy),
        "ignore_boxes": _scale_boxes(target["ignore_boxes"], sx, sy),
        "masks": resized_masks,
    }


def _flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    # Pixel-edge coordinates: a box [x1, x2) mirrors to [W - x2, W - x1).
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def hflip(image: np.ndarray, target: FrameTarget) -> tuple[np.ndarray, FrameTarget]:
    """Mirror the frame, its masks and its boxes left to right."""
    width = image.shape[1]
    return np.ascontiguousarray(image[:, ::-1]), {
        **target,
        "boxes": _flip_boxes(target["boxes"], width),
        "ignore_boxes": _flip_boxes(target["ignore_boxes"], width),
        "masks": np.ascontiguousarray(target["masks"][:, :, ::-1]),
    }


def to_tensors(image: np.ndarray, target: FrameTarget) -> tuple[Tensor, dict[str, Tensor]]:
    """RGB uint8 (H, W, 3) -> float32 [3, H, W] in [0, 1]; target arrays -> tensors."""
    image_tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return image_tensor.contiguous(), {key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in target.items()}
