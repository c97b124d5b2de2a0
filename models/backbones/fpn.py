"""Feature pyramids on top of a backbone trunk.

This module owns what turns a trunk's C2..C5 maps into the five-level pyramid
the detector consumes:

* :class:`FPNBackbone` wires a trunk (images -> ``c2..c5``) to a neck
  (``c2..c5`` -> four maps of equal width) and adds P6 by max pooling P5
  (kernel 1, stride 2), the "no extra convs" variant of the Mask R-CNN FPN.
  Its output is ``OrderedDict`` with keys ``p2..p6`` at strides 4..64.
* :class:`SlimFPN`, the light neck of the real-time preset: 1x1 laterals,
  nearest top-down merge, depthwise-separable 3x3 output convs.

The heavy presets use ``torchvision.ops.FeaturePyramidNetwork`` as the neck.
It also holds the two helpers both trunks share: freezing by stage and the
wording of checkpoint mismatches.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

TRUNK_LEVELS: tuple[str, ...] = ("c2", "c3", "c4", "c5")
PYRAMID_LEVELS: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")
PYRAMID_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)


def set_frozen(units: list[list[nn.Module]]) -> None:
    """Stop gradients for every parameter of the modules in ``units``."""
    for unit in units:
        for module in unit:
            for parameter in module.parameters():
                parameter.requires_grad_(False)


def describe_key_mismatch(missing: list[str], unused: list[str], mis_shaped: list[str], limit: int = 8) -> str:
    """One line listing (up to ``limit`` of) each kind of checkpoint mismatch; empty if none."""

    def shorten(keys: list[str]) -> str:
        more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    parts = []
    if missing:
        parts.append(f"model keys not in checkpoint: {shorten(missing)}")
    if unused:
        parts.append(f"checkpoint keys not used: {shorten(unused)}")
    if mis_shaped:
        parts.append(f"shape mismatches: {shorten(mis_shaped)}")
    return "; ".join(parts)


def check_frozen_stages(frozen_stages: int, num_stages: int) -> None:
    if not -1 <= frozen_stages <= num_stages:
        raise ValueError(f"frozen_stages must be in [-1, {num_stages}], got {frozen_stages}")


class FPNBackbone(nn.Module):
    """Trunk + neck + P6 max pool, returning ``p2..p6`` at strides 4..64.

    Args:
        body: module mapping images ``[B, 3, H, W]`` to an ordered mapping with
            keys ``c2, c3, c4, c5`` (strides 4, 8, 16, 32).
        fpn: module mapping that ordered mapping to four maps of
            ``out_channels`` channels each, in the same order (fine to coarse).
        out_channels: width of every pyramid level.
    """

    strides: tuple[int, ...] = PYRAMID_STRIDES

    def __init__(self, body: nn.Module, fpn: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        trunk_features = self.body(images)
        pyramid = list(self.fpn(trunk_features).values())
        if len(pyramid) != 4:
            raise RuntimeError(f"the FPN neck must return 4 levels, got {len(pyramid)}")
        # kernel 1 / stride 2 is plain subsampling: P6 only serves the largest anchors
        pyramid.append(F.max_pool2d(pyramid[-1], kernel_size=1, stride=2, padding=0))
        return OrderedDict(zip(PYRAMID_LEVELS, pyramid))


class SeparableConv2d(nn.Sequential):
    """3x3 depthwise then 1x1 pointwise conv, with no activation in between.

    It replaces the dense 3x3 FPN output conv: at stride 4 the dense conv would
    cost 9*C*C MACs per pixel, this one 9*C + C*C.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            OrderedDict(
                depthwise=nn.Conv2d(
                    channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False
                ),
                pointwise=nn.Conv2d(channels, channels, 1),
            )
        )


class SlimFPN(nn.Module):
    """FPN with depthwise-separable output convs, for CPU-bound real-time use.

    Lateral 1x1 convs bring every input level to ``out_channels``; each coarser
    merged level is nearest-upsampled to the next finer one and added; a
    :class:`SeparableConv2d` smooths every merged level and a GroupNorm brings
    it to unit scale. The norm is there because EfficientNet's stage outputs
    are un-normalised linear bottlenecks (std 4-14 on real photos, several
    times a ResNet's): without it the heads start with mask logits near +-30
    and track logits in the hundreds, and small-batch training diverges.
    GroupNorm, not BatchNorm, because it does not depend on the batch size.

    Args:
        in_channels_list: channels of the inputs, fine to coarse.
        out_channels: channels of every output level.
        norm_groups: GroupNorm groups (must divide ``out_channels``).
    """

    def __init__(
        self, in_channels_list: list[int] | tuple[int, ...], out_channels: int, norm_groups: int = 16
    ) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels_list)
        self.output_convs = nn.ModuleList(
            nn.Sequential(SeparableConv2d(out_channels), nn.GroupNorm(norm_groups, out_channels))
            for _ in in_channels_list
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # same init as torchvision's FPN, so both necks start alike
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        names = list(features.keys())
        inputs = list(features.values())
        if len(inputs) != len(self.lateral_convs):
            raise ValueError(f"expected {len(self.lateral_convs)} levels, got {len(inputs)}")
        merged = self.lateral_convs[-1](inputs[-1])
        outputs = [self.output_convs[-1](merged)]
        for index in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral_convs[index](inputs[index])
            # size= rather than scale_factor=2: odd input sizes round the coarse maps down
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output_convs[index](merged))
        return OrderedDict(zip(names, outputs))


__all__ = [
    "FPNBackbone",
    "SlimFPN",
    "SeparableConv2d",
    "PYRAMID_LEVELS",
    "PYRAMID_STRIDES",
    "TRUNK_LEVELS",
    "check_frozen_stages",
    "describe_key_mismatch",
    "set_frozen",
]
