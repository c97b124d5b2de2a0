"""ResNet / ResNeXt trunks with an FPN, for the heavy presets.

This module owns the ``r50``, ``r101``, ``x101_32x4d`` and ``x101_64x4d``
backbones: torchvision's bottleneck ResNet (stride on the 3x3 conv) with
frozen batch norm, the mmdet ``frozen_stages`` rule, loading of a local
torchvision-format ImageNet checkpoint, and torchvision's FPN (256 channels)
plus a max-pooled P6.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from .fpn import FPNBackbone, check_frozen_stages, describe_key_mismatch, set_frozen

RESNET_LAYERS: dict[int, list[int]] = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
# Bottleneck expansion 4: layer1..layer4 end at 256, 512, 1024, 2048 channels
TRUNK_CHANNELS: tuple[int, ...] = (256, 512, 1024, 2048)


class ResNetTrunk(nn.Module):
    """Stem and the four residual stages of a torchvision ResNet, no pooling head.

    Submodule names are torchvision's (``conv1``, ``bn1``, ``layer1``...), so a
    torchvision ImageNet state dict loads without renaming.
    """

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.out_channels_list: tuple[int, ...] = TRUNK_CHANNELS

    def stages(self) -> list[list[nn.Module]]:
        """Freezing units in mmdet order: stem (conv1/bn1), layer1, ..., layer4."""
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return OrderedDict(c2=c2, c3=c3, c4=c4, c5=c5)


def _unwrap_state_dict(checkpoint: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(checkpoint, dict):
        for wrapper_key in ("state_dict", "model"):
            if isinstance(checkpoint.get(wrapper_key), dict):
                checkpoint = checkpoint[wrapper_key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (optionally under 'state_dict' or 'model')")
    return checkpoint


def load_resnet_checkpoint(trunk: ResNetTrunk, path: str | os.PathLike) -> None:
    """Load a local torchvision-format ImageNet state dict into ``trunk``.

    ``fc.*`` is ignored, and so is ``*.num_batches_tracked`` (frozen BN keeps
    no counter). Every other key must exist in the trunk with the same shape,
    and every trunk tensor must be provided; otherwise ``ValueError`` names the
    file and the offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ResNet checkpoint not found: {path}")
    # weights_only: a checkpoint is data, never code to run
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    source = {
        key: value
        for key, value in _unwrap_state_dict(checkpoint, path).items()
        if not key.startswith("fc.") and not key.endswith(".num_batches_tracked")
    }
    target = trunk.state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    mis_shaped = sorted(
        f"{key} (checkpoint {tuple(source[key].shape)} vs model {tuple(target[key].shape)})"
        for key in set(source) & set(target)
        if source[key].shape != target[key].shape
    )
    problems = describe_key_mismatch(missing, unexpected, mis_shaped)
    if problems:
        raise ValueError(f"{path} does not fit this ResNet trunk; {problems}")
    trunk.load_state_dict(source, strict=True)


RANDOM_INIT_RESIDUAL_SCALE = 0.1


def resnet_fpn_backbone(
    depth: int,
    groups: int = 1,
    width_per_group: int = 64,
    fpn_channels: int = 256,
    frozen_stages: int = 1,
    pretrained_path: str | os.PathLike | None = None,
) -> FPNBackbone:
    """Build a ResNet-/ResNeXt-FPN backbone returning ``p2..p6`` (strides 4..64).

    Args:
        depth: 50 or 101.
        groups, width_per_group: ResNeXt cardinality and per-group width of the
            bottleneck 3x3 conv (1/64 = ResNet; 32/4 and 64/4 = ResNeXt-101
            32x4d and 64x4d).
        fpn_channels: width of every pyramid level.
        frozen_stages: -1 freezes nothing; 0 freezes the stem (conv1/bn1);
            k >= 1 also freezes layer1..layer{k} (at most 4). BN is always frozen.
        pretrained_path: local torchvision-format ImageNet checkpoint to load
            into the trunk before freezing; ``None`` keeps random init, with
            every block's last BN scale at ``RANDOM_INIT_RESIDUAL_SCALE``:
            frozen BN does not normalise, so at scale 1 a random 101-layer
            trunk's activations grow ~1e5x. Not zero (Goyal et al.'s choice for
            trainable BN): a frozen zero scale would keep the branch dead.
    """
    if depth not in RESNET_LAYERS:
        raise ValueError(f"depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
    check_frozen_stages(frozen_stages, num_stages=4)
    resnet = ResNet(
        Bottleneck,
        RESNET_LAYERS[depth],
        groups=groups,
        width_per_group=width_per_group,
        # detection batches are a few images per device: BN statistics stay ImageNet's
        norm_layer=FrozenBatchNorm2d,
    )
    trunk = ResNetTrunk(resnet)
    if pretrained_path is not None:
        load_resnet_checkpoint(trunk, pretrained_path)
    else:
        for block in trunk.modules():
            if isinstance(block, Bottleneck):
                block.bn3.weight.fill_(RANDOM_INIT_RESIDUAL_SCALE)
    set_frozen(trunk.stages()[: frozen_stages + 1])
    fpn = FeaturePyramidNetwork(in_channels_list=list(TRUNK_CHANNELS), out_channels=fpn_channels)
    return FPNBackbone(trunk, fpn, out_channels=fpn_channels)


__all__ = ["ResNetTrunk", "load_resnet_checkpoint", "resnet_fpn_backbone"]
