"""Second stage of MaskTrackRCNN: box, mask and track heads over pooled RoIs.

Builds on torchvision's ``RoIHeads`` for proposal sampling, box losses and
detection post-processing, and adds what MaskTrackRCNN needs on top:

* RoI pooling that may look at past frames (``TemporalRoIAlign``) for any of
  the three heads, chosen by ``temporal_heads``;
* the track head, trained against the reference frame's instances and run
  on the final detections at inference.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
)

from .heads import TrackHead, track_logits, track_loss, track_targets
from .roi_align import MultiLevelRoIAlign
from .temporal_roi_align import TemporalRoIAlign

HEAD_NAMES = ("box", "mask", "track")


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image box lists -> one [R, 5] tensor of (image index, x1, y1, x2, y2)."""
    if not boxes:
        return torch.zeros((0, 5))
    indices = [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(indices), torch.cat(boxes)], dim=1)


def pool_rois(
    pooler: nn.Module, features: list[Tensor], rois: Tensor, support_features: list[Tensor] | None
) -> Tensor:
    """Pool RoIs with either extractor; only a temporal one sees the support frames."""
    if isinstance(pooler, TemporalRoIAlign):
        return pooler(features, rois, support_features)
    return pooler(features, rois)


class MaskTrackRoIHeads(RoIHeads):
    def __init__(
        self,
        box_roi_pool: MultiLevelRoIAlign | TemporalRoIAlign,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_roi_pool: MultiLevelRoIAlign | TemporalRoIAlign,
        mask_head: nn.Module,
        mask_predictor: nn.Module,
        track_roi_pool: MultiLevelRoIAlign | TemporalRoIAlign,
        track_head: TrackHead,
        reference_roi_pool: MultiLevelRoIAlign,
        *,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 10,
    ) -> None:
        super().__init__(
            box_roi_pool,
            box_head,
            box_predictor,
            fg_iou_thresh,
            bg_iou_thresh,
            batch_size_per_image,
            positive_fraction,
            None,
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        self.track_roi_pool = track_roi_pool
        self.track_head = track_head
        # Reference-frame instances are pooled from their own frame only (the
        # memory the tracker compares against at inference is per frame too).
        self.reference_roi_pool = reference_roi_pool

    def _box_branch(
        self, features: list[Tensor], rois: Tensor, support_features: list[Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        roi_features = pool_rois(self.box_roi_pool, features, rois, support_features)
        class_logits, box_regression = self.box_predictor(self.box_head(roi_features))
        return roi_features, class_logits, box_regression

    def _masks(self, features: list[Tensor], rois: Tensor, support_features: list[Tensor] | None) -> Tensor:
        roi_features = pool_rois(self.mask_roi_pool, features, rois, support_features)
        return self.mask_predictor(self.mask_head(roi_features))

    def forward_train(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        targets: list[dict[str, Tensor]],
        support_features: list[Tensor] | None,
        reference_features: list[Tensor],
        reference_targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        rois = boxes_to_rois(proposals)
        box_features, class_logits, box_regression = self._box_branch(features, rois, support_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)

        positive = [torch.where(lbl > 0)[0] for lbl in labels]
        positive_boxes = [p[i] for p, i in zip(proposals, positive)]
        positive_matched = [m[i] for m, i in zip(matched_idxs, positive)]
        positive_rois = boxes_to_rois(positive_boxes)

        mask_logits = self._masks(features, positive_rois, support_features)
        loss_mask = maskrcnn_loss(
            mask_logits,
            positive_boxes,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            positive_matched,
        )

        if self.track_roi_pool is self.box_roi_pool:
            offsets = torch.cumsum(torch.tensor([0] + [len(p) for p in proposals[:-1]]), 0)
            flat = torch.cat([i + int(o) for i, o in zip(positive, offsets)])
            track_features = box_features[flat]
        else:
            track_features = pool_rois(self.track_roi_pool, features, positive_rois, support_features)
        embeddings = self.track_head(track_features).split([len(p) for p in positive_boxes])

        reference_rois = boxes_to_rois([t["boxes"].to(rois.dtype) for t in reference_targets])
        reference_embeddings = self.track_head(self.reference_roi_pool(reference_features, reference_rois))
        reference_embeddings = reference_embeddings.split([len(t["boxes"]) for t in reference_targets])

        logits, track_target = [], []
        for emb, ref_emb, target, ref_target, matched in zip(
            embeddings, reference_embeddings, targets, reference_targets, positive_matched
        ):
            logits.append(track_logits(emb, ref_emb))
            track_target.append(track_targets(target["instance_ids"][matched], ref_target["instance_ids"]))

        return {
            "loss_classifier": loss_classifier,
            "loss_box_reg": loss_box_reg,
            "loss_mask": loss_mask,
            "loss_track": track_loss(logits, track_target),
        }

    def forward_inference(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        support_features: list[Tensor] | None,
    ) -> list[dict[str, Tensor]]:
        _, class_logits, box_regression = self._box_branch(features, boxes_to_rois(proposals), support_features)
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        # As in the original, masks and embeddings are computed for the final
        # detections, not for the proposals they came from.
        detection_rois = boxes_to_rois(boxes)
        mask_probs = maskrcnn_inference(self._masks(features, detection_rois, support_features), labels)
        track_features = pool_rois(self.track_roi_pool, features, detection_rois, support_features)
        embeddings = self.track_head(track_features).split([len(b) for b in boxes])
        return [
            {"boxes": b, "scores": s, "labels": lbl, "masks": m, "embeddings": e}
            for b, s, lbl, m, e in zip(boxes, scores, labels, mask_probs, embeddings)
        ]


def validate_temporal_heads(heads: Iterable[str]) -> frozenset[str]:
    heads = frozenset(heads)
    unknown = sorted(heads - set(HEAD_NAMES))
    if unknown:
        raise ValueError(f"unknown temporal head(s) {unknown}; valid: {list(HEAD_NAMES)}")
    return heads
