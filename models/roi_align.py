"""Multi-level RoI Align over FPN features.

This module owns the rule that assigns each RoI to one FPN level
(``map_rois_to_levels``), pooling one level (``roi_align_level``) and the
module that pools every RoI from its own level (``MultiLevelRoIAlign``).
RoIs are ``[R, 5]`` rows of ``(batch_index, x1, y1, x2, y2)`` in input-image
pixels; feature levels are ordered finest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align


def map_rois_to_levels(rois: Tensor, num_levels: int, finest_scale: int = 56) -> Tensor:
    """FPN level of each RoI (mmdet's rule), as a long tensor of shape ``[R]``.

    Level 0 takes RoIs with ``sqrt(area) < 2 * finest_scale``, and each level
    after it doubles the scale; the last level takes everything larger.
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    # The epsilon keeps a RoI that sits exactly on a level boundary on the
    # upper level even when sqrt/log2 round slightly down.
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def roi_align_level(
    feature: Tensor, rois: Tensor, output_size: int, stride: int, sampling_ratio: int
) -> Tensor:
    """Pool ``rois`` from one feature map of the given stride: ``[R, C, s, s]``.

    ``aligned=True`` samples at pixel centres (half-pixel offset), which is
    what ONNX RoiAlign's ``half_pixel`` mode computes, so exported models agree.
    """
    return roi_align(
        feature,
        rois,
        output_size=(output_size, output_size),
        spatial_scale=1.0 / stride,
        sampling_ratio=sampling_ratio,
        aligned=True,
    )


class MultiLevelRoIAlign(nn.Module):
    """RoI Align that pools each RoI from the FPN level its size maps to."""

    def __init__(
        self,
        output_size: int,
        featmap_strides: Sequence[int],
        sampling_ratio: int = 2,
        finest_scale: int = 56,
    ) -> None:
        super().__init__()
        if output_size < 1:
            raise ValueError(f"output_size must be >= 1, got {output_size}")
        if len(featmap_strides) == 0:
            raise ValueError("featmap_strides needs at least one stride")
        # A fixed sampling ratio (not the adaptive 0) keeps the op's cost
        # independent of RoI size and matches what the exported graph does.
        if sampling_ratio < 1:
            raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
        self.output_size = output_size
        self.featmap_strides = tuple(int(s) for s in featmap_strides)
        self.sampling_ratio = sampling_ratio
        self.finest_scale = finest_scale

    @property
    def num_levels(self) -> int:
        return len(self.featmap_strides)

    def levels(self, rois: Tensor) -> Tensor:
        """FPN level of each RoI under this module's strides and finest scale."""
        return map_rois_to_levels(rois, self.num_levels, self.finest_scale)

    def pool_level(self, features: list[Tensor], rois: Tensor, level: int) -> Tensor:
        """Pool ``rois`` from ``features[level]`` regardless of their size."""
        return roi_align_level(
            features[level], rois, self.output_size, self.featmap_strides[level], self.sampling_ratio
        )

    def forward(self, features: list[Tensor], rois: Tensor) -> Tensor:
        if len(features) != self.num_levels:
            raise ValueError(
                f"expected {self.num_levels} feature levels (strides {self.featmap_strides}), "
                f"got {len(features)}"
            )
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise ValueError(f"rois must be [R, 5] (batch_index, x1, y1, x2, y2), got {tuple(rois.shape)}")
        rois = rois.to(features[0].dtype)
        channels = features[0].shape[1]
        out = features[0].new_zeros((rois.shape[0], channels, self.output_size, self.output_size))
        if rois.shape[0] == 0:
            return out
        levels = self.levels(rois)
        for level in range(self.num_levels):
            index = torch.nonzero(levels == level).squeeze(1)
            if index.numel() == 0:
                continue
            # index_put keeps autograd intact and leaves the RoIs' order as given.
            out[index] = self.pool_level(features, rois[index], level)
        return out

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, featmap_strides={self.featmap_strides}, "
            f"sampling_ratio={self.sampling_ratio}, finest_scale={self.finest_scale}"
        )
