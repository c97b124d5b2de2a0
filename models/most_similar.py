"""Most-Similar RoI Align and Temporal Attentional Feature Aggregation: the math
of Temporal RoI Align (Gong et al., AAAI 2021) as plain torch functions.

``models.temporal_roi_align.TemporalRoIAlign`` (the module) and
``models.troi_op`` (the registered custom op, whose reference these are) both
import from here; this module imports neither, so the two do not import
each other. torch only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Cells pooled entirely outside the image are all zeros; dividing by their
# zero norm would turn the whole similarity row into NaN.
_NORM_EPS = 1e-12


def roi_chunk_size(
    cells_per_roi: int,
    support_positions: int,
    budget_bytes: float,
    bytes_per_element: int,
    extra_elements_per_cell: int = 0,
) -> int:
    """How many RoIs to search at once so their working set fits ``budget_bytes``.

    Per RoI cell the similarity row holds ``support_positions`` elements; it is
    the one tensor of that size alive at a time (top-k keeps no copy of it, it
    is freed before the gather, and in backward only its gradient takes its
    place). ``extra_elements_per_cell`` covers what scales with the cell count
    but not with the support size (gathered top-k features, indices, output).
    Never less than one RoI, so a budget below a single RoI's need still runs.
    """
    elements_per_cell = support_positions + extra_elements_per_cell
    bytes_per_roi = cells_per_roi * elements_per_cell * bytes_per_element
    return max(1, int(budget_bytes // max(bytes_per_roi, 1)))


def most_similar_features(
    cells: Tensor, support_unit: Tensor, support_rows: Tensor, num_frames: int, k: int
) -> Tensor:
    """Softmax-weighted sum of each cell's top-``k`` most similar support features.

    cells: ``[N, C]`` unit-norm query vectors.
    support_unit: ``[C, T * P]`` unit-norm support vectors, frame-major.
    support_rows: ``[T * P, C]`` raw support vectors in the same order.
    Returns ``[N, T, C]``; the top-k is taken in every frame separately.
    """
    positions = support_unit.shape[1] // num_frames
    similarity = (cells @ support_unit).view(-1, num_frames, positions)
    values, index = similarity.topk(k, dim=2)
    del similarity  # the largest tensor here; free it before gathering
    weights = values.softmax(dim=2)
    frame_offset = torch.arange(num_frames, device=index.device).view(1, num_frames, 1) * positions
    gathered = support_rows[index + frame_offset]  # [N, T, k, C]
    # A batched [1, k] @ [k, C] product avoids a [N, T, k, C] weighted temporary.
    return (weights.unsqueeze(2) @ gathered).squeeze(2)


def aggregate_frames(frames: Tensor, embedded: Tensor | None, num_heads: int) -> Tensor:
    """Attention-weighted sum over frames; ``frames[0]`` is the current frame.

    frames, embedded: ``[T + 1, R, C, h, w]``. Each head scores frame t by the
    scaled dot product of its embedding with the current frame's embedding, per
    cell; the weights (softmax over frames) mix the raw, unembedded features.
    Without an embedding (``num_heads <= 0``) this is the plain mean.
    """
    if embedded is None or num_heads <= 0:
        return frames.mean(dim=0)
    num_frames, num_rois, channels, height, width = frames.shape
    head_dim = channels // num_heads
    heads = (num_rois, num_heads, head_dim, height, width)
    query = embedded[0].view(heads)
    # Frame by frame, so no temporary is T + 1 times the size of the output.
    logits = torch.stack([(embedded[t].view(heads) * query).sum(dim=2) for t in range(num_frames)])
    weights = (logits / math.sqrt(head_dim)).softmax(dim=0).unsqueeze(3)  # [T + 1, R, heads, 1, h, w]
    out = frames[0].view(heads) * weights[0]
    for t in range(1, num_frames):
        out = out + frames[t].view(heads) * weights[t]
    return out.view(num_rois, channels, height, width)


def most_similar_roi_align(
    roi_feats: Tensor,
    levels: Tensor,
    batch_index: Tensor,
    support: Sequence[Tensor],
    num_most_similar: int,
    memory_budget_mb: float = 256.0,
) -> Tensor:
    """Most-Similar RoI Align for every RoI against its image's support frames.

    roi_feats: ``[R, C, h, w]`` this frame's pooled RoI features.
    levels: ``[R]`` the support level each RoI searches.
    batch_index: ``[R]`` the image each RoI belongs to.
    support: per level ``[B, T, C, H_l, W_l]``.
    Returns ``[T, R, C, h, w]``: for each support frame, every RoI cell's
    softmax-weighted sum of the raw support vectors at the
    ``min(num_most_similar, H_l * W_l)`` positions whose unit vectors are most
    cosine-similar to the cell's unit vector. The search runs in RoI chunks
    whose working set stays under ``memory_budget_mb``. Differentiable; this is
    the reference the registered operator and the kernels are checked against.
    """
    num_rois, channels, height, width = roi_feats.shape
    num_images, num_frames = support[0].shape[:2]
    cells_per_roi = height * width
    # One buffer filled in place: concatenating per-chunk results and restoring
    # the RoI order would each copy it.
    out = roi_feats.new_zeros((num_frames, num_rois, channels, height, width))
    if num_frames == 0 or num_rois == 0:
        return out
    # [R, h*w, C]: one unit query vector per RoI cell.
    cells = F.normalize(roi_feats, dim=1, eps=_NORM_EPS).flatten(2).transpose(1, 2).contiguous()
    budget_bytes = memory_budget_mb * 2**20
    for level, level_support in enumerate(support):
        in_level = levels == level
        if not bool(in_level.any()):
            continue
        positions = level_support.shape[-2] * level_support.shape[-1]
        k = min(num_most_similar, positions)
        extra = num_frames * (k * channels + channels + 6 * k)
        chunk = roi_chunk_size(cells_per_roi, num_frames * positions, budget_bytes, roi_feats.element_size(), extra)
        for image in range(num_images):
            index = torch.nonzero(in_level & (batch_index == image)).squeeze(1)
            if index.numel() == 0:
                continue
            support_image = level_support[image]  # [T, C, H, W]
            support_unit = F.normalize(support_image, dim=1, eps=_NORM_EPS)
            support_unit = support_unit.transpose(0, 1).reshape(channels, -1)
            support_rows = support_image.flatten(2).transpose(1, 2).reshape(-1, channels)
            for start in range(0, index.numel(), chunk):
                part = index[start : start + chunk]
                found = most_similar_features(
                    cells[part].reshape(-1, channels), support_unit, support_rows, num_frames, k
                )
                # [n*h*w, T, C] -> [T, n, C, h, w]
                found = found.view(part.numel(), height, width, num_frames, channels)
                out[:, part] = found.permute(3, 0, 4, 1, 2)
    return out
