"""MaskTrackRCNN: Mask R-CNN + FPN + a track head, with optional Temporal RoI Align.

One module, two forwards:

* training, on (key frame, reference frame) pairs: returns the RPN, box, mask
  and track losses. With Temporal RoI Align the reference frame is the key
  frame's support frame.
* inference, on frames plus each frame's support-feature cache (the FPN
  features of its past frames): returns boxes, scores, labels, masks at image
  resolution, track embeddings, and this frame's features for the cache.

The tracker that turns embeddings into identities lives outside the network
(`models.tracker`), so the network stays a pure function of its inputs and
can be exported with its state made explicit.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .roi_heads import MaskTrackRoIHeads


class MaskTrackRCNN(nn.Module):
    """Args:
        backbone: images -> OrderedDict of FPN levels, finest first; has
            ``out_channels``.
        rpn: torchvision ``RegionProposalNetwork`` over all levels.
        roi_heads: ``MaskTrackRoIHeads`` over the first ``num_roi_levels`` levels.
        transform: torchvision ``GeneralizedRCNNTransform`` (normalise, resize,
            pad; rescale boxes and paste masks back at inference).
        num_roi_levels: how many of the finest levels RoIs are pooled from
            (P2-P5; P6 only feeds the RPN). These are the levels cached for
            the support frames.
    """

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: MaskTrackRoIHeads,
        transform: GeneralizedRCNNTransform,
        num_roi_levels: int = 4,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.transform = transform
        self.num_roi_levels = num_roi_levels

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        reference_images: list[Tensor] | None = None,
        reference_targets: list[dict[str, Tensor]] | None = None,
        support_features: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``images``/``targets`` are key frames, ``reference_*`` their
        reference frames; targets hold ``boxes`` [N, 4] (x1 y1 x2 y2, pixels),
        ``labels`` [N] (1..num_classes), ``masks`` [N, H, W] and
        ``instance_ids`` [N] (identity within the video). Returns losses.

        Inference: ``images`` are RGB float tensors in [0, 1], [3, H, W];
        ``support_features`` is None or one tensor per RoI level,
        [B, T, C, H_l, W_l], from earlier calls' ``cache_features``.
        """
        if self.training:
            if targets is None or reference_images is None or reference_targets is None:
                raise ValueError("training needs targets, reference_images and reference_targets")
            return self.forward_train(images, targets, reference_images, reference_targets)
        return self.forward_inference(images, support_features)

    def _levels(self, features: OrderedDict[str, Tensor]) -> list[Tensor]:
        return list(features.values())[: self.num_roi_levels]

    def forward_train(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]],
        reference_images: list[Tensor],
        reference_targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        key, targets = self.transform(images, targets)
        reference, reference_targets = self.transform(reference_images, reference_targets)
        if key.tensors.shape != reference.tensors.shape:
            raise ValueError(
                f"key frames {tuple(key.tensors.shape)} and reference frames "
                f"{tuple(reference.tensors.shape)} must come from the same videos, pair by pair"
            )
        # One backbone pass for both frames of every pair.
        both = self.backbone(torch.cat([key.tensors, reference.tensors]))
        batch = len(images)
        key_features = OrderedDict((k, v[:batch]) for k, v in both.items())
        reference_levels = [v[batch:] for v in self._levels(both)]
        key_levels = self._levels(key_features)
        # The reference frame is the key frame's single support frame.
        support = [level.unsqueeze(1) for level in reference_levels]

        proposals, rpn_losses = self.rpn(key, key_features, targets)
        head_losses = self.roi_heads.forward_train(
            key_levels, proposals, targets, support, reference_levels, reference_targets
        )
        return {**rpn_losses, **head_losses}

    @torch.no_grad()
    def forward_inference(
        self, images: list[Tensor], support_features: list[Tensor] | None = None
    ) -> list[dict[str, Tensor]]:
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, _ = self.transform(images)
        features = self.backbone(image_list.tensors)
        levels = self._levels(features)
        # TemporalRoIAlign validates the cache against this frame's levels.
        proposals, _ = self.rpn(image_list, features)
        detections = self.roi_heads.forward_inference(levels, proposals, image_list.image_sizes, support_features)
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        for i, det in enumerate(detections):
            det["cache_features"] = [level[i] for level in levels]
        return detections
