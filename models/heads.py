"""The small heads of MaskTrackRCNN: the tracking head and the light RPN head.

The box and mask heads are torchvision's (`TwoMLPHead`, `FastRCNNPredictor`,
`MaskRCNNHeads`, `MaskRCNNPredictor`); what MaskTrackRCNN adds is `TrackHead`,
which turns a RoI feature into an embedding, and `track_logits` / `track_loss`,
which score embeddings of one frame against the instances of a reference frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TrackHead(nn.Module):
    """Fully connected layers from a pooled RoI feature to a track embedding.

    As in the original MaskTrackRCNN: the RoI feature is flattened and passed
    through ``len(fc_channels)`` linear layers with a ReLU between them but
    none after the last, so the embedding may take any sign and dot products
    work as matching logits.
    """

    def __init__(self, in_channels: int, roi_size: int, fc_channels: tuple[int, ...] = (1024, 1024)) -> None:
        super().__init__()
        if not fc_channels:
            raise ValueError("TrackHead needs at least one fully connected layer")
        sizes = (in_channels * roi_size * roi_size, *fc_channels)
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.embedding_dim = fc_channels[-1]

    def forward(self, roi_features: Tensor) -> Tensor:
        x = roi_features.flatten(1)
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if i < len(self.fcs) - 1:
                x = F.relu(x)
        return x


def track_logits(embeddings: Tensor, reference_embeddings: Tensor) -> Tensor:
    """Matching logits [N, 1 + M]: column 0 is the fixed zero "new object" logit,
    column 1 + j the dot product with reference instance j."""
    products = embeddings @ reference_embeddings.t()
    new_object = products.new_zeros((products.shape[0], 1))
    return torch.cat([new_object, products], dim=1)


def track_targets(
    matched_instance_ids: Tensor, reference_instance_ids: Tensor
) -> Tensor:
    """Target column per proposal: 1 + index of the same instance among the
    reference frame's instances, or 0 when the instance is absent there."""
    if reference_instance_ids.numel() == 0:
        return torch.zeros_like(matched_instance_ids)
    same = matched_instance_ids[:, None] == reference_instance_ids[None, :]
    found = same.any(dim=1)
    index = same.float().argmax(dim=1) + 1
    return torch.where(found, index, torch.zeros_like(index))


def track_loss(logits_per_image: list[Tensor], targets_per_image: list[Tensor]) -> Tensor:
    """Cross-entropy over all positive proposals of the batch."""
    losses = [
        F.cross_entropy(logits, targets, reduction="sum")
        for logits, targets in zip(logits_per_image, targets_per_image)
        if logits.shape[0] > 0
    ]
    count = sum(t.numel() for t in targets_per_image)
    if not losses:
        # Keep the graph connected so DDP and AMP see every parameter used.
        return sum(lg.sum() for lg in logits_per_image) * 0.0
    return torch.stack(losses).sum() / max(count, 1)


class SeparableRPNHead(nn.Module):
    """RPN head with a depthwise-separable 3x3 conv: same outputs as
    torchvision's ``RPNHead`` at a fraction of its cost on the stride-4 level,
    which dominates CPU time for the real-time preset."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, in_channels, 1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, boxes = [], []
        for feature in features:
            t = F.relu(self.pointwise(self.depthwise(feature)))
            logits.append(self.cls_logits(t))
            boxes.append(self.bbox_pred(t))
        return logits, boxes
