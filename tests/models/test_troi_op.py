"""torch.ops.cellwatch.most_similar_roi_align: registration, fake shapes, reference equality."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import models  # noqa: F401  (registers the op)
from models.most_similar import most_similar_features, most_similar_roi_align
from models.temporal_roi_align import TemporalRoIAlign
from models.troi_op import check_inputs

OP = torch.ops.cellwatch.most_similar_roi_align


def _inputs(rois=5, frames=2, batch=2, channels=16, size=7, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    roi_feats = torch.randn(rois, channels, size, size, generator=g)
    levels = torch.randint(0, 4, (rois,), generator=g)
    batch_index = torch.randint(0, batch, (rois,), generator=g)
    support = [torch.randn(batch, frames, channels, 12 // 2**i + 1, 10 // 2**i + 1, generator=g) for i in range(4)]
    return roi_feats, levels, batch_index, support, k


def _brute_force(roi_feats, levels, batch_index, support, k):
    """Every RoI on its own against its level and image, through the single-group reference."""
    rois, channels, h, w = roi_feats.shape
    frames = support[0].shape[1]
    out = torch.zeros(frames, rois, channels, h, w)
    if frames == 0:
        return out
    for r in range(rois):
        maps = support[int(levels[r])][int(batch_index[r])]  # [T, C, H, W]
        unit = torch.nn.functional.normalize(maps, dim=1).transpose(0, 1).reshape(channels, -1)
        rows = maps.flatten(2).transpose(1, 2).reshape(-1, channels)
        cells = torch.nn.functional.normalize(roi_feats[r], dim=0).flatten(1).t()
        kk = min(k, maps.shape[-1] * maps.shape[-2])
        found = most_similar_features(cells, unit, rows, frames, kk)  # [h*w, T, C]
        out[:, r] = found.view(h, w, frames, channels).permute(2, 3, 0, 1)
    return out


@pytest.mark.parametrize("frames", [0, 1, 2])
def test_op_equals_brute_force(frames):
    roi_feats, levels, batch_index, support, k = _inputs(frames=frames)
    got = OP(roi_feats, levels, batch_index, support, k, 256.0)
    assert got.shape == (frames, *roi_feats.shape)
    torch.testing.assert_close(got, _brute_force(roi_feats, levels, batch_index, support, k), atol=1e-5, rtol=1e-5)


def test_op_with_k_above_positions_and_tiny_budget():
    roi_feats, levels, batch_index, support, _ = _inputs(rois=9)
    expected = _brute_force(roi_feats, levels, batch_index, support, 500)
    # a budget below one RoI still runs, one RoI at a time
    got = OP(roi_feats, levels, batch_index, support, 500, 1e-6)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_op_passes_opcheck():
    # schema, fake (meta) implementation and dispatch agree with the real kernel
    torch.library.opcheck(OP, (*_inputs()[:4], 2, 256.0), test_utils=("test_schema", "test_faketensor"))


def test_fake_implementation_gives_the_shape_without_computing():
    from torch._subclasses.fake_tensor import FakeTensorMode

    roi_feats, levels, batch_index, support, k = _inputs(frames=3)
    with FakeTensorMode() as mode:
        fake = OP(
            mode.from_tensor(roi_feats),
            mode.from_tensor(levels),
            mode.from_tensor(batch_index),
            [mode.from_tensor(s) for s in support],
            k,
            256.0,
        )
    assert tuple(fake.shape) == (3, *roi_feats.shape)


def test_module_uses_the_op_at_inference_and_the_autograd_path_in_training():
    pool = TemporalRoIAlign(16, 7, (4, 8, 16, 32), num_heads=4).eval()
    g = torch.Generator().manual_seed(3)
    features = [torch.randn(1, 16, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]
    support = [torch.randn(1, 2, *f.shape[1:], generator=g) for f in features]
    rois = torch.tensor([[0, 2.0, 2.0, 40.0, 50.0], [0, 10.0, 5.0, 20.0, 15.0]])
    with mock.patch.object(torch.ops.cellwatch, "most_similar_roi_align", wraps=OP) as spy:
        with torch.no_grad():
            inference = pool(features, rois, support)
    assert spy.call_count == 1, "inference did not go through the registered operator"
    leaf = [f.clone().requires_grad_(True) for f in features]
    training = pool.train()(leaf, rois, support)
    training.sum().backward()
    assert leaf[0].grad is not None
    torch.testing.assert_close(inference, training.detach(), atol=1e-5, rtol=1e-5)


def test_reference_function_matches_op():
    roi_feats, levels, batch_index, support, k = _inputs(rois=7)
    torch.testing.assert_close(
        most_similar_roi_align(roi_feats, levels, batch_index, support, k),
        OP(roi_feats, levels, batch_index, support, k, 256.0),
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.__setitem__(0, a[0][0]), "roi_feats must be"),
        (lambda a: a.__setitem__(1, a[1][:-1]), "levels must be"),
        (lambda a: a.__setitem__(2, a[2].int()), "batch_index must be int64"),
        (lambda a: a.__setitem__(3, [a[3][0], a[3][1][:, :1]]), "support\\[1\\] must be"),
        (lambda a: a.__setitem__(3, []), "at least one level"),
        (lambda a: a.__setitem__(4, 0), "num_most_similar must be >= 1"),
    ],
)
def test_bad_inputs_are_named(change, message):
    args = list(_inputs())
    change(args)
    with pytest.raises(ValueError, match=message):
        check_inputs(*args)
