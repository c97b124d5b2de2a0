"""MaskTrackRCNN end to end: presets build and run, the training losses, errors."""

from __future__ import annotations

import statistics
import time
from collections import deque

import pytest
import torch

from models import PRESETS, MaskTrackRCNN, TemporalRoIAlign, build_model
from models.backbones.nanodet_fpn import DEFAULT_NANODET_CHECKPOINT
from models.heads import TrackHead, track_logits, track_loss, track_targets

from .synthetic_pair import make_pair

ROI_LEVEL_STRIDES = (4, 8, 16, 32)


def _run_video(model: MaskTrackRCNN, frames: list[torch.Tensor], window: int) -> list[dict]:
    """Online inference: each frame sees the cache of up to ``window`` past frames
    (stacked per level as [1, T, C, H_l, W_l], as the model takes them)."""
    cache: deque[list[torch.Tensor]] = deque(maxlen=window)
    outputs = []
    for frame in frames:
        support = [torch.stack(level)[None] for level in zip(*cache)] if cache else None
        out = model([frame], support_features=support)[0]
        outputs.append(out)
        cache.append(out["cache_features"])
    return outputs


# nano's detection-trained trunk is built by `make nanodet` (not committed)
_NEEDS_NANODET = pytest.mark.skipif(not DEFAULT_NANODET_CHECKPOINT.is_file(),
                                    reason=f"{DEFAULT_NANODET_CHECKPOINT} missing: run make nanodet")


@pytest.mark.parametrize("preset", [pytest.param(p, marks=_NEEDS_NANODET) if p == "nano" else p for p in PRESETS])
def test_preset_builds_and_runs_at_360x640_with_0_and_2_support_frames(preset: str) -> None:
    torch.manual_seed(0)
    # Randomly initialised heads score near 1/(classes+1): lower the threshold
    # so that detections (and their masks and embeddings) are really produced.
    model = build_model(preset, roi_extractor="temporal", temporal_heads=("box", "mask", "track"), score_thresh=0.0)
    model.eval()
    assert isinstance(model.roi_heads.box_roi_pool, TemporalRoIAlign)
    frames = [torch.rand(3, 360, 640) for _ in range(3)]
    outputs = _run_video(model, frames, window=2)
    config = model.config
    for t, out in enumerate(outputs):
        n = out["boxes"].shape[0]
        assert 0 < n <= config.detections_per_img
        assert out["masks"].shape == (n, 1, 360, 640)
        assert out["scores"].shape == out["labels"].shape == (n,)
        assert out["embeddings"].shape == (n, config.track_fc_channels[-1])
        assert (out["boxes"][:, 2] <= 640).all() and (out["boxes"][:, 3] <= 360).all()
        assert 1 <= int(out["labels"].min()) and int(out["labels"].max()) <= config.num_classes
        # Features for the cache: P2..P5 of the padded 384x640 input.
        assert [tuple(f.shape) for f in out["cache_features"]] == [
            (config.fpn_channels, 384 // s, 640 // s) for s in ROI_LEVEL_STRIDES
        ]
    # Frame 2 saw two support frames; its output must differ from a run without them.
    alone = model([frames[2]])[0]
    assert not torch.equal(alone["embeddings"], outputs[2]["embeddings"]) or not torch.equal(
        alone["boxes"], outputs[2]["boxes"]
    )


def test_without_support_temporal_model_equals_roialign_model() -> None:
    torch.manual_seed(0)
    plain = build_model("lite", pretrained_backbone=False, score_thresh=0.0).eval()
    temporal = build_model(
        "lite", pretrained_backbone=False, score_thresh=0.0, roi_extractor="temporal",
        temporal_heads=("box", "mask", "track"),
    ).eval()
    # Same weights where the two share parameters; TRoIA's embedding conv is extra.
    missing, unexpected = temporal.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all("embed" in k for k in missing)
    frame = torch.rand(3, 180, 320)
    a, b = plain([frame])[0], temporal([frame])[0]
    for key in ("boxes", "scores", "labels", "masks", "embeddings"):
        assert torch.equal(a[key], b[key]), key


def test_support_features_of_wrong_shape_are_rejected() -> None:
    model = build_model("lite", pretrained_backbone=False, roi_extractor="temporal").eval()
    first = model([torch.rand(3, 180, 320)])[0]
    support = [f[None, None] for f in first["cache_features"]]
    with pytest.raises(ValueError, match=r"support_features\[0\] must be \[B=1, T, C=128, 96, 96\]"):
        model([torch.rand(3, 360, 360)], support_features=support)


def test_unknown_preset_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        build_model("r152")
    for name in ("r50", "r101", "x101_32x4d", "x101_64x4d", "lite"):
        assert name in str(err.value)


@pytest.mark.parametrize(
    "option, expected",
    [
        ({"roi_extrator": "temporal"}, "roi_extractor"),
        ({"roi_extractor": "troialign"}, "roialign, temporal"),
        ({"support_level": "finest"}, "same, coarsest"),
        ({"temporal_heads": ("box", "rpn")}, "'mask'"),
    ],
)
def test_unknown_option_lists_valid_ones(option: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        build_model("r50", **option)


def test_resnet_preset_refuses_download_flag() -> None:
    with pytest.raises(ValueError, match="nothing is downloaded"):
        build_model("r50", pretrained_backbone=True)


def test_track_targets_and_logits() -> None:
    # Proposals matched to instances 7, 3, 9; the reference frame holds 3 and 7.
    targets = track_targets(torch.tensor([7, 3, 9]), torch.tensor([3, 7]))
    assert targets.tolist() == [2, 1, 0]
    assert track_targets(torch.tensor([1, 2]), torch.tensor([], dtype=torch.int64)).tolist() == [0, 0]
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ref = torch.tensor([[3.0, 1.0]])
    assert track_logits(emb, ref).tolist() == [[0.0, 3.0], [0.0, 2.0]]


def test_track_loss_is_cross_entropy_over_positives() -> None:
    logits = [torch.tensor([[0.0, 2.0, -1.0]]), torch.tensor([[0.0, 1.0], [0.0, -1.0]])]
    targets = [torch.tensor([1]), torch.tensor([0, 1])]
    manual = -(
        torch.log_softmax(logits[0][0], 0)[1]
        + torch.log_softmax(logits[1][0], 0)[0]
        + torch.log_softmax(logits[1][1], 0)[1]
    ) / 3
    assert torch.allclose(track_loss(logits, targets), manual)


def test_track_head_has_no_relu_after_last_layer() -> None:
    torch.manual_seed(0)
    head = TrackHead(4, 2, (8, 6))
    out = head(torch.randn(50, 4, 2, 2))
    assert out.shape == (50, 6)
    assert (out < 0).any(), "embeddings must be able to go negative"


@pytest.mark.parametrize("roi_extractor", ["roialign", "temporal"])
def test_tiny_model_overfits_one_synthetic_pair(roi_extractor: str) -> None:
    torch.manual_seed(0)
    model = build_model(
        "lite",  # from the ImageNet EfficientNet-Lite0 weights, as the product starts
        min_size=128,
        max_size=192,
        roi_extractor=roi_extractor,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=300,
    )
    model.train()
    (key, key_target), (ref, ref_target) = make_pair()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.005, momentum=0.9, weight_decay=1e-4)
    start = time.monotonic()
    history = []
    for _ in range(30):
        losses = model([key], [key_target], [ref], [ref_target])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 35.0)
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    elapsed = time.monotonic() - start
    assert set(history[0]) == {
        "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "loss_track"
    }
    # Medians: the track loss of one step can spike when a new proposal meets
    # an instance the embeddings have not separated yet.
    first = sum(history[0].values())
    last = statistics.median(sum(h.values()) for h in history[-5:])
    assert last <= 0.5 * first, (first, last)
    for name in ("loss_classifier", "loss_mask", "loss_track"):
        tail = statistics.median(h[name] for h in history[-5:])
        assert tail < history[0][name], (name, history[0][name], tail)
    assert elapsed < 60, f"overfitting took {elapsed:.0f} s"
