"""NanoDet-g in PyTorch: CSP trunk + PAN + GFL head, box decoding and ``detect``.

This module owns the detector's network above the trunk and its test-time
decoding:

* :class:`NanoDetPAN`: 1x1 laterals (bias, no activation), a top-down path
  (bilinear x2 upsampling + add) then a bottom-up path (bilinear x0.5
  downsampling + add), all levels 128 channels;
* :class:`NanoDetHead`: per level, one 3x3 conv (BN folded, LeakyReLU 0.1)
  and one 1x1 conv to 80 class logits + 4 x 11 box-distribution bins; the
  outputs are laid out as the TF.js graph's (sigmoid scores ``[B, HW, 80]``,
  raw bins ``[B, HW, 44]``);
* :class:`NanoDet`: the whole network (``models.backbones.nanodet_csp``
  trunk, neck, head), :meth:`NanoDet.from_tfjs` / :meth:`NanoDet.from_checkpoint`,
  :meth:`NanoDet.features` (the trunk's C2..C5 for a ``nano`` backbone) and
  :meth:`NanoDet.detect` (BGR frame -> boxes, scores, labels);
* :class:`NanoDetEndToEnd`: normalisation + network + decoding + NMS as one
  module, what ``detect`` runs and what ``nanodet_onnx`` exports;
* decoding, written once: :func:`anchor_centers`, :func:`distribution_integral`,
  :func:`decode_boxes` and :func:`select_detections` (per-class NMS with
  ``torchvision.ops.nms``).

It may import torch, torchvision, ``models.backbones.nanodet_csp`` and the
teacher's own ``nanodet_io`` / ``nanodet_weights``; nothing from ``service``
or ``export``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from models.backbones.nanodet_csp import TRUNK_CHANNELS, ConvAct, NanoDetCspNet

from .nanodet_io import (
    DEFAULT_SCORE_THRESH,
    INPUT_MEAN_BGR,
    INPUT_SIZE,
    INPUT_STD_BGR,
    MAX_DETECTIONS,
    NMS_IOU,
    NUM_CLASSES,
    REG_MAX,
    STRIDES,
    boxes_to_image,
    check_bgr,
    resize_bgr,
)

NECK_CHANNELS = 128  # nanodet-g.yml: PAN out_channels = head input_channel = feat_channels
# The neck reads C3..C5 of the trunk (out_stages [3, 4, 5] in nanodet-g.yml).
NECK_LEVELS: tuple[str, ...] = ("c3", "c4", "c5")

LevelOutputs = list[tuple[Tensor, Tensor]]


class NanoDetPAN(nn.Module):
    """``[c3, c4, c5]`` (128/256/512 ch at strides 8/16/32) -> three maps of ``out_channels``, same sizes."""

    def __init__(self, in_channels: Sequence[int] = TRUNK_CHANNELS[1:], out_channels: int = NECK_CHANNELS) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        levels = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(levels) - 1, 0, -1):  # top-down
            levels[i - 1] = levels[i - 1] + F.interpolate(
                levels[i], size=levels[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        for i in range(len(levels) - 1):  # bottom-up: bilinear at half size (a 2x2 mean for even sizes)
            levels[i + 1] = levels[i + 1] + F.interpolate(
                levels[i], size=levels[i + 1].shape[-2:], mode="bilinear", align_corners=False)
        return levels


class NanoDetHead(nn.Module):
    """Per level ``[B, C, H, W]`` -> ``(scores [B, H*W, num_classes]`` after sigmoid,
    ``box_distributions [B, H*W, 4 * (reg_max + 1)])``, rows in raster order.

    Class logits and box bins share one 1x1 conv (``share_cls_reg``); the
    bins of each side (left, top, right, bottom) are consecutive.
    """

    def __init__(self, num_levels: int = len(STRIDES), in_channels: int = NECK_CHANNELS,
                 feat_channels: int = NECK_CHANNELS, num_classes: int = NUM_CLASSES, reg_max: int = REG_MAX) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        outputs = num_classes + 4 * (reg_max + 1)
        self.level_convs = nn.ModuleList(ConvAct(in_channels, feat_channels, 3) for _ in range(num_levels))
        self.predictors = nn.ModuleList(nn.Conv2d(feat_channels, outputs, 1) for _ in range(num_levels))

    def forward(self, levels: Sequence[Tensor]) -> LevelOutputs:
        outputs = []
        for conv, predictor, x in zip(self.level_convs, self.predictors, levels):
            logits, bins = predictor(conv(x)).flatten(2).split([self.num_classes, 4 * (self.reg_max + 1)], dim=1)
            outputs.append((logits.sigmoid().transpose(1, 2), bins.transpose(1, 2)))
        return outputs


def anchor_centers(height: int, width: int, stride: int, device: torch.device | None = None) -> Tensor:
    """Centres ``[H*W, 2]`` (x, y) of a level's cells in input pixels, raster order:
    ``((col + 0.5) * stride, (row + 0.5) * stride)`` as NanoDet v0.x's GFL head places them."""
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) * stride
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.flatten(), grid_y.flatten()), dim=1)


def distribution_integral(box_distributions: Tensor, reg_max: int = REG_MAX) -> Tensor:
    """GFL's integral: ``[..., 4 * (reg_max + 1)]`` bins -> ``[..., 4]`` expected distances
    ``sum_i softmax(bins)_i * i`` per side, in units of the stride."""
    bins = box_distributions.unflatten(-1, (4, reg_max + 1)).softmax(dim=-1)
    return bins @ torch.arange(reg_max + 1, dtype=bins.dtype, device=bins.device)


def decode_boxes(level_outputs: LevelOutputs, input_hw: tuple[int, int], strides: Sequence[int] = STRIDES,
                 reg_max: int = REG_MAX) -> tuple[Tensor, Tensor]:
    """Head outputs of one image's levels (batch of 1) -> ``boxes [A, 4]`` xyxy in input
    pixels, clipped to ``input_hw``, and ``scores [A, num_classes]``; A = all cells of all levels."""
    height, width = input_hw
    boxes, scores = [], []
    for (level_scores, level_bins), stride in zip(level_outputs, strides):
        rows, cols = -(-height // stride), -(-width // stride)
        centers = anchor_centers(rows, cols, stride, level_bins.device)
        distances = distribution_integral(level_bins[0], reg_max) * stride
        level_boxes = torch.cat((centers - distances[:, :2], centers + distances[:, 2:]), dim=1)
        limit = torch.tensor([width, height, width, height], dtype=level_boxes.dtype, device=level_boxes.device)
        boxes.append(torch.minimum(level_boxes.clamp(min=0), limit))
        scores.append(level_scores[0])
    return torch.cat(boxes), torch.cat(scores)


def select_detections(boxes: Tensor, scores: Tensor, score_thresh: float | Tensor, iou_thresh: float = NMS_IOU,
                      classes: Sequence[int] | None = None, max_detections: int = MAX_DETECTIONS,
                      input_hw: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> tuple[Tensor, Tensor, Tensor]:
    """mmdet-style multiclass NMS: every (cell, class) with score > ``score_thresh`` is a
    candidate; NMS per class; the ``max_detections`` best survive, best first.

    ``classes``: only these class ids compete (``(PERSON,)`` for person-only).
    Returns ``boxes [N, 4]``, ``scores [N]``, ``labels [N]`` (int64 class ids).
    """
    if classes is not None:
        class_ids = torch.as_tensor(list(classes), dtype=torch.int64, device=scores.device)
        scores = scores[:, class_ids]
    else:
        class_ids = torch.arange(scores.shape[1], device=scores.device)
    cells, columns = torch.nonzero(scores > score_thresh, as_tuple=True)
    candidate_boxes, candidate_scores = boxes[cells], scores[cells, columns]
    labels = class_ids[columns]
    # Per-class NMS by shifting each class's boxes apart (torchvision's batched_nms "coordinate
    # trick"), always: eager batched_nms switches to a per-class loop above 4000 values, and the
    # two can round differently, so this keeps PyTorch and the ONNX export on one path.
    # Boxes are clipped to the input, so input-size + 1 separates the classes.
    offsets = labels.to(candidate_boxes.dtype) * (max(input_hw) + 1)
    keep = nms(candidate_boxes + offsets[:, None], candidate_scores, iou_thresh)[:max_detections]
    return candidate_boxes[keep], candidate_scores[keep], labels[keep]


class NanoDet(nn.Module):
    """NanoDet-g: ``images [B, 3, H, W]`` (normalised BGR, see ``nanodet_io``;
    H, W multiples of 32, 416 as trained) -> per stride 8/16/32 ``(scores
    [B, H*W/s^2, 80], box_distributions [B, H*W/s^2, 44])``, equal to the
    TF.js graph's ``Identity .. Identity_2`` and ``Identity_3 .. Identity_5``.
    """

    def __init__(self, backbone: NanoDetCspNet | None = None, neck: NanoDetPAN | None = None,
                 head: NanoDetHead | None = None, strides: Sequence[int] = STRIDES) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else NanoDetCspNet()
        self.neck = neck if neck is not None else NanoDetPAN()
        self.head = head if head is not None else NanoDetHead()
        self.strides = tuple(strides)

    @classmethod
    def from_tfjs(cls, model_json: str | Path) -> NanoDet:
        """Build and load from the TF.js graph model (``nanodet.json`` + ``nanodet.bin``);
        raises ``TfjsMappingError`` if any weight is left over or any tensor left unset."""
        from .nanodet_weights import load_tfjs_weights
        from .tfjs_graph import read_tfjs_graph

        model = cls()
        load_tfjs_weights(model, read_tfjs_graph(model_json))
        return model.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> NanoDet:
        """Load what ``python -m models.teacher.nanodet_convert`` saved (strict)."""
        from .nanodet_weights import load_checkpoint

        model = cls()
        load_checkpoint(model, path)
        return model.eval()

    def features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """The trunk's multi-scale outputs: ``c2 [B, 64, H/4, W/4]``, ``c3 [B, 128, H/8, W/8]``,
        ``c4 [B, 256, H/16, W/16]``, ``c5 [B, 512, H/32, W/32]`` (``self.backbone`` is the module)."""
        return self.backbone(images)

    def forward(self, images: Tensor) -> LevelOutputs:
        features = self.backbone(images)
        return self.head(self.neck([features[name] for name in NECK_LEVELS]))

    @torch.no_grad()
    def detect(self, bgr_image: np.ndarray, score_thresh: float = DEFAULT_SCORE_THRESH,
               classes: Sequence[int] | None = None, iou_thresh: float = NMS_IOU,
               max_detections: int = MAX_DETECTIONS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One ``HxWx3`` uint8 BGR frame -> ``boxes [N, 4]`` float32 xyxy in the frame's pixels,
        ``scores [N]`` float32, ``labels [N]`` int64 COCO ids (0 = person), best first.
        ``classes=(PERSON,)`` runs NMS over people only."""
        image_hw = check_bgr(bgr_image)
        device = next(self.parameters()).device
        resized = torch.from_numpy(resize_bgr(bgr_image, INPUT_SIZE)[None]).to(device)
        detector = NanoDetEndToEnd(self, classes, iou_thresh, max_detections)
        boxes, scores, labels = detector(resized, torch.tensor(float(score_thresh), device=device))
        return boxes_to_image(boxes.cpu().numpy(), image_hw), scores.cpu().numpy(), labels.cpu().numpy()


class NanoDetEndToEnd(nn.Module):
    """The whole detector as one graph, what :meth:`NanoDet.detect` runs and the ONNX export holds.

    ``image [1, S, S, 3]`` uint8 BGR, already stretched to the input size
    (``nanodet_io.resize_bgr``), and ``score_threshold []`` float32 ->
    ``boxes [N, 4]`` float32 xyxy in input pixels, ``scores [N]`` float32,
    ``labels [N]`` int64, best first. Normalisation is done here, in float32,
    with the same operations as ``nanodet_io.normalize_bgr``.
    """

    def __init__(self, model: NanoDet, classes: Sequence[int] | None = None, iou_thresh: float = NMS_IOU,
                 max_detections: int = MAX_DETECTIONS) -> None:
        super().__init__()
        self.model = model
        self.classes = None if classes is None else tuple(int(c) for c in classes)
        self.iou_thresh = float(iou_thresh)
        self.max_detections = int(max_detections)
        self.register_buffer("mean", torch.tensor(INPUT_MEAN_BGR, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(INPUT_STD_BGR, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, image: Tensor, score_threshold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        input_hw = (int(image.shape[1]), int(image.shape[2]))
        inputs = (image.permute(0, 3, 1, 2).to(torch.float32) - self.mean) / self.std
        boxes, scores = decode_boxes(self.model(inputs), input_hw, self.model.strides, self.model.head.reg_max)
        return select_detections(boxes, scores, score_threshold, self.iou_thresh, self.classes,
                                 self.max_detections, input_hw)
