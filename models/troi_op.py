"""Most-Similar RoI Align as one PyTorch operator: ``torch.ops.cellwatch.most_similar_roi_align``.

Temporal RoI Align is RoI Align + Most-Similar RoI Align + attention over
frames. Only the middle part has no standard-operator equivalent, so it is the
part registered here with ``torch.library``: a reference implementation for
every device (``temporal_roi_align.most_similar_roi_align``) and a fake
implementation that only computes the output's shape, which is what
``torch.export`` and the ONNX exporter trace through. ``TemporalRoIAlign``
calls this operator at inference, so an exported graph holds it as one node;
``export.onnx`` then either decomposes it into standard ONNX operators or
emits a single ``TemporalRoIAlign`` plugin node.

Signature::

    most_similar_roi_align(roi_feats [R, C, h, w], levels [R] int64,
                           batch_index [R] int64, support: per level [B, T, C, H_l, W_l],
                           num_most_similar: int, memory_budget_mb: float) -> [T, R, C, h, w]

Faster kernels for other devices register against the same name
(``export.kernels.troi_triton.register_cuda_kernel``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .most_similar import most_similar_roi_align as _reference

OP_NAME = "cellwatch::most_similar_roi_align"


def check_inputs(
    roi_feats: Tensor, levels: Tensor, batch_index: Tensor, support: list[Tensor], num_most_similar: int
) -> None:
    """Shape and dtype checks shared by every implementation; raise ValueError."""
    if roi_feats.dim() != 4:
        raise ValueError(f"roi_feats must be [R, C, h, w], got {tuple(roi_feats.shape)}")
    num_rois, channels = roi_feats.shape[:2]
    for name, index in (("levels", levels), ("batch_index", batch_index)):
        if index.dim() != 1 or index.shape[0] != num_rois:
            raise ValueError(f"{name} must be [R={num_rois}], got {tuple(index.shape)}")
        if index.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {index.dtype}")
    if not support:
        raise ValueError("support needs at least one level")
    if num_most_similar < 1:
        raise ValueError(f"num_most_similar must be >= 1, got {num_most_similar}")
    batch, frames = support[0].shape[:2] if support[0].dim() == 5 else (-1, -1)
    for level, tensor in enumerate(support):
        if tensor.dim() != 5 or tensor.shape[0] != batch or tensor.shape[1] != frames or tensor.shape[2] != channels:
            raise ValueError(
                f"support[{level}] must be [B, T, C={channels}, H, W] with one B and T for all levels, "
                f"got {tuple(tensor.shape)}"
            )


@torch.library.custom_op(OP_NAME, mutates_args=())
def most_similar_roi_align(
    roi_feats: Tensor,
    levels: Tensor,
    batch_index: Tensor,
    support: list[Tensor],
    num_most_similar: int,
    memory_budget_mb: float = 256.0,
) -> Tensor:
    check_inputs(roi_feats, levels, batch_index, support, num_most_similar)
    with torch.no_grad():
        return _reference(roi_feats, levels, batch_index, support, num_most_similar, memory_budget_mb)


@most_similar_roi_align.register_fake
def _fake(
    roi_feats: Tensor,
    levels: Tensor,
    batch_index: Tensor,
    support: list[Tensor],
    num_most_similar: int,
    memory_budget_mb: float = 256.0,
) -> Tensor:
    num_frames = support[0].shape[1]
    return roi_feats.new_empty((num_frames, *roi_feats.shape))
