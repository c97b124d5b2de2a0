"""Temporal RoI Align (Gong et al., AAAI 2021) over FPN features and past frames.

This module owns the RoI extractor that enriches each RoI's features with
features found in support frames (the last T frames of the same stream, given
as a cache of their FPN features):

1. plain multi-level RoI Align on the current frame;
2. Most-Similar RoI Align: every RoI cell looks up, in each support frame
   separately, the K positions whose features are most cosine-similar to it
   and takes their softmax(similarity)-weighted sum;
3. Temporal Attentional Feature Aggregation: multi-head attention over the
   current frame and the T support frames, per RoI cell.

It follows mmtracking's ``TemporalRoIAlign`` in what it computes, with three
differences: each RoI searches the support frames at its own FPN level
(``support_level="same"``; ``"coarsest"`` is mmtracking's behaviour), the
similarity is computed in RoI chunks so its memory stays under a budget, and
unit-normalisation is guarded against all-zero vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .roi_align import MultiLevelRoIAlign

SUPPORT_LEVELS = ("same", "coarsest")

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


class TemporalRoIAlign(nn.Module):
    """RoI Align whose features also draw on the most similar parts of past frames.

    ``forward(features, rois, support_features)`` takes the current frame's FPN
    levels ``[B, C, H_l, W_l]``, RoIs ``[R, 5]`` and, per level, the support
    frames ``[B, T, C, H_l, W_l]``; RoIs of image b search support frames of
    image b. Without support frames (None or T == 0) it is exactly
    ``MultiLevelRoIAlign``.

    ``num_most_similar`` is capped at a level's number of positions.
    ``memory_budget_mb`` bounds the similarity search's working set (one RoI
    chunk's similarity, gathered features and indices); the RoI features of
    all frames, their embedding and the normalised support maps come on top
    and grow linearly with R and T.
    """

    def __init__(
        self,
        channels: int,
        output_size: int,
        featmap_strides: Sequence[int],
        sampling_ratio: int = 2,
        finest_scale: int = 56,
        num_most_similar: int = 2,
        num_heads: int = 4,
        support_level: str = "same",
        memory_budget_mb: float = 256.0,
    ) -> None:
        super().__init__()
        if support_level not in SUPPORT_LEVELS:
            raise ValueError(f"support_level must be one of {SUPPORT_LEVELS}, got {support_level!r}")
        if num_heads > 0 and channels % num_heads != 0:
            divisors = [d for d in range(1, channels + 1) if channels % d == 0]
            raise ValueError(
                f"channels ({channels}) must be divisible by num_heads ({num_heads}); "
                f"valid num_heads are {divisors}, or <= 0 for a plain mean over frames"
            )
        if num_most_similar < 1:
            raise ValueError(f"num_most_similar must be >= 1, got {num_most_similar}")
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        self.roi_align = MultiLevelRoIAlign(output_size, featmap_strides, sampling_ratio, finest_scale)
        self.channels = channels
        self.num_most_similar = num_most_similar
        self.num_heads = num_heads
        self.support_level = support_level
        self.memory_budget_mb = memory_budget_mb
        # mmtracking's embed network: one 3x3 conv, no norm, no activation.
        self.embed = nn.Conv2d(channels, channels, 3, padding=1) if num_heads > 0 else None

    def forward(
        self, features: list[Tensor], rois: Tensor, support_features: list[Tensor] | None = None
    ) -> Tensor:
        roi_feats = self.roi_align(features, rois)
        if support_features is None:
            return roi_feats
        self._check_support(features, support_features)
        if support_features[0].shape[1] == 0 or roi_feats.shape[0] == 0:
            return roi_feats
        frames = self.temporal_frames(roi_feats, rois, support_features)
        embedded = None
        if self.embed is not None:
            embedded = self.embed(frames.flatten(0, 1)).view(frames.shape)
        return aggregate_frames(frames, embedded, self.num_heads)

    def search_levels(self, rois: Tensor) -> Tensor:
        """The FPN level whose support maps each RoI searches."""
        levels = self.roi_align.levels(rois)
        if self.support_level == "coarsest":
            levels = torch.full_like(levels, self.roi_align.num_levels - 1)
        return levels

    def temporal_frames(self, roi_feats: Tensor, rois: Tensor, support_features: list[Tensor]) -> Tensor:
        """``[1 + T, R, C, h, w]``: the RoI features, then Most-Similar RoI Align per support frame."""
        levels = self.search_levels(rois)
        image_of_roi = rois[:, 0].long()
        num_images = support_features[0].shape[0]
        if bool(((image_of_roi < 0) | (image_of_roi >= num_images)).any()):
            raise ValueError(f"RoI batch indices must lie in [0, {num_images}) to match the support frames")
        if torch.is_grad_enabled() and (roi_feats.requires_grad or any(s.requires_grad for s in support_features)):
            found = most_similar_roi_align(
                roi_feats, levels, image_of_roi, support_features, self.num_most_similar, self.memory_budget_mb
            )
        else:
            # Inference goes through the registered operator, so an exporter
            # sees Most-Similar RoI Align as one node.
            found = torch.ops.cellwatch.most_similar_roi_align(
                roi_feats, levels, image_of_roi, list(support_features), self.num_most_similar, self.memory_budget_mb
            )
        return torch.cat([roi_feats.unsqueeze(0), found])

    def _check_support(self, features: list[Tensor], support_features: list[Tensor]) -> None:
        if len(support_features) != len(features):
            raise ValueError(
                f"support_features needs one tensor per level ({len(features)}), got {len(support_features)}"
            )
        if features[0].shape[1] != self.channels:
            raise ValueError(f"features have {features[0].shape[1]} channels, this module {self.channels}")
        num_frames = support_features[0].shape[1] if support_features[0].dim() == 5 else -1
        for level, (current, support) in enumerate(zip(features, support_features)):
            batch, channels, height, width = current.shape
            if tuple(support.shape) != (batch, num_frames, channels, height, width):
                raise ValueError(
                    f"support_features[{level}] must be [B={batch}, T, C={channels}, {height}, {width}] "
                    f"with one T for all levels, got {tuple(support.shape)}"
                )

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_most_similar={self.num_most_similar}, "
            f"num_heads={self.num_heads}, support_level={self.support_level!r}, "
            f"memory_budget_mb={self.memory_budget_mb}"
        )


# Registers torch.ops.cellwatch.most_similar_roi_align around the reference
# above; imported last because it needs this module's functions.
from . import troi_op  # noqa: E402, F401
