"""Fused Triton kernel for the core of Most-Similar RoI Align.

Owns ``most_similar_triton``: for every query cell and support frame, the
softmax-weighted sum of the raw support vectors at the ``k`` positions whose
unit vectors are most cosine-similar to the cell. It computes the same thing as
``models.temporal_roi_align.most_similar_features`` but streams over the support
positions in blocks with a running top-k held in registers, so the ``[N, T * P]``
similarity matrix is never written to memory: the only tensor the wrapper
allocates is the ``[N, T, C]`` output.

Ties: within the streamed order (position 0 first), an equal similarity never
displaces an entry already kept, and inside a block the lowest position wins,
so among equal similarities the lowest position indices are selected. Because
tied candidates are then weighted by equal softmax weights, the result only
differs from ``torch.topk`` when ties straddle the k-th place with different
raw vectors; with continuous random inputs that does not occur.

The channel dimension is held whole in registers (padded to a power of two), so
this targets the channel widths of FPN levels (up to a few hundred).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_K = 4  # the running top-k is unrolled at compile time; keep it small


@triton.jit
def _most_similar_kernel(
    cells_ptr,  # [N, C] unit-norm
    unit_ptr,  # [T, P, C] unit-norm
    raw_ptr,  # [T, P, C] raw
    out_ptr,  # [N, T, C]
    num_cells,
    num_positions,
    num_channels,
    num_frames,
    K: tl.constexpr,
    KP: tl.constexpr,  # K rounded up to a power of two (tl.arange needs one)
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_n = tl.program_id(0)
    frame = tl.program_id(1)

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    chans = tl.arange(0, BLOCK_C)
    cols_k = tl.arange(0, KP)
    cols_p = tl.arange(0, BLOCK_P)
    row_ok = rows < num_cells
    chan_ok = chans < num_channels

    cells = tl.load(
        cells_ptr + rows[:, None] * num_channels + chans[None, :],
        mask=row_ok[:, None] & chan_ok[None, :],
        other=0.0,
    ).to(tl.float32)

    neg_inf = float("-inf")
    run_val = tl.full((BLOCK_N, KP), neg_inf, tl.float32)
    run_idx = tl.zeros((BLOCK_N, KP), tl.int32)
    frame_base = frame.to(tl.int64) * num_positions * num_channels

    for p0 in range(0, num_positions, BLOCK_P):
        pos = p0 + cols_p
        pos_ok = pos < num_positions
        # Loaded transposed ([C, P]) so the product is a plain [N, C] @ [C, P].
        support = tl.load(
            unit_ptr + frame_base + pos[None, :] * num_channels + chans[:, None],
            mask=chan_ok[:, None] & pos_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        # IEEE fp32: TF32 would cost ~1e-3 in the similarities and could reorder the top-k.
        sim = tl.dot(cells, support, input_precision="ieee")
        sim = tl.where(pos_ok[None, :], sim, neg_inf)

        # Merge the block into the running top-k: K rounds of "take the largest
        # of (running, block), remove it from its source". Running entries win
        # ties, so earlier (lower) positions are kept among equals.
        new_val = tl.full((BLOCK_N, KP), neg_inf, tl.float32)
        new_idx = tl.zeros((BLOCK_N, KP), tl.int32)
        for j in tl.static_range(K):
            best_run = tl.max(run_val, axis=1)
            best_blk = tl.max(sim, axis=1)
            take_run = best_run >= best_blk
            run_col = tl.min(tl.where(run_val == best_run[:, None], cols_k[None, :], KP), axis=1)
            blk_col = tl.min(tl.where(sim == best_blk[:, None], cols_p[None, :], BLOCK_P), axis=1)
            run_pick = cols_k[None, :] == run_col[:, None]
            blk_pick = cols_p[None, :] == blk_col[:, None]
            from_run = tl.sum(tl.where(run_pick, run_idx, 0), axis=1)
            chosen_idx = tl.where(take_run, from_run, p0 + blk_col)
            chosen_val = tl.maximum(best_run, best_blk)
            slot = cols_k[None, :] == j
            new_val = tl.where(slot, chosen_val[:, None], new_val)
            new_idx = tl.where(slot, chosen_idx[:, None], new_idx)
            run_val = tl.where(take_run[:, None] & run_pick, neg_inf, run_val)
            sim = tl.where((~take_run)[:, None] & blk_pick, neg_inf, sim)
        run_val = new_val
        run_idx = new_idx

    # Softmax over the K kept similarities; slot 0 holds the maximum. Padding
    # slots (>= K) are -inf and get weight exp(-inf) = 0.
    top = tl.max(run_val, axis=1)
    weights = tl.exp(run_val - top[:, None])
    weights = weights / tl.sum(weights, axis=1)[:, None]

    acc = tl.zeros((BLOCK_N, BLOCK_C), tl.float32)
    for j in tl.static_range(K):
        slot = cols_k[None, :] == j
        w_j = tl.sum(tl.where(slot, weights, 0.0), axis=1)
        idx_j = tl.sum(tl.where(slot, run_idx, 0), axis=1)
        vec = tl.load(
            raw_ptr + frame_base + idx_j[:, None].to(tl.int64) * num_channels + chans[None, :],
            mask=row_ok[:, None] & chan_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += w_j[:, None] * vec

    out_offsets = (rows[:, None].to(tl.int64) * num_frames + frame) * num_channels + chans[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & chan_ok[None, :])


def _check_inputs(cells: Tensor, support_unit: Tensor, support_raw: Tensor, k: int) -> None:
    if cells.dim() != 2:
        raise ValueError(f"cells must be [N, C], got shape {tuple(cells.shape)}")
    for name, tensor in (("support_unit", support_unit), ("support_raw", support_raw)):
        if tensor.dim() != 3:
            raise ValueError(f"{name} must be [T, P, C], got shape {tuple(tensor.shape)}")
    if support_unit.shape != support_raw.shape:
        raise ValueError(
            f"support_unit {tuple(support_unit.shape)} and support_raw {tuple(support_raw.shape)} must have the same shape"
        )
    if cells.shape[1] != support_unit.shape[2]:
        raise ValueError(f"channel mismatch: cells have C={cells.shape[1]}, support has C={support_unit.shape[2]}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    if support_unit.shape[1] < k:
        raise ValueError(f"k={k} exceeds the number of support positions P={support_unit.shape[1]}")
    for name, tensor in (("cells", cells), ("support_unit", support_unit), ("support_raw", support_raw)):
        if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"{name} must be float32/float16/bfloat16, got {tensor.dtype}")
        if tensor.device != cells.device:
            raise ValueError(f"{name} is on {tensor.device}, cells on {cells.device}; all inputs must share a device")


def most_similar_triton(cells: Tensor, support_unit: Tensor, support_raw: Tensor, k: int) -> Tensor:
    """Softmax-weighted sum of each cell's top-``k`` most similar support vectors, per frame.

    cells: ``[N, C]`` unit-norm queries. support_unit: ``[T, P, C]`` unit-norm
    support vectors; support_raw: ``[T, P, C]`` the raw vectors they came from.
    Returns ``[N, T, C]`` in ``cells.dtype``; accumulation is float32.
    Raises ValueError on bad shapes, dtypes, devices or ``k``.
    """
    _check_inputs(cells, support_unit, support_raw, k)
    num_cells, num_channels = cells.shape
    num_frames, num_positions, _ = support_unit.shape
    # The kernel indexes densely; .contiguous() is free for already-dense inputs.
    cells, support_unit, support_raw = cells.contiguous(), support_unit.contiguous(), support_raw.contiguous()
    out = torch.empty((num_cells, num_frames, num_channels), dtype=cells.dtype, device=cells.device)
    if num_cells == 0 or num_frames == 0:
        return out

    block_n = 16  # tl.dot needs every dimension >= 16
    block_p = 32
    block_c = max(16, triton.next_power_of_2(num_channels))
    grid = (triton.cdiv(num_cells, block_n), num_frames)
    _most_similar_kernel[grid](
        cells,
        support_unit,
        support_raw,
        out,
        num_cells,
        num_positions,
        num_channels,
        num_frames,
        K=k,
        KP=triton.next_power_of_2(k),
        BLOCK_N=block_n,
        BLOCK_P=block_p,
        BLOCK_C=block_c,
    )
    return out


def most_similar_roi_align_triton(
    roi_feats: Tensor,
    levels: Tensor,
    batch_index: Tensor,
    support: list[Tensor],
    num_most_similar: int,
    memory_budget_mb: float = 256.0,
) -> Tensor:
    """``torch.ops.cellwatch.most_similar_roi_align`` on the fused kernel: ``[T, R, C, h, w]``.

    Groups the RoIs by (support level, image) as the reference does and runs
    one kernel launch per group; nothing of size R x T x P is allocated, so
    the memory budget has nothing to bound and is not read.
    """
    from models.troi_op import check_inputs

    check_inputs(roi_feats, levels, batch_index, support, num_most_similar)
    num_rois, channels, height, width = roi_feats.shape
    num_images, num_frames = support[0].shape[:2]
    out = roi_feats.new_zeros((num_frames, num_rois, channels, height, width))
    if num_frames == 0 or num_rois == 0:
        return out
    cells = torch.nn.functional.normalize(roi_feats, dim=1, eps=1e-12).flatten(2).transpose(1, 2)
    for level, level_support in enumerate(support):
        positions = level_support.shape[-2] * level_support.shape[-1]
        k = min(num_most_similar, positions, MAX_K)
        if k < min(num_most_similar, positions):
            raise ValueError(f"the Triton kernel keeps at most {MAX_K} most similar positions, got {num_most_similar}")
        for image in range(num_images):
            index = torch.nonzero((levels == level) & (batch_index == image)).squeeze(1)
            if index.numel() == 0:
                continue
            raw = level_support[image].flatten(2).transpose(1, 2)  # [T, P, C]
            unit = torch.nn.functional.normalize(raw, dim=2, eps=1e-12)
            found = most_similar_triton(cells[index].reshape(-1, channels), unit, raw, k)  # [n*h*w, T, C]
            found = found.view(index.numel(), height, width, num_frames, channels)
            out[:, index] = found.permute(3, 0, 4, 1, 2)
    return out


def register_cuda_kernel() -> None:
    """Make the registered operator run this kernel for CUDA tensors."""
    from models.troi_op import most_similar_roi_align

    most_similar_roi_align.register_kernel("cuda")(most_similar_roi_align_triton)
