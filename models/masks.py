"""Instance masks: pasting per-box probabilities into a frame, and COCO RLE.

The one home of these helpers: the model's inference, the auto-labeller, the
exported graph's post-processing, the service's results and the benchmarks
all call them. numpy and OpenCV; pycocotools only inside the functions that
need it, since the auto-labeller's teacher environment has none (it writes
uncompressed RLE with ``encode_rle_counts``). No torch.

Pasting follows torchvision's ``paste_masks_in_image``: the ``[M, M]`` mask
gets a one-cell zero border, its box is grown by the same proportion and cut
to integers, and the mask is resized bilinearly (half-pixel centres) onto that
box. Only the box's region is computed, so a detection costs its box's
pixels, not a copy of the whole frame.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

MASK_THRESHOLD = 0.5  # probability at which a pixel belongs to the instance, as torchvision


def _grown_box(box: np.ndarray, size: int) -> tuple[int, int, int, int]:
    scale = (size + 2) / size
    box = np.asarray(box, dtype=np.float32)
    half_w = (box[2] - box[0]) * 0.5 * scale
    half_h = (box[3] - box[1]) * 0.5 * scale
    centre_x = (box[2] + box[0]) * 0.5
    centre_y = (box[3] + box[1]) * 0.5
    grown = np.array([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h])
    x0, y0, x1, y1 = (int(v) for v in grown.astype(np.float32).astype(np.int64))  # truncation, as torch's int64
    return x0, y0, x1, y1


def paste_region(mask_prob: np.ndarray, box: np.ndarray, height: int,
                 width: int) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """``[M, M]`` probabilities over ``box`` (x1, y1, x2, y2 frame pixels) resized
    onto the box: ``(probabilities, (rows, cols))`` for the part inside the
    ``height`` x ``width`` frame, or None when the box lies outside it."""
    size = mask_prob.shape[-1]
    padded = np.pad(np.asarray(mask_prob, dtype=np.float32), 1)
    x0, y0, x1, y1 = _grown_box(box, size)
    box_w, box_h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    left, right = max(x0, 0), min(x1 + 1, width)
    top, bottom = max(y0, 0), min(y1 + 1, height)
    if left >= right or top >= bottom:
        return None
    resized = cv2.resize(padded, (box_w, box_h), interpolation=cv2.INTER_LINEAR)
    return resized[top - y0 : bottom - y0, left - x0 : right - x0], (slice(top, bottom), slice(left, right))


def paste_mask(mask_prob: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """One ``[M, M]`` mask pasted into its box and thresholded: a boolean
    ``[height, width]`` array in Fortran order (what RLE encoding reads)."""
    out = np.zeros((height, width), dtype=bool, order="F")
    region = paste_region(mask_prob, box, height, width)
    if region is not None:
        values, where = region
        out[where] = values > MASK_THRESHOLD
    return out


def paste_mask_probs(mask_probs: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-box ``[N, 1, M, M]`` (or ``[N, M, M]``) probabilities -> ``[N, height, width]`` probabilities."""
    probs = np.asarray(mask_probs)
    probs = probs[:, 0] if probs.ndim == 4 else probs
    out = np.zeros((len(probs), height, width), dtype=np.float32)
    for index, (prob, box) in enumerate(zip(probs, np.asarray(boxes))):
        region = paste_region(prob, box, height, width)
        if region is not None:
            values, (rows, cols) = region
            out[index, rows, cols] = values
    return out


def encode_rle_counts(mask: np.ndarray) -> dict[str, Any]:
    """A boolean ``[H, W]`` mask as uncompressed COCO RLE (a list of run lengths,
    column-major, starting with a run of zeros), numpy only."""
    flat = (np.asarray(mask).reshape(-1, order="F") != 0).astype(np.uint8)  # any nonzero is inside, as pycocotools
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """A boolean ``[H, W]`` mask as compressed COCO RLE with ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE -> boolean ``[H, W]``. ``counts`` may be compressed (str or bytes)
    or uncompressed (a list of run lengths, column-major)."""
    from pycocotools import mask as mask_utils

    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        encoded = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        encoded = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(encoded).astype(bool)


def mask_area(rle: dict[str, Any]) -> int:
    """Pixels of a compressed RLE mask, without decoding it."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    encoded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return int(mask_utils.area(encoded))
