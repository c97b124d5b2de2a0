"""Plain numpy box geometry shared by the tracker and the service.

Owns the box conventions of the numpy side of cellwatch: boxes are
``[x1, y1, x2, y2]`` in continuous pixel coordinates (no legacy ``+1``), and
every helper returns float64. Numpy only: the service imports this module in
processes that never load torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_boxes", "box_area", "box_iou"]


def as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    """Return ``boxes`` as a float64 ``[N, 4]`` array, or raise ``ValueError``.

    Rejects wrong shapes, non-finite coordinates and inverted corners, since a
    box with ``x2 < x1`` would silently score as empty and hide an upstream bug.
    """
    arr = np.asarray(boxes)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"{name} must satisfy x2 >= x1 and y2 >= y1")
    return arr


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of ``[N, 4]`` boxes as ``[N]`` float64; inverted extents count as 0."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    widths = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None)
    heights = np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    return widths * heights


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection-over-union of ``a [N, 4]`` and ``b [M, 4]`` → ``[N, M]``.

    Pairs whose union is empty (two degenerate boxes) get IoU 0 rather than
    NaN, so the result is always finite and in ``[0, 1]``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    extent = np.clip(bottom_right - top_left, 0.0, None)
    intersection = extent[..., 0] * extent[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - intersection
    iou = np.zeros_like(intersection)
    np.divide(intersection, union, out=iou, where=union > 0)
    return iou
