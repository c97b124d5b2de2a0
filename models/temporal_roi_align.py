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

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# troi_op registers torch.ops.cellwatch.most_similar_roi_align, which the module calls.
from . import troi_op  # noqa: F401
from .most_similar import aggregate_frames, most_similar_roi_align
from .roi_align import MultiLevelRoIAlign

SUPPORT_LEVELS = ("same", "coarsest")

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
