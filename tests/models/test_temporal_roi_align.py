"""Multi-level RoI Align and Temporal RoI Align against plain reference code."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from models import most_similar as search_module
from models.most_similar import roi_chunk_size
from models.roi_align import MultiLevelRoIAlign, map_rois_to_levels
from models.temporal_roi_align import TemporalRoIAlign

# A 128x96 image with four levels; finest_scale 8 puts RoIs of side ~6, ~20,
# ~40 and ~90 pixels on levels 0..3 so small test images reach every level.
STRIDES = (4, 8, 16, 32)
IMAGE_W, IMAGE_H = 128, 96
FINEST_SCALE = 8
CHANNELS = 8
OUTPUT = 4
BATCH = 2


def make_features(
    batch: int, channels: int, generator: torch.Generator, frames: int | None = None
) -> list[Tensor]:
    shape = (batch,) if frames is None else (batch, frames)
    return [
        torch.randn(*shape, channels, IMAGE_H // s, IMAGE_W // s, generator=generator) for s in STRIDES
    ]


def make_rois(count: int, batch: int, generator: torch.Generator) -> Tensor:
    """RoIs inside the image whose sides cycle through the four level bands."""
    sides = torch.tensor([6.0, 20.0, 44.0, 90.0])
    rows = []
    for i in range(count):
        side = sides[i % 4] * (0.8 + 0.4 * torch.rand((), generator=generator))
        aspect = 0.6 + 0.8 * torch.rand((), generator=generator)
        w = min(float(side * aspect.sqrt()), IMAGE_W - 1.0)
        h = min(float(side / aspect.sqrt()), IMAGE_H - 1.0)
        x1 = float(torch.rand((), generator=generator)) * (IMAGE_W - w)
        y1 = float(torch.rand((), generator=generator)) * (IMAGE_H - h)
        image = int(torch.randint(batch, (), generator=generator))
        rows.append([image, x1, y1, x1 + w, y1 + h])
    return torch.tensor(rows, dtype=torch.float32).reshape(count, 5)


# ---------------------------------------------------------------- reference


def reference_level(roi: list[float], num_levels: int, finest_scale: int) -> int:
    scale = math.sqrt((roi[3] - roi[1]) * (roi[4] - roi[2]))
    if scale <= 0:
        return 0
    return min(max(math.floor(math.log2(scale / finest_scale + 1e-6)), 0), num_levels - 1)


def reference_troia(
    module: TemporalRoIAlign, features: list[Tensor], rois: Tensor, support: list[Tensor]
) -> Tensor:
    """Per RoI, per support frame: full similarity, top-k, softmax, weighted sum, per-head attention."""
    num_levels = len(features)
    k_wanted = module.num_most_similar
    heads = module.num_heads
    outputs = []
    for roi in rois.tolist():
        image = int(roi[0])
        level = reference_level(roi, num_levels, FINEST_SCALE)
        pooled = roi_align(
            features[level][image : image + 1],
            torch.tensor([[0.0] + roi[1:]]),
            (OUTPUT, OUTPUT),
            spatial_scale=1.0 / STRIDES[level],
            sampling_ratio=2,
            aligned=True,
        )[0]  # [C, h, w]
        search = level if module.support_level == "same" else num_levels - 1
        query = pooled.reshape(CHANNELS, -1)  # [C, h*w]
        query_unit = query / query.norm(dim=0, keepdim=True).clamp_min(1e-12)
        frames = [pooled]
        for t in range(support[search].shape[1]):
            frame = support[search][image, t].reshape(CHANNELS, -1)  # [C, P]
            frame_unit = frame / frame.norm(dim=0, keepdim=True).clamp_min(1e-12)
            similarity = query_unit.T @ frame_unit  # [h*w, P]
            k = min(k_wanted, similarity.shape[1])
            values, index = similarity.topk(k, dim=1)
            weights = torch.softmax(values, dim=1)
            found = torch.zeros(query.shape[1], CHANNELS)
            for j in range(k):
                found += weights[:, j : j + 1] * frame[:, index[:, j]].T
            frames.append(found.T.reshape(CHANNELS, OUTPUT, OUTPUT))
        stacked = torch.stack(frames)  # [T+1, C, h, w]
        if heads <= 0:
            outputs.append(stacked.mean(dim=0))
            continue
        embedded = module.embed(stacked)
        head_dim = CHANNELS // heads
        out = torch.zeros_like(pooled)
        for g in range(heads):
            part = slice(g * head_dim, (g + 1) * head_dim)
            logits = torch.stack(
                [(embedded[t, part] * embedded[0, part]).sum(dim=0) for t in range(len(frames))]
            ) / math.sqrt(head_dim)
            weights = torch.softmax(logits, dim=0)  # [T+1, h, w]
            for t in range(len(frames)):
                out[part] += weights[t] * stacked[t, part]
        outputs.append(out)
    if not outputs:
        return torch.zeros(0, CHANNELS, OUTPUT, OUTPUT)
    return torch.stack(outputs)


def make_troia(**overrides) -> TemporalRoIAlign:
    options = dict(
        channels=CHANNELS, output_size=OUTPUT, featmap_strides=STRIDES, finest_scale=FINEST_SCALE
    )
    options.update(overrides)
    return TemporalRoIAlign(**options)


# ---------------------------------------------------------------- levels and plain RoI Align


def test_map_rois_to_levels_hand_cases():
    boxes = [
        (0, 0, 50, 50, 0),  # scale 50 < 56: log2 < 0, clamped up to level 0
        (0, 0, 111, 111, 0),  # just under 2 * 56
        (0, 0, 112, 112, 1),  # exactly 2 * 56: the epsilon keeps it on level 1
        (10, 20, 66, 244, 1),  # 56 x 224 -> scale 112
        (0, 0, 224, 224, 2),
        (0, 0, 447, 447, 2),
        (0, 0, 448, 448, 3),
        (0, 0, 2000, 2000, 3),  # clamped to the last level
        (5, 5, 5, 5, 0),  # empty box
    ]
    rois = torch.tensor([[0.0, x1, y1, x2, y2] for x1, y1, x2, y2, _ in boxes])
    expected = torch.tensor([level for *_, level in boxes])
    levels = map_rois_to_levels(rois, num_levels=4, finest_scale=56)
    assert levels.dtype == torch.long
    assert torch.equal(levels, expected)
    assert torch.equal(map_rois_to_levels(rois, num_levels=1), torch.zeros(len(boxes), dtype=torch.long))
    # A smaller finest scale moves the 50-pixel box up to level 2 (50/12 ~ 4.2).
    assert map_rois_to_levels(rois[:1], num_levels=4, finest_scale=12).item() == 2


def test_multi_level_roi_align_equals_torchvision_per_level():
    generator = torch.Generator().manual_seed(0)
    features = make_features(BATCH, CHANNELS, generator)
    # Sides 6, 20, 44, 90 with finest_scale 8 land on levels 0, 1, 2, 3.
    rois = torch.tensor(
        [
            [1, 10.0, 10.0, 16.0, 16.0],
            [0, 30.5, 12.0, 50.5, 32.0],
            [1, 3.0, 40.0, 47.0, 84.0],
            [0, 20.0, 2.0, 110.0, 92.0],
            [0, 60.0, 50.0, 66.5, 55.5],
        ]
    )
    hand_levels = [0, 1, 2, 3, 0]
    pooler = MultiLevelRoIAlign(OUTPUT, STRIDES, sampling_ratio=2, finest_scale=FINEST_SCALE)
    assert pooler.levels(rois).tolist() == hand_levels
    pooled = pooler(features, rois)
    assert pooled.shape == (5, CHANNELS, OUTPUT, OUTPUT)
    for row, level in enumerate(hand_levels):
        expected = roi_align(
            features[level], rois[row : row + 1], (OUTPUT, OUTPUT),
            spatial_scale=1.0 / STRIDES[level], sampling_ratio=2, aligned=True,
        )
        assert torch.equal(pooled[row : row + 1], expected), f"row {row}"


def test_multi_level_roi_align_without_rois():
    generator = torch.Generator().manual_seed(1)
    pooler = MultiLevelRoIAlign(OUTPUT, STRIDES, finest_scale=FINEST_SCALE)
    pooled = pooler(make_features(BATCH, CHANNELS, generator), torch.zeros(0, 5))
    assert pooled.shape == (0, CHANNELS, OUTPUT, OUTPUT)


# ---------------------------------------------------------------- Temporal RoI Align vs reference

CASES = list(itertools.product([0, 1, 13], [1, 2, 3], [1, 2, 4], [4, 1, 0], ["same", "coarsest"]))


@pytest.mark.parametrize("num_rois,num_frames,k,heads,support_level", CASES)
def test_temporal_roi_align_matches_reference(num_rois, num_frames, k, heads, support_level):
    torch.manual_seed(num_rois * 100 + num_frames * 10 + k)  # embed conv init
    module = make_troia(num_most_similar=k, num_heads=heads, support_level=support_level)
    generator = torch.Generator().manual_seed(7 + num_rois + 3 * num_frames + 5 * k)
    features = make_features(BATCH, CHANNELS, generator)
    support = make_features(BATCH, CHANNELS, generator, frames=num_frames)
    rois = make_rois(num_rois, BATCH, generator)
    if num_rois >= 13:
        assert len(set(module.roi_align.levels(rois).tolist())) == len(STRIDES)
    with torch.no_grad():
        out = module(features, rois, support)
        expected = reference_troia(module, features, rois, support)
    assert out.shape == (num_rois, CHANNELS, OUTPUT, OUTPUT)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_support_level_changes_what_is_searched():
    generator = torch.Generator().manual_seed(3)
    features = make_features(BATCH, CHANNELS, generator)
    support = make_features(BATCH, CHANNELS, generator, frames=2)
    rois = make_rois(8, BATCH, generator)
    same = make_troia(support_level="same")
    coarsest = make_troia(support_level="coarsest")
    coarsest.load_state_dict(same.state_dict())
    levels = same.roi_align.levels(rois)
    with torch.no_grad():
        a, b = same(features, rois, support), coarsest(features, rois, support)
    on_last = levels == len(STRIDES) - 1
    assert torch.equal(a[on_last], b[on_last])
    assert not torch.allclose(a[~on_last], b[~on_last])


def test_rois_outside_the_image_stay_finite():
    generator = torch.Generator().manual_seed(4)
    features = make_features(BATCH, CHANNELS, generator)
    support = make_features(BATCH, CHANNELS, generator, frames=2)
    rois = torch.tensor([[0, 500.0, 500.0, 540.0, 530.0], [1, 10.0, 10.0, 40.0, 40.0]])
    with torch.no_grad():
        out = make_troia()(features, rois, support)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- chunking


def test_roi_chunk_size_respects_the_budget():
    for cells, positions, budget, element, extra in itertools.product(
        [1, 49, 196], [1, 240, 15360 * 4], [1, 10**6, 256 * 2**20, 3.5 * 2**30], [2, 4, 8], [0, 2048]
    ):
        chunk = roi_chunk_size(cells, positions, budget, element, extra)
        per_roi = cells * (positions + extra) * element
        assert chunk >= 1
        if chunk > 1:
            assert chunk * per_roi <= budget
        assert (chunk + 1) * per_roi > budget  # the largest chunk that fits


def test_similarity_allocations_stay_under_the_budget():
    """The largest product (the similarity chunk) obeys the budget in forward and backward."""
    generator = torch.Generator().manual_seed(5)
    features = make_features(1, CHANNELS, generator)
    support = [s.requires_grad_() for s in make_features(1, CHANNELS, generator, frames=3)]
    rois = torch.tensor([[0, 2.0 + i, 3.0 + i, 9.0 + i, 9.0 + i] for i in range(40)])
    similarity_bytes = 40 * OUTPUT * OUTPUT * 3 * (IMAGE_H // 4) * (IMAGE_W // 4) * 4
    budget_mb = similarity_bytes / 8 / 2**20

    def largest_product(module: TemporalRoIAlign) -> int:
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            module(features, rois, support).sum().backward()
        return max(e.self_cpu_memory_usage for e in prof.events() if e.name in ("aten::mm", "aten::matmul"))

    assert largest_product(make_troia(memory_budget_mb=1e6)) >= similarity_bytes
    assert largest_product(make_troia(memory_budget_mb=budget_mb)) <= budget_mb * 2**20


def _count_searches(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = search_module.most_similar_features

    def counting(cells, *args):
        calls.append(cells.shape[0])
        return original(cells, *args)

    monkeypatch.setattr(search_module, "most_similar_features", counting)
    return calls


@pytest.mark.parametrize("support_level", ["same", "coarsest"])
def test_chunked_equals_unchunked(monkeypatch, support_level):
    generator = torch.Generator().manual_seed(6)
    features = make_features(BATCH, CHANNELS, generator)
    support = make_features(BATCH, CHANNELS, generator, frames=3)
    rois = make_rois(24, BATCH, generator)
    reference = make_troia(support_level=support_level, memory_budget_mb=1e6)
    with torch.no_grad():
        expected = reference(features, rois, support)
    cells = OUTPUT * OUTPUT
    # Sized so the most crowded searched level (the finest one, or the only
    # one for "coarsest") takes 3 RoIs per search.
    height, width = (IMAGE_H // STRIDES[0], IMAGE_W // STRIDES[0]) if support_level == "same" else (3, 4)
    per_roi = cells * (3 * height * width + 3 * (2 * CHANNELS + CHANNELS + 6 * 2)) * 4
    searched = {(int(level), int(image)) for level, image in zip(reference.search_levels(rois), rois[:, 0])}
    for budget_mb, chunk in [(1e-9, 1), (3.5 * per_roi / 2**20, 3)]:
        module = make_troia(support_level=support_level, memory_budget_mb=budget_mb)
        module.load_state_dict(reference.state_dict())
        calls = _count_searches(monkeypatch)
        with torch.no_grad():
            out = module(features, rois, support)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        rois_per_search = [c // cells for c in calls]
        assert sum(rois_per_search) == len(rois)
        assert max(rois_per_search) == chunk if chunk == 1 else chunk in rois_per_search
        assert len(calls) > len(searched)  # some (level, image) group was split


# ---------------------------------------------------------------- no support, gradients, options


def test_without_support_equals_multi_level_roi_align():
    generator = torch.Generator().manual_seed(8)
    features = make_features(BATCH, CHANNELS, generator)
    rois = make_rois(9, BATCH, generator)
    module = make_troia()
    plain = MultiLevelRoIAlign(OUTPUT, STRIDES, finest_scale=FINEST_SCALE)(features, rois)
    empty = make_features(BATCH, CHANNELS, generator, frames=0)
    assert torch.equal(module(features, rois), plain)
    assert torch.equal(module(features, rois, None), plain)
    assert torch.equal(module(features, rois, empty), plain)


def test_gradients_reach_features_support_and_embed():
    generator = torch.Generator().manual_seed(9)
    features = [f.requires_grad_() for f in make_features(BATCH, CHANNELS, generator)]
    support = [s.requires_grad_() for s in make_features(BATCH, CHANNELS, generator, frames=2)]
    rois = make_rois(12, BATCH, generator)
    module = make_troia(memory_budget_mb=1e-9)  # backward through several chunks
    out = module(features, rois, support)
    (out * torch.randn(out.shape, generator=generator)).sum().backward()
    assert module.embed.weight.grad is not None and module.embed.weight.grad.abs().sum() > 0
    assert module.embed.bias.grad is not None
    for level in range(len(STRIDES)):
        assert features[level].grad.abs().sum() > 0, f"features level {level}"
        assert support[level].grad.abs().sum() > 0, f"support level {level}"


def test_gradients_match_finite_differences():
    generator = torch.Generator().manual_seed(10)
    features = [f.double().requires_grad_() for f in make_features(1, 4, generator)]
    support = [s.double().requires_grad_() for s in make_features(1, 4, generator, frames=2)]
    rois = torch.tensor([[0, 3.0, 5.0, 10.0, 12.0], [0, 30.0, 20.0, 70.0, 70.0]], dtype=torch.float64)
    module = make_troia(channels=4, output_size=2, num_heads=2, memory_budget_mb=1e-9).double()

    def run(*tensors):
        return module(list(tensors[:4]), rois, list(tensors[4:]))

    # fast_mode compares one random projection of the Jacobian; the full one
    # needs two forwards per input element (thousands here).
    assert torch.autograd.gradcheck(run, (*features, *support), eps=1e-6, atol=1e-5, fast_mode=True)


def test_bad_options_name_the_valid_values():
    with pytest.raises(ValueError, match="same.*coarsest"):
        make_troia(support_level="finest")
    with pytest.raises(ValueError, match=r"\[1, 2, 5, 10\]"):
        make_troia(channels=10, num_heads=4)
    make_troia(channels=10, num_heads=0)  # a plain mean needs no divisibility


def test_mismatched_support_is_rejected():
    generator = torch.Generator().manual_seed(11)
    features = make_features(BATCH, CHANNELS, generator)
    support = make_features(BATCH, CHANNELS, generator, frames=2)
    rois = make_rois(4, BATCH, generator)
    module = make_troia()
    with pytest.raises(ValueError, match="one tensor per level"):
        module(features, rois, support[:3])
    with pytest.raises(ValueError, match="support_features\\[1\\]"):
        module(features, rois, [support[0], support[1][:, :1], *support[2:]])
