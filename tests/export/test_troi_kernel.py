"""The fused Most-Similar RoI Align Triton kernel against the torch reference.

On machines without a GPU the kernel runs under the Triton interpreter
(TRITON_INTERPRET=1, set before triton is imported), so sizes stay small.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

from export.kernels.troi_triton import most_similar_triton  # noqa: E402
from models.most_similar import most_similar_features  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def _inputs(num_cells: int, channels: int, frames: int, positions: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    cells = torch.nn.functional.normalize(torch.randn(num_cells, channels, generator=g), dim=1)
    raw = torch.randn(frames, positions, channels, generator=g)
    unit = torch.nn.functional.normalize(raw, dim=2)
    return cells.to(DEVICE), unit.to(DEVICE), raw.to(DEVICE)


def _reference(cells, unit, raw, k):
    frames, positions, channels = unit.shape
    flat_unit = unit.reshape(frames * positions, channels)
    return most_similar_features(cells, flat_unit.t(), raw.reshape(frames * positions, channels), frames, k)


# Sizes cover: a partial last cell block (N not a multiple of 16), a partial last
# position block (P not a multiple of 32), C not a power of two, several frames.
@pytest.mark.parametrize(
    "num_cells, channels, frames, positions, k",
    [(50, 16, 1, 64, 1), (70, 24, 2, 100, 2), (33, 32, 2, 200, 4), (16, 16, 1, 3, 3)],
)
def test_matches_reference(num_cells, channels, frames, positions, k):
    cells, unit, raw = _inputs(num_cells, channels, frames, positions, seed=num_cells + k)
    out = most_similar_triton(cells, unit, raw, k)
    assert out.shape == (num_cells, frames, channels)
    torch.testing.assert_close(out, _reference(cells, unit, raw, k), rtol=0, atol=1e-4)


def test_ties_pick_lowest_position_across_blocks():
    # Positions 3 and 40 (different 32-wide blocks) share a unit vector equal to
    # every cell, but have different raw vectors: with k=1 the documented rule
    # says position 3 wins.
    cells, unit, raw = _inputs(20, 16, 1, 64, seed=7)
    direction = cells[0].clone()
    cells[:] = direction
    unit[0, 3] = direction
    unit[0, 40] = direction
    raw[0, 3] = 2.0 * direction
    raw[0, 40] = 5.0 * direction
    out = most_similar_triton(cells, unit, raw, 1)
    torch.testing.assert_close(out[:, 0], raw[0, 3].expand(20, -1), rtol=0, atol=1e-6)


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor (in bytes) any torch op produces while active.

    Bytes, not elements: the Triton interpreter re-views inputs as uint8 storage.
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for item in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel() * item.element_size())
        return result


def test_never_materialises_the_similarity_matrix():
    # Sized so that the similarity matrix (N * T * P) is larger than every input
    # and the output; the kernel keeps similarities in registers, so no torch op
    # (the wrapper's or the interpreter's) may produce a tensor that large; the
    # largest allowed is the size of the biggest input or the output.
    num_cells, channels, frames, positions, k = 64, 16, 2, 128, 2
    cells, unit, raw = _inputs(num_cells, channels, frames, positions, seed=3)
    similarity_bytes = num_cells * frames * positions * 4  # float32

    with _LargestAllocation() as reference_ops:
        _reference(cells, unit, raw, k)
    assert reference_ops.largest >= similarity_bytes  # the probe does see the reference's matrix

    with _LargestAllocation() as kernel_ops:
        most_similar_triton(cells, unit, raw, k)
    assert kernel_ops.largest < similarity_bytes
    assert kernel_ops.largest <= 4 * max(num_cells * frames * channels, unit.numel())


@pytest.mark.parametrize(
    "cells_shape, support_shape, raw_shape, k, message",
    [
        ((10, 16, 1), (1, 32, 16), (1, 32, 16), 1, "cells must be"),
        ((10, 16), (32, 16), (32, 16), 1, "support_unit must be"),
        ((10, 16), (1, 32, 16), (1, 31, 16), 1, "same shape"),
        ((10, 8), (1, 32, 16), (1, 32, 16), 1, "channel mismatch"),
        ((10, 16), (1, 32, 16), (1, 32, 16), 5, "k must be"),
        ((10, 16), (1, 3, 16), (1, 3, 16), 4, "exceeds the number of support positions"),
    ],
)
def test_bad_shapes_raise(cells_shape, support_shape, raw_shape, k, message):
    with pytest.raises(ValueError, match=message):
        most_similar_triton(torch.zeros(cells_shape), torch.zeros(support_shape), torch.zeros(raw_shape), k)


def test_bad_dtype_raises():
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        most_similar_triton(
            torch.zeros(4, 16, dtype=torch.float64), torch.zeros(1, 8, 16), torch.zeros(1, 8, 16), 1
        )


def test_full_operator_on_the_kernel_equals_the_registered_reference():
    from export.kernels.troi_triton import most_similar_roi_align_triton

    g = torch.Generator().manual_seed(5)
    channels = 24
    roi_feats = torch.randn(6, channels, 3, 3, generator=g)
    levels = torch.tensor([0, 1, 1, 2, 3, 0])
    batch_index = torch.tensor([0, 1, 0, 1, 1, 1])
    support = [torch.randn(2, 2, channels, 9 // 2**i + 1, 7 // 2**i + 1, generator=g) for i in range(4)]
    expected = torch.ops.cellwatch.most_similar_roi_align(roi_feats, levels, batch_index, support, 2, 256.0)
    got = most_similar_roi_align_triton(
        roi_feats.to(DEVICE), levels.to(DEVICE), batch_index.to(DEVICE), [s.to(DEVICE) for s in support], 2
    )
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    empty = [s[:, :0] for s in support]
    assert most_similar_roi_align_triton(roi_feats, levels, batch_index, empty, 2).shape == (0, 6, channels, 3, 3)
