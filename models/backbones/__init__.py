"""Backbones of the detector: ResNet/ResNeXt-FPN, EfficientNet-Lite0 + slim FPN and
NanoDet-g's CSP trunk + slim FPN.

Every builder returns a module with ``out_channels``, ``strides`` (4..64) and
``forward(images) -> OrderedDict`` with keys ``p2..p6``.
"""

from .efficientnet_lite import EfficientNetLite0, lite_fpn_backbone, load_lite0_imagenet
from .nanodet_fpn import nano_fpn_backbone
from .resnet import resnet_fpn_backbone

__all__ = [
    "EfficientNetLite0",
    "lite_fpn_backbone",
    "load_lite0_imagenet",
    "nano_fpn_backbone",
    "resnet_fpn_backbone",
]
