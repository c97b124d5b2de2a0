"""The per-frame network with its state made explicit, as exported to ONNX.

``FrameGraph`` wraps a trained ``MaskTrackRCNN`` (sharing its modules and
weights) and computes what ``MaskTrackRCNN.forward_inference`` computes for one
frame, written so that ``torch.export`` can trace it: no Python branch depends
on tensor values and every data-dependent size goes through ``nonzero``, NMS or
``topk``. The tracker stays outside.

Inputs::

    image       float32 [1, 3, H, W]  RGB in [0, 1], already resized to the
                                      model's working size (``working_size``)
    support_p2  float32 [T, C, H/4, W/4]   this stream's cache: the last T
    ...                                    frames' features, oldest first;
    support_p5  float32 [T, C, H/32, W/32] T may be 0

(the level sizes are those of the image padded up to a multiple of 32).

Outputs::

    boxes       float32 [N, 4]   x1 y1 x2 y2 in working-size pixels
    scores      float32 [N]
    labels      int64   [N]      1..num_classes
    mask_probs  float32 [N, 1, M, M]  per-box mask probabilities (M = 28),
                                      pasted into the image outside the graph
    embeddings  float32 [N, D]   track embeddings for the tracker
    features_p2 ... features_p5  float32 [1, C, H_l, W_l]  this frame's entry
                                      for the cache

Temporal RoI Align's search is one call of ``torch.ops.cellwatch.
most_similar_roi_align``; ``export.onnx`` decides how that node is written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

from models.masktrack_rcnn import MaskTrackRCNN
from models.roi_align import MultiLevelRoIAlign, map_rois_to_levels
from models.temporal_roi_align import TemporalRoIAlign

from .spec import CACHE_LEVELS, padded_size


class FrameGraph(nn.Module):
    """One frame of ``model`` with explicit support-feature state (see module doc)."""

    def __init__(self, model: MaskTrackRCNN) -> None:
        super().__init__()
        if model.num_roi_levels != len(CACHE_LEVELS):
            raise ValueError(f"the export expects {len(CACHE_LEVELS)} RoI levels, model has {model.num_roi_levels}")
        rpn, heads = model.rpn, model.roi_heads
        if rpn.score_thresh != 0.0:
            raise ValueError("the export assumes the RPN's score threshold is 0")
        self.backbone = model.backbone
        self.rpn_head = rpn.head
        self.rpn_coder = rpn.box_coder
        self.rpn_pre_nms = int(rpn._pre_nms_top_n["testing"])
        self.rpn_post_nms = int(rpn._post_nms_top_n["testing"])
        self.rpn_nms = float(rpn.nms_thresh)
        self.rpn_min_size = float(rpn.min_size)
        for i, anchors in enumerate(rpn.anchor_generator.cell_anchors):
            self.register_buffer(f"cell_anchors_{i}", anchors.clone().float(), persistent=False)
        self.num_anchor_levels = len(rpn.anchor_generator.cell_anchors)

        self.box_pool = heads.box_roi_pool
        self.box_head = heads.box_head
        self.box_predictor = heads.box_predictor
        self.box_coder = heads.box_coder
        self.mask_pool = heads.mask_roi_pool
        self.mask_head = heads.mask_head
        self.mask_predictor = heads.mask_predictor
        self.track_pool = heads.track_roi_pool
        self.track_head = heads.track_head
        self.score_thresh = float(heads.score_thresh)
        self.nms_thresh = float(heads.nms_thresh)
        self.detections_per_img = int(heads.detections_per_img)

        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ RPN
    def _anchors(self, level: int, feature: Tensor, padded_h: int, padded_w: int) -> Tensor:
        height, width = feature.shape[-2:]
        stride_h, stride_w = padded_h // height, padded_w // width
        shift_x = torch.arange(width, device=feature.device, dtype=torch.int32).float() * stride_w
        shift_y = torch.arange(height, device=feature.device, dtype=torch.int32).float() * stride_h
        grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
        grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)
        shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=1)
        cell = getattr(self, f"cell_anchors_{level}")
        return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)

    def proposals(self, features: list[Tensor], image_h: int, image_w: int, padded_h: int, padded_w: int) -> Tensor:
        logits, deltas = self.rpn_head(features)
        boxes, scores, level_ids = [], [], []
        for level, (feature, logit, delta) in enumerate(zip(features, logits, deltas)):
            anchors = self._anchors(level, feature, padded_h, padded_w)
            num_anchors = logit.shape[1]
            # [1, A, H, W] -> [H*W*A] and [1, 4A, H, W] -> [H*W*A, 4], as torchvision orders anchors
            logit = logit.permute(0, 2, 3, 1).reshape(-1)
            delta = delta.view(1, num_anchors, 4, delta.shape[-2], delta.shape[-1])
            delta = delta.permute(0, 3, 4, 1, 2).reshape(-1, 4)
            top = min(self.rpn_pre_nms, logit.shape[0])
            top_logit, top_index = logit.topk(top)
            decoded = self.rpn_coder.decode_single(delta[top_index], anchors[top_index])
            boxes.append(decoded)
            scores.append(torch.sigmoid(top_logit))
            level_ids.append(torch.full_like(top_index, level))
        boxes = box_ops.clip_boxes_to_image(torch.cat(boxes), (image_h, image_w))
        scores, level_ids = torch.cat(scores), torch.cat(level_ids)
        keep = box_ops.remove_small_boxes(boxes, self.rpn_min_size)
        boxes, scores, level_ids = boxes[keep], scores[keep], level_ids[keep]
        keep = _batched_nms(boxes, scores, level_ids, self.rpn_nms)[: self.rpn_post_nms]
        return boxes[keep]

    # ------------------------------------------------------------ RoI heads
    def pool(self, pooler: nn.Module, features: list[Tensor], rois: Tensor, support: list[Tensor]) -> Tensor:
        if isinstance(pooler, TemporalRoIAlign):
            extractor = pooler.roi_align
        elif isinstance(pooler, MultiLevelRoIAlign):
            extractor = pooler
        else:
            raise TypeError(f"cannot export RoI extractor {type(pooler).__name__}")
        roi_feats = _multilevel_roi_align(extractor, features, rois)
        if not isinstance(pooler, TemporalRoIAlign):
            return roi_feats
        levels = pooler.search_levels(rois)
        batch_index = torch.zeros_like(levels)
        found = torch.ops.cellwatch.most_similar_roi_align(
            roi_feats,
            levels,
            batch_index,
            [s.unsqueeze(0) for s in support],
            pooler.num_most_similar,
            pooler.memory_budget_mb,
        )
        frames = torch.cat([roi_feats.unsqueeze(0), found])
        return _aggregate(frames, pooler)

    def detections(
        self, features: list[Tensor], proposals: Tensor, support: list[Tensor], image_h: int, image_w: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        rois = _rois(proposals)
        roi_features = self.pool(self.box_pool, features, rois, support)
        class_logits, box_regression = self.box_predictor(self.box_head(roi_features))
        num_classes = class_logits.shape[-1]
        boxes = self.box_coder.decode_single(box_regression, proposals).reshape(-1, num_classes, 4)
        boxes = box_ops.clip_boxes_to_image(boxes, (image_h, image_w))
        scores = F.softmax(class_logits, -1)
        labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        keep = torch.nonzero(scores > self.score_thresh).squeeze(1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = _batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return boxes[keep], scores[keep], labels[keep]

    def forward(
        self, image: Tensor, support_p2: Tensor, support_p3: Tensor, support_p4: Tensor, support_p5: Tensor
    ) -> tuple[Tensor, ...]:
        image_h, image_w = image.shape[-2], image.shape[-1]
        padded_h, padded_w = padded_size(image_h, image_w)
        x = (image - self.mean) / self.std
        x = F.pad(x, (0, padded_w - image_w, 0, padded_h - image_h))
        pyramid = list(self.backbone(x).values())
        features = pyramid[: len(CACHE_LEVELS)]
        support = [support_p2, support_p3, support_p4, support_p5]

        proposals = self.proposals(pyramid[: self.num_anchor_levels], image_h, image_w, padded_h, padded_w)
        boxes, scores, labels = self.detections(features, proposals, support, image_h, image_w)

        detection_rois = _rois(boxes)
        mask_logits = self.mask_predictor(self.mask_head(self.pool(self.mask_pool, features, detection_rois, support)))
        mask_probs = mask_logits.sigmoid()
        mask_probs = mask_probs[torch.arange(labels.shape[0], device=labels.device), labels].unsqueeze(1)
        embeddings = self.track_head(self.pool(self.track_pool, features, detection_rois, support))
        return (boxes, scores, labels, mask_probs, embeddings, *features)


def _rois(boxes: Tensor) -> Tensor:
    return torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)


def _batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, threshold: float) -> Tensor:
    """torchvision's ``batched_nms`` as eager runs it at these sizes: the
    coordinate offset trick (each class moved to its own region), then NMS."""
    # Boxes are clipped to the image (coordinates >= 0), so a 0 appended keeps
    # the maximum and gives an empty input one.
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return box_ops.nms(boxes + offsets[:, None], scores, threshold)


def _multilevel_roi_align(extractor: MultiLevelRoIAlign, features: list[Tensor], rois: Tensor) -> Tensor:
    """``MultiLevelRoIAlign`` without data-dependent branches: each level pools
    the RoIs assigned to it (NonZero + RoiAlign + ScatterND once exported);
    a level with no RoIs pools an empty set."""
    levels = map_rois_to_levels(rois, extractor.num_levels, extractor.finest_scale)
    size = extractor.output_size
    out = rois.new_zeros((rois.shape[0], features[0].shape[1], size, size))
    for level, (feature, stride) in enumerate(zip(features, extractor.featmap_strides)):
        index = torch.nonzero(levels == level).squeeze(1)
        pooled = roi_align(
            feature,
            rois[index],
            output_size=(size, size),
            spatial_scale=1.0 / stride,
            sampling_ratio=extractor.sampling_ratio,
            aligned=True,
        )
        out = out.index_put((index,), pooled)
    return out


def _aggregate(frames: Tensor, pooler: TemporalRoIAlign) -> Tensor:
    """``temporal_roi_align.aggregate_frames`` vectorised over a symbolic frame count."""
    if pooler.embed is None or pooler.num_heads <= 0:
        return frames.mean(dim=0)
    num_frames, num_rois, channels, height, width = frames.shape
    heads = pooler.num_heads
    head_dim = channels // heads
    embedded = pooler.embed(frames.flatten(0, 1)).view(num_frames, num_rois, heads, head_dim, height, width)
    logits = (embedded * embedded[:1]).sum(dim=3)  # [T + 1, R, heads, h, w]
    weights = (logits / head_dim**0.5).softmax(dim=0).unsqueeze(3)
    grouped = frames.view(num_frames, num_rois, heads, head_dim, height, width)
    return (grouped * weights).sum(dim=0).view(num_rois, channels, height, width)


def most_similar_standard(
    roi_feats: Tensor,
    levels: Tensor,
    batch_index: Tensor,
    support: list[Tensor],
    num_most_similar: int,
    memory_budget_mb: float = 256.0,
) -> Tensor:
    """``most_similar_roi_align`` for one image in traceable operators only
    (NonZero, MatMul, TopK, Softmax, Gather, ScatterND once exported).

    Used as the operator's decomposition in ``standard`` mode. All RoIs belong
    to image 0 (the exported graph takes one frame), so ``batch_index`` is not
    read; each level's RoIs are searched against that level only. The memory
    budget is not applied: a frame's RoIs are searched at once.
    """
    num_rois, channels, height, width = roi_feats.shape
    num_frames = support[0].shape[1]
    # RoI-major while filling, so the scatter indexes one axis that is never
    # empty-sized (ONNX Runtime rejects a ScatterND over a 0-sized T axis).
    out = roi_feats.new_zeros((num_rois, num_frames, channels, height, width))
    cells = F.normalize(roi_feats, dim=1, eps=1e-12).flatten(2).transpose(1, 2)  # [R, h*w, C]
    for level, level_support in enumerate(support):
        frames = level_support[0]  # [T, C, H, W]
        positions = frames.shape[-2] * frames.shape[-1]
        k = min(num_most_similar, positions)
        index = torch.nonzero(levels == level).squeeze(1)
        count = index.shape[0]
        query = cells[index].reshape(-1, channels)  # [n*h*w, C]
        unit = F.normalize(frames, dim=1, eps=1e-12).flatten(2)  # [T, C, P]
        rows = frames.flatten(2).transpose(1, 2).reshape(-1, channels)  # [T*P, C]
        similarity = torch.matmul(query.unsqueeze(0), unit)  # [T, n*h*w, P]
        values, top = similarity.topk(k, dim=2)
        weights = values.softmax(dim=2)
        offset = torch.arange(num_frames, device=top.device).view(-1, 1, 1) * positions
        cells_found = count * height * width
        # explicit sizes: a -1 cannot be inferred when T is 0
        gathered = rows[(top + offset).reshape(-1)].view(num_frames, cells_found, k, channels)
        found = torch.matmul(weights.unsqueeze(2), gathered).squeeze(2)  # [T, n*h*w, C]
        found = found.view(num_frames, count, height, width, channels).permute(1, 0, 4, 2, 3)
        out = out.index_put((index,), found)
    return out.transpose(0, 1)
