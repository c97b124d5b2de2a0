"""The ``nano`` preset: MaskTrackRCNN on NanoDet-g's COCO-detection-trained CSP trunk.

* every trunk tensor of the built model is the converted checkpoint's (read
  here straight from the file), none left at random init;
* on a real vtest frame, the model's transform + trunk give NanoDet's own
  C2..C5 (``NanoDet.features`` on ``nanodet_io.normalize_bgr`` input);
* a missing checkpoint fails naming ``make nanodet``; random init builds
  without it; ``frozen_stages`` freezes stem and stages as in the other presets;
* train and eval forwards with Temporal RoI Align;
* the ONNX export (CLI) carries the normalisation and the RGB -> BGR flip:
  ONNX Runtime's pyramid and boxes on vtest frames equal PyTorch's.

Tests that need ``models/teacher/nanodet-g.pt`` (``make nanodet``) or
opencv-doc's vtest.avi skip with the reason when it is absent.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from models import MaskTrackRCNN, TemporalRoIAlign, build_model
from models.backbones.nanodet_csp import TRUNK_CHANNELS, NanoDetCspNet
from models.backbones.nanodet_fpn import (
    DEFAULT_NANODET_CHECKPOINT,
    INPUT_MEAN,
    INPUT_STD,
    NanoTrunk,
)
from models.presets import IMAGENET_MEAN, IMAGENET_STD
from models.teacher.nanodet_io import INPUT_MEAN_BGR, INPUT_STD_BGR, normalize_bgr

from .synthetic_pair import make_pair

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
VTEST_HW = (576, 768)
LEVELS = ("c2", "c3", "c4", "c5")
# Our input is (rgb/255 - m/255) / (s/255), NanoDet's (bgr - m) / s: the same up to float32
# rounding of the three divisions. Measured on frame 300: at most 5.1e-7 of each level's
# largest magnitude; 1e-5 leaves a margin, while a channel order or scale mistake moves values
# by more than 1e-2 (checked below).
RELATIVE_TOLERANCE = 1e-5
# NanoDet-g's trunk: 25 convs (the stem; per CspBlock in and out convs plus 2 per res block,
# 1/2/2/3 res blocks), weight and bias each. The file's other 9 convs are the PAN's and the head's.
TRUNK_TENSORS = 50
needs_checkpoint = pytest.mark.skipif(
    not DEFAULT_NANODET_CHECKPOINT.is_file(),
    reason=f"{DEFAULT_NANODET_CHECKPOINT} is missing: run `make nanodet`",
)
needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")


def vtest_frames(count: int, start: int = 300) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(count):
        ok, frame = capture.read()
        assert ok, f"cannot read frame {start + len(frames)} of {VTEST}"
        frames.append(frame)
    capture.release()
    return frames


def rgb_tensor(frame_bgr: np.ndarray) -> torch.Tensor:
    """What callers hand the model: RGB float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame_bgr[:, :, ::-1].transpose(2, 0, 1))).float() / 255


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def checkpoint_trunk() -> dict[str, torch.Tensor]:
    """The trunk tensors of the converted file, read without the project's loaders."""
    payload = torch.load(DEFAULT_NANODET_CHECKPOINT, map_location="cpu", weights_only=True)
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in payload["state_dict"].items() if k.startswith(prefix)}


def test_input_statistics_are_nanodets_in_rgb_order_and_unit_scale():
    np.testing.assert_allclose(np.array(INPUT_MEAN[::-1]) * 255, INPUT_MEAN_BGR, rtol=1e-7)
    np.testing.assert_allclose(np.array(INPUT_STD[::-1]) * 255, INPUT_STD_BGR, rtol=1e-7)
    # NanoDet's statistics are ImageNet's times 255, in BGR order.
    np.testing.assert_allclose(INPUT_MEAN, IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(INPUT_STD, IMAGENET_STD, rtol=1e-6)
    config = build_model("nano", pretrained_backbone=False).config
    assert (config.image_mean, config.image_std) == (INPUT_MEAN, INPUT_STD)


@needs_checkpoint
def test_every_trunk_tensor_is_the_checkpoints(checkpoint_trunk):
    model = build_model("nano")
    assert model.config.pretrained_backbone is True and model.config.class_names == ("person",)
    trunk = model.backbone.body
    assert isinstance(trunk, NanoTrunk)
    state = trunk.state_dict()
    assert len(state) == TRUNK_TENSORS
    assert state.keys() == checkpoint_trunk.keys()
    for key, tensor in state.items():
        assert torch.equal(tensor, checkpoint_trunk[key]), key
    # and loading changed every one of them
    random = build_model("nano", pretrained_backbone=False).backbone.body.state_dict()
    unchanged = [key for key in state if torch.equal(random[key], state[key])]
    assert unchanged == []
    explicit = build_model("nano", pretrained_backbone=str(DEFAULT_NANODET_CHECKPOINT)).backbone.body.state_dict()
    assert all(torch.equal(explicit[key], state[key]) for key in state)


@needs_checkpoint
@needs_vtest
def test_trunk_features_equal_nanodets_own_on_a_vtest_frame():
    from models.teacher.nanodet import NanoDet

    frame = vtest_frames(1)[0]
    assert frame.shape[:2] == VTEST_HW
    reference = NanoDet.from_checkpoint(DEFAULT_NANODET_CHECKPOINT)
    # min/max size equal to the frame's: the transform's resize is the identity, no padding
    model = build_model("nano", min_size=VTEST_HW[0], max_size=VTEST_HW[1]).eval()
    with torch.no_grad():
        expected = reference.features(torch.from_numpy(normalize_bgr(frame)))
        images, _ = model.transform([rgb_tensor(frame)])
        assert tuple(images.tensors.shape) == (1, 3, *VTEST_HW)
        got = model.backbone.body(images.tensors)
        unflipped = NanoDetCspNet.forward(model.backbone.body, images.tensors)
    assert list(got) == list(LEVELS)
    for name, channels, stride in zip(LEVELS, TRUNK_CHANNELS, (4, 8, 16, 32)):
        assert tuple(got[name].shape) == (1, channels, VTEST_HW[0] // stride, VTEST_HW[1] // stride)
        assert relative_error(got[name], expected[name]) < RELATIVE_TOLERANCE, name
        # the RGB -> BGR flip is what makes them equal
        assert relative_error(unflipped[name], expected[name]) > 1e-2, name


def test_missing_checkpoint_names_make_nanodet_and_random_init_builds(tmp_path):
    missing = tmp_path / "nanodet-g.pt"
    with pytest.raises(FileNotFoundError, match=r"nanodet-g\.pt.*make nanodet"):
        build_model("nano", pretrained_backbone=missing)
    for no_weights in (False, None):
        model = build_model("nano", pretrained_backbone=no_weights)
        assert isinstance(model.backbone.body, NanoTrunk)


def test_a_file_of_another_format_is_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": NanoDetCspNet().state_dict()}, other)
    with pytest.raises(ValueError, match="not a cellwatch.nanodet-g/1 checkpoint"):
        build_model("nano", pretrained_backbone=other)


@pytest.mark.parametrize("frozen_stages", [-1, 0, 1, 2, 4])
def test_frozen_stages_freeze_stem_then_stages(frozen_stages):
    model = build_model("nano", pretrained_backbone=False, frozen_stages=frozen_stages)
    trunk = model.backbone.body
    prefixes = ("stem.", "stage1.", "stage2.", "stage3.", "stage4.")
    assert len(trunk.stages()) == len(prefixes)
    for name, parameter in trunk.named_parameters():
        unit = next(i for i, prefix in enumerate(prefixes) if name.startswith(prefix))
        assert parameter.requires_grad == (unit > frozen_stages), name
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    with pytest.raises(ValueError, match="frozen_stages"):
        build_model("nano", pretrained_backbone=False, frozen_stages=5)


def test_trains_with_temporal_roi_align_and_frozen_units_get_no_gradient():
    torch.manual_seed(0)
    model = build_model(
        "nano", pretrained_backbone=False, min_size=128, max_size=192, roi_extractor="temporal",
        temporal_heads=("box", "mask", "track"), rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=300,
    ).train()
    assert isinstance(model.roi_heads.box_roi_pool, TemporalRoIAlign)
    (key, key_target), (reference, reference_target) = make_pair()
    losses = model([key], [key_target], [reference], [reference_target])
    assert set(losses) == {
        "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "loss_track"
    }
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trunk = model.backbone.body
    assert all(p.grad is None for p in trunk.stage1.parameters())  # frozen_stages=1: stem and stage1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trunk.stage4.parameters())


def _run_video(model: MaskTrackRCNN, frames: list[torch.Tensor], window: int = 2) -> list[dict]:
    cache: deque[list[torch.Tensor]] = deque(maxlen=window)
    outputs = []
    for frame in frames:
        support = [torch.stack(level)[None] for level in zip(*cache)] if cache else None
        outputs.append(model([frame], support_features=support)[0])
        cache.append(outputs[-1]["cache_features"])
    return outputs


@needs_checkpoint
@needs_vtest
def test_eval_with_temporal_roi_align_on_vtest_frames():
    torch.manual_seed(0)
    model = build_model("nano", roi_extractor="temporal", score_thresh=0.0).eval()
    frames = [rgb_tensor(f) for f in vtest_frames(3)]
    outputs = _run_video(model, frames)
    # 576x768 -> 360x480 (min_size 360), padded to 384x480 (multiples of 32)
    for out in outputs:
        n = len(out["boxes"])
        assert 0 < n <= model.config.detections_per_img
        assert out["masks"].shape == (n, 1, *VTEST_HW)
        assert out["embeddings"].shape == (n, 256)
        assert [tuple(f.shape) for f in out["cache_features"]] == [
            (128, 384 // s, 480 // s) for s in (4, 8, 16, 32)
        ]
    alone = model([frames[2]])[0]
    assert not torch.equal(alone["embeddings"], outputs[2]["embeddings"])


@needs_checkpoint
@needs_vtest
def test_onnx_export_carries_the_normalisation(tmp_path):
    from export.onnx import main, resolve_model
    from export.ort_runtime import OnnxFrameModel
    from export.spec import read_sidecar
    from models.stream_step import prepare_frame

    path = tmp_path / "nano.onnx"
    code = main(["--preset", "nano", "--mode", "standard", "--out", str(path), "--frame-size", "768x576",
                 "--random-init", "--set", "roi_extractor=temporal"])
    assert code == 0, "python -m export.onnx --preset nano failed"
    sidecar = read_sidecar(path)
    assert (sidecar.preset, sidecar.classes, sidecar.image_mean) == ("nano", ["person"], list(INPUT_MEAN))
    model, _ = resolve_model("nano", None, {"roi_extractor": "temporal"}, random_init=True)
    model.eval()
    runtime = OnnxFrameModel(path, threads=2)
    height, width = runtime.input_size
    torch_cache, ort_cache = [], runtime.empty_cache()
    for frame in vtest_frames(2):
        image = prepare_frame(frame, (height, width))
        support = [torch.stack(level)[None] for level in zip(*torch_cache)] if torch_cache else None
        with torch.no_grad():
            expected = model([torch.from_numpy(image)], support_features=support)[0]
        got = runtime.infer(image, ort_cache)
        for level, name in enumerate(("p2", "p3", "p4", "p5")):
            np.testing.assert_allclose(
                got[f"features_{name}"][0], expected["cache_features"][level].numpy(), atol=1e-4, err_msg=name
            )
        assert len(got["boxes"]) == len(expected["boxes"]) > 0
        np.testing.assert_allclose(got["boxes"], expected["boxes"].numpy(), atol=0.01, rtol=0)
        np.testing.assert_allclose(got["scores"], expected["scores"].numpy(), atol=1e-4, rtol=0)
        torch_cache.append(expected["cache_features"])
        ort_cache = [np.concatenate([c, got[f"features_{n}"]]) for c, n in zip(ort_cache, ("p2", "p3", "p4", "p5"))]
