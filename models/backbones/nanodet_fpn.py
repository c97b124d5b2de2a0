"""NanoDet-g's COCO-detection-trained CSP trunk with a slim FPN, for the ``nano`` preset.

This module owns:

* :class:`NanoTrunk`: :class:`~models.backbones.nanodet_csp.NanoDetCspNet`
  taking the detector's RGB input, flipping it to the BGR order the weights
  were trained on inside the network (so eager runs and exported graphs both
  carry it);
* :data:`INPUT_MEAN` / :data:`INPUT_STD`: NanoDet's BGR 0..255 statistics
  rewritten for RGB in [0, 1], for the detector's transform;
* :func:`load_nanodet_trunk`: the trunk's tensors from the converted
  NanoDet-g checkpoint (``make nanodet`` writes ``models/teacher/nanodet-g.pt``),
  read by the teacher's own strict loader;
* :func:`nano_fpn_backbone`: trunk + :class:`~models.backbones.fpn.SlimFPN`.

The detector's input is RGB in [0, 1]; its transform computes
``(rgb - INPUT_MEAN) / INPUT_STD`` per channel, and :class:`NanoTrunk`
reverses the channels. Per channel that is ``(255 x - m) / s`` with NanoDet's
``m``, ``s``: what ``models.teacher.nanodet_io.normalize_bgr`` feeds the
trunk, up to float32 rounding.

It may import torch, the other backbone modules and the NanoDet-g teacher
(``models.teacher``: its statistics, checkpoint path and loader); nothing from
``service`` or ``export``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from torch import Tensor

from models.teacher.nanodet_convert import DEFAULT_PT
from models.teacher.nanodet_io import INPUT_MEAN_BGR, INPUT_STD_BGR

from .fpn import FPNBackbone, SlimFPN, check_frozen_stages, set_frozen
from .nanodet_csp import TRUNK_CHANNELS, NanoDetCspNet

# NanoDet normalises BGR pixels in 0..255; the detector's transform sees RGB in [0, 1]:
# reverse the channel order and divide by 255 (the ratio (x - m) / s is then unchanged).
PIXEL_SCALE = 255.0
INPUT_MEAN: tuple[float, float, float] = tuple(float(m) / PIXEL_SCALE for m in INPUT_MEAN_BGR[::-1])
INPUT_STD: tuple[float, float, float] = tuple(float(s) / PIXEL_SCALE for s in INPUT_STD_BGR[::-1])
# Where `make nanodet` writes the converted checkpoint (the teacher's default).
DEFAULT_NANODET_CHECKPOINT: Path = DEFAULT_PT


class NanoTrunk(NanoDetCspNet):
    """NanoDet-g's trunk on RGB input: ``images [B, 3, H, W]`` (normalised RGB,
    see the module docstring) are flipped to BGR, then run through
    :class:`NanoDetCspNet` -> ``OrderedDict`` ``c2..c5`` (64/128/256/512
    channels at strides 4/8/16/32).

    Submodule names equal :class:`NanoDetCspNet`'s, so the converted
    checkpoint's ``backbone.*`` tensors load unchanged. Freezing units
    (:meth:`stages`): 0 = stem (stride 2, with the max pool), 1..4 = stage1..stage4.
    """

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        # RGB -> BGR here rather than by permuting the stem's weights: the tensors
        # stay the checkpoint's, and the flip costs one copy of the input.
        return super().forward(images.flip(1))


def load_nanodet_trunk(trunk: NanoDetCspNet, path: str | os.PathLike) -> None:
    """Copy the trunk tensors of the converted NanoDet-g checkpoint at ``path`` into ``trunk``.

    The file is read by ``NanoDet.from_checkpoint`` (format-checked, strict over
    the whole detector); its ``backbone`` then loads into ``trunk`` strictly,
    so every trunk tensor comes from the file. A missing file raises
    ``FileNotFoundError`` that says how to make it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"NanoDet-g checkpoint not found: {path}; run `make nanodet` to convert it "
            "(or build with pretrained_backbone=False for a randomly initialised trunk)"
        )
    # imported here: the teacher's network module imports this package's nanodet_csp
    from models.teacher.nanodet import NanoDet

    trunk.load_state_dict(NanoDet.from_checkpoint(path).backbone.state_dict(), strict=True)


def nano_fpn_backbone(
    fpn_channels: int = 128,
    pretrained: bool | str | os.PathLike = True,
    frozen_stages: int = 1,
) -> FPNBackbone:
    """Build the NanoDet-g CSP + slim-FPN backbone returning ``p2..p6`` (strides 4..64).

    Args:
        fpn_channels: width of every pyramid level.
        pretrained: ``True`` loads the trunk from :data:`DEFAULT_NANODET_CHECKPOINT`,
            a path loads that file (same format), ``False`` keeps random init.
        frozen_stages: -1 freezes nothing; k in 0..4 freezes the units 0..k of
            :meth:`NanoTrunk.stages` (0 = stem, 1 adds stage1 (C2), ...). The
            trunk has no norm layers (its BN was folded into conv biases).

    The neck is :class:`SlimFPN`; its GroupNorm matters here too: the trunk's
    outputs are small (per-level std 0.08-0.18 on vtest frames) and the norm
    brings every level to unit scale before the heads.

    Expects normalised RGB images (see the module docstring).
    """
    check_frozen_stages(frozen_stages, num_stages=4)
    trunk = NanoTrunk()
    if pretrained is not False:
        load_nanodet_trunk(trunk, DEFAULT_NANODET_CHECKPOINT if pretrained is True else pretrained)
    set_frozen(trunk.stages()[: frozen_stages + 1])
    fpn = SlimFPN(list(TRUNK_CHANNELS), fpn_channels)
    return FPNBackbone(trunk, fpn, out_channels=fpn_channels)


__all__ = [
    "DEFAULT_NANODET_CHECKPOINT",
    "INPUT_MEAN",
    "INPUT_STD",
    "NanoTrunk",
    "load_nanodet_trunk",
    "nano_fpn_backbone",
]
