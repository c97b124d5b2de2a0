"""Training schedule, resumable sampling and checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from models import build_model
from models.checkpoint import load_model, save_checkpoint
from models.schedule import ResumableSampler, Schedule


def test_lr_scales_linearly_with_the_batch() -> None:
    assert Schedule(batch_size=32).lr == pytest.approx(0.005)
    assert Schedule(batch_size=8).lr == pytest.approx(0.00125)
    assert Schedule(batch_size=64, base_lr=0.01).lr == pytest.approx(0.02)


def test_warmup_and_steps_follow_the_reference_schedule() -> None:
    s = Schedule(batch_size=32, warmup_iters=500, warmup_ratio=1 / 3, lr_steps=(8, 11))
    assert s.lr_at(0, 0) == pytest.approx(0.005 / 3)
    # Half-way through the warm-up: 1/3 + (1 - 1/3) / 2 = 2/3 of the rate.
    assert s.lr_at(250, 0) == pytest.approx(0.005 * 2 / 3)
    assert s.lr_at(500, 0) == pytest.approx(0.005)
    assert s.lr_at(10_000, 7) == pytest.approx(0.005)
    assert s.lr_at(10_000, 8) == pytest.approx(0.0005)
    assert s.lr_at(10_000, 11) == pytest.approx(0.00005)


def test_sampler_order_depends_only_on_seed_and_epoch_and_resumes_mid_epoch() -> None:
    sampler = ResumableSampler(10, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch0) == list(range(10)) and epoch0 != epoch1
    sampler.set_epoch(0, start=4)
    assert list(sampler) == epoch0[4:] and len(sampler) == 6
    assert list(ResumableSampler(10, seed=3)) == epoch0


def test_sampler_splits_evenly_across_processes() -> None:
    ranks = [ResumableSampler(7, seed=0, rank=r, world_size=3) for r in range(3)]
    parts = [list(s) for s in ranks]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert set(sum(parts, [])) == set(range(7))


def test_checkpoint_rebuilds_the_same_network(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("lite", pretrained_backbone=False, roi_extractor="temporal", num_classes=2,
                        class_names=("a", "b"), min_size=96, max_size=160)
    categories = [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]
    save_checkpoint(tmp_path / "m.pt", model, categories, iteration=3)
    loaded, payload = load_model(tmp_path / "m.pt")
    assert payload["categories"] == categories and payload["iteration"] == 3
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_checkpoint_errors_name_the_problem(tmp_path) -> None:
    model = build_model("lite", pretrained_backbone=False)
    save_checkpoint(tmp_path / "lite.pt", model, [{"id": 1, "name": "person"}])
    with pytest.raises(ValueError, match="weights are for preset 'lite', not 'r50'"):
        load_model(tmp_path / "lite.pt", preset="r50")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable checkpoint"):
        load_model(tmp_path / "junk.pt")
    payload = torch.load(tmp_path / "lite.pt", weights_only=True)
    del payload["model"]["roi_heads.track_head.fcs.0.weight"]
    torch.save(payload, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="missing: roi_heads.track_head.fcs.0.weight"):
        load_model(tmp_path / "cut.pt")
