"""The C++/CUDA Most-Similar RoI Align: nvcc compiles it, and its per-cell code
(built for the CPU with g++) matches a torch reference of the full multi-level op.

The CUDA kernel cannot run without a GPU; what runs here is troi_cuda.cuh's
per-cell function, which the kernel calls unchanged.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.kernels.build import (
    KernelBuildError,
    build_cpu_library,
    compile_cuda_object,
    find_nvcc,
    most_similar_roi_align_cpu,
)
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to build the CPU library")


@pytest.fixture(scope="module")
def cpu_library(tmp_path_factory):
    return build_cpu_library(tmp_path_factory.mktemp("troi_cpu"))


def reference(roi_feats, levels, batch_index, supports, k):
    """Per RoI: ``most_similar_features`` on its level's support maps of its image."""
    # Imported here, not at collection: `models` imports torchvision, which
    # imports triton, and test_troi_kernel.py must set TRITON_INTERPRET first.
    from models.most_similar import most_similar_features

    num_rois, channels, height, width = roi_feats.shape
    frames = supports[0].shape[1]
    out = torch.zeros(frames, num_rois, channels, height, width)
    if frames == 0:
        return out
    for r in range(num_rois):
        support = supports[int(levels[r])][int(batch_index[r])]  # [T, C, H, W]
        positions = support.shape[-2] * support.shape[-1]
        cells = F.normalize(roi_feats[r].flatten(1).t(), dim=1, eps=1e-12)  # [h*w, C]
        unit = F.normalize(support, dim=1, eps=1e-12).transpose(0, 1).reshape(channels, -1)
        rows = support.flatten(2).transpose(1, 2).reshape(-1, channels)
        found = most_similar_features(cells, unit, rows, frames, min(k, positions))  # [h*w, T, C]
        out[:, r] = found.permute(1, 2, 0).reshape(frames, channels, height, width)
    return out


def make_inputs(num_rois, channels, roi_size, batch, frames, level_sizes, seed):
    g = torch.Generator().manual_seed(seed)
    roi_feats = torch.randn(num_rois, channels, roi_size, roi_size, generator=g)
    levels = torch.randint(0, len(level_sizes), (num_rois,), generator=g)
    batch_index = torch.randint(0, batch, (num_rois,), generator=g)
    supports = [torch.randn(batch, frames, channels, h, w, generator=g) for h, w in level_sizes]
    return roi_feats, levels, batch_index, supports


# (R, C, roi size, B, T, level sizes, k). Covers T = 0, 1, 2; R = 0; k > P (a
# 1x2 level has two positions); several levels with batch 2; C = 96 and 130.
CASES = [
    (5, 16, 3, 1, 1, [(4, 5)], 2),
    (7, 96, 3, 2, 2, [(6, 8), (3, 4), (2, 2)], 4),
    (6, 130, 2, 2, 2, [(5, 5), (1, 2)], 3),
    (4, 24, 2, 1, 2, [(1, 2)], 4),
    (3, 32, 2, 2, 0, [(4, 4), (2, 2)], 2),
    (0, 32, 2, 2, 2, [(4, 4), (2, 2)], 2),
    (9, 8, 4, 2, 1, [(7, 9), (4, 5), (2, 3), (1, 1)], 1),
]


@pytest.mark.parametrize("num_rois, channels, roi_size, batch, frames, level_sizes, k", CASES)
def test_cpu_matches_reference(cpu_library, num_rois, channels, roi_size, batch, frames, level_sizes, k):
    inputs = make_inputs(num_rois, channels, roi_size, batch, frames, level_sizes, seed=num_rois * 31 + channels)
    out = most_similar_roi_align_cpu(*inputs, k, library=cpu_library)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (frames, num_rois, channels, roi_size, roi_size)
    torch.testing.assert_close(out, reference(*inputs, k), rtol=0, atol=1e-4)


def test_every_level_and_image_is_searched(cpu_library):
    # Guards the routing: with the levels or images mixed up the output would
    # still be a weighted sum of *some* support vectors, so check that the
    # result changes exactly where one (level, image) map changes.
    roi_feats, _, _, supports = make_inputs(8, 16, 2, 2, 1, [(3, 3), (2, 2)], seed=5)
    levels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    batch_index = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    before = most_similar_roi_align_cpu(roi_feats, levels, batch_index, supports, 2, library=cpu_library)
    supports[1][1] = supports[1][1] * 3.0  # level 1, image 1 only
    after = most_similar_roi_align_cpu(roi_feats, levels, batch_index, supports, 2, library=cpu_library)
    changed = (after - before).abs().flatten(2).amax(dim=2)[0] > 1e-6
    assert changed.tolist() == [False, False, False, True, False, False, False, True]


def test_ties_pick_lowest_positions(cpu_library):
    # Positions 1 and 5 share the query's direction but have different raw
    # vectors: with k = 1 the documented rule keeps position 1. Power-of-two
    # scales keep the two similarities bit-identical (scaling is exact).
    g = torch.Generator().manual_seed(11)
    direction = torch.randn(12, generator=g)
    roi_feats = direction.view(1, 12, 1, 1).clone()
    support = torch.randn(1, 1, 12, 2, 4, generator=g)
    flat = support.view(12, 8)
    flat[:, 1] = 2.0 * direction
    flat[:, 5] = 4.0 * direction
    out = most_similar_roi_align_cpu(roi_feats, [0], [0], [support], 1, library=cpu_library)
    torch.testing.assert_close(out[0, 0, :, 0, 0], 2.0 * direction, rtol=0, atol=1e-6)


def test_zero_query_weights_first_positions_equally(cpu_library):
    # An all-zero cell (pooled outside the image) has similarity 0 everywhere:
    # all positions tie, so the first k are kept with equal softmax weights.
    support = torch.randn(1, 2, 6, 3, 3, generator=torch.Generator().manual_seed(4))
    out = most_similar_roi_align_cpu(torch.zeros(1, 6, 1, 1), [0], [0], [support], 3, library=cpu_library)
    expected = support.flatten(3)[0, :, :, :3].mean(dim=2)  # [T, C]
    torch.testing.assert_close(out[:, 0, :, 0, 0], expected, rtol=0, atol=1e-6)


def test_numpy_in_numpy_out(cpu_library):
    roi_feats, levels, batch_index, supports = make_inputs(3, 8, 2, 1, 2, [(2, 3)], seed=2)
    out = most_similar_roi_align_cpu(
        roi_feats.numpy(), levels.numpy(), batch_index.numpy(), [s.numpy() for s in supports], 2, library=cpu_library
    )
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(roi_feats, levels, batch_index, supports, 2).numpy(), atol=1e-4)


def _valid():
    return make_inputs(2, 8, 2, 2, 1, [(3, 3), (2, 2)], seed=1)


# Shape and dtype errors are caught in Python; k and the index ranges by the
# library itself (its status codes come back as the message).
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "k": 0}, "num_most_similar"),
        (lambda a: {**a, "k": 5}, "num_most_similar"),
        (lambda a: {**a, "levels": torch.tensor([0, 2])}, "level index"),
        (lambda a: {**a, "levels": torch.tensor([-1, 0])}, "level index"),
        (lambda a: {**a, "batch_index": torch.tensor([0, 2])}, "batch index"),
        (lambda a: {**a, "roi_feats": a["roi_feats"][0]}, r"roi_feats must be \[R, C, h, w\]"),
        (lambda a: {**a, "roi_feats": a["roi_feats"].double()}, "roi_feats must be float32"),
        (lambda a: {**a, "levels": torch.tensor([0.0, 1.0])}, "levels must be an integer array"),
        (lambda a: {**a, "batch_index": torch.tensor([0])}, r"batch_index must be \[R=2\]"),
        (lambda a: {**a, "supports": []}, "supports needs 1..8 levels"),
        (lambda a: {**a, "supports": [a["supports"][0][0]]}, r"supports\[0\] must be \[B, T, C, H, W\]"),
        (lambda a: {**a, "supports": [a["supports"][0], a["supports"][1][:, :, :4]]}, "C=8"),
        (lambda a: {**a, "supports": [a["supports"][0], a["supports"][1][:1]]}, "the B and T of supports"),
    ],
)
def test_bad_inputs_raise(cpu_library, change, message):
    roi_feats, levels, batch_index, supports = _valid()
    args = change({"roi_feats": roi_feats, "levels": levels, "batch_index": batch_index, "supports": supports, "k": 2})
    with pytest.raises(ValueError, match=message):
        most_similar_roi_align_cpu(**args, library=cpu_library)


def test_compiler_errors_name_the_compiler_output(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("int main() { return undefined_name; }\n")
    monkeypatch.setattr("export.kernels.build.CPU_SOURCE", broken)
    with pytest.raises(KernelBuildError, match="undefined_name"):
        build_cpu_library(tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.so")), "a failed build must not leave a library behind"


def test_missing_nvcc_is_a_clear_error(tmp_path):
    with pytest.raises(KernelBuildError, match="cannot run /nonexistent/nvcc"):
        compile_cuda_object(tmp_path, nvcc="/nonexistent/nvcc")


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc (CUDA toolkit) is not installed")
def test_nvcc_compiles_kernel_without_local_memory(tmp_path):
    obj = compile_cuda_object(tmp_path, arch="sm_80")
    assert obj.stat().st_size > 0
    # The top-k must live in registers: ptxas reports the kernel's stack frame
    # and spills; a dynamically indexed top-k array would show up as a stack frame.
    log = obj.with_name(obj.name + ".log").read_text()
    properties = re.search(r"Function properties for \S*mostSimilarRoiAlignKernel\S*\s+(.*)", log)
    assert properties, log
    assert "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in properties.group(1), log
    if shutil.which("nm"):
        symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True).stdout
        assert re.search(r"\bT cellwatch_troi_cuda\b", symbols), "the extern \"C\" launcher is missing"
