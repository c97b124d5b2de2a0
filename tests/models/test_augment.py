"""Scale augmentation (zoom in and out), photometric variety, the steps run
together on the pair dataset, their command-line options and the preview
sheet: targets stay valid, identities stay with their pixels, draws cover
their ranges and come only from the sample's generator."""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import train
from models.data import CopyPaste, YTVISPairs, load_ytvis
from models.data import preview as preview_module
from models.data.augment import PairAugmentations
from models.data.backgrounds import Backgrounds
from models.data.photometric import (
    Photometric,
    PhotometricSetting,
    apply_setting,
    jpeg_roundtrip,
)
from models.data.transforms import boxes_from_masks, to_tensors
from models.data.zoom import Zoom, settle_cut, zoom_in, zoom_out
from tests.models.test_copy_paste import HEIGHT as SPLIT_HEIGHT
from tests.models.test_copy_paste import WIDTH as SPLIT_WIDTH
from tests.models.test_copy_paste import write_photos, write_split

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

W, H = 320, 240
COLOURS = {1: (230, 30, 30), 2: (30, 200, 30), 3: (30, 30, 230), 4: (230, 220, 30), 5: (200, 30, 200)}
# id -> (x, y, height) in the key and in the reference (None: absent)
KEY_PEOPLE = {1: (20, 150, 30), 2: (80, 100, 45), 3: (160, 60, 60), 4: (250, 20, 90)}
REFERENCE_PEOPLE = {1: (26, 150, 30), 2: (84, 102, 45), 3: (150, 62, 61), 5: (290, 180, 40)}


def blob(x: int, y: int, height: int, width: int, frame_hw: tuple[int, int]) -> np.ndarray:
    """A head over a body, ``height`` tall, top-left at (x, y)."""
    mask = np.zeros(frame_hw, np.uint8)
    head = max(2, width // 3)
    cv2.circle(mask, (x + width // 2, y + head), head, 1, -1)
    cv2.rectangle(mask, (x, y + 2 * head - 1), (x + width - 1, y + height - 1), 1, -1)
    return mask


def make_frame(people: dict[int, tuple[int, int, int]]) -> tuple[np.ndarray, dict]:
    ramp = np.linspace(90, 160, W, dtype=np.float32)
    image = np.broadcast_to(ramp[None, :, None], (H, W, 3)).astype(np.uint8).copy()
    masks = []
    for instance_id, (x, y, height) in people.items():
        mask = blob(x, y, height, max(6, height // 3), (H, W))
        image[mask.astype(bool)] = COLOURS[instance_id]
        masks.append(mask)
    masks = np.stack(masks)
    target = {"boxes": boxes_from_masks(masks), "labels": np.ones(len(people), np.int64), "masks": masks,
              "instance_ids": np.array(list(people), np.int64), "ignore_boxes": np.zeros((0, 4), np.float32)}
    return image, target


def check_target(image: np.ndarray, target: dict) -> None:
    """Binary masks, each non-empty, each box its mask's bounding box inside the frame, one entry per id."""
    count = len(target["instance_ids"])
    assert target["masks"].shape == (count, *image.shape[:2]) and target["boxes"].shape == (count, 4)
    assert len(target["labels"]) == count and len(set(target["instance_ids"].tolist())) == count
    assert set(np.unique(target["masks"]).tolist()) <= {0, 1}
    for mask, box in zip(target["masks"], target["boxes"]):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert (target["ignore_boxes"][:, :2] >= 0).all() and (target["ignore_boxes"][:, 2] <= image.shape[1]).all()


def check_pixels_follow_ids(image: np.ndarray, target: dict) -> None:
    """The inside of each mask shows that identity's colour: masks, ids and pixels moved together."""
    for mask, instance_id in zip(target["masks"], target["instance_ids"].tolist()):
        inside = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
        if inside.sum() >= 5:
            assert np.abs(image[inside].mean(0) - COLOURS[instance_id]).max() < 30, instance_id


def texture_zoom(**settings) -> Zoom:
    return Zoom(prob=1.0, background_weights=(0, 0, 1), **settings)


# --- zoom ---

def test_zoomed_heights_cover_40_px_to_the_frame_height_and_targets_stay_valid() -> None:
    augmenter = texture_zoom().bind(Backgrounds())
    key, reference = make_frame(KEY_PEOPLE), make_frame(REFERENCE_PEOPLE)
    heights, zoom_ins, zoom_outs = [], 0, 0
    for seed in range(500):
        new_key, new_reference, info = augmenter.augment(key, reference, np.random.default_rng(seed), 1, False)
        heights.append(info["anchor_height"])
        zoom_ins += info["zoom"] > 1
        zoom_outs += info["zoom"] < 1
        assert (info["canvas"] == "texture") == (info["zoom"] < 1)
        for (image, target), (_, original) in zip((new_key, new_reference), (key, reference)):
            assert image.shape == (H, W, 3)
            check_target(image, target)
            check_pixels_follow_ids(image, target)
            assert set(target["instance_ids"].tolist()) <= set(original["instance_ids"].tolist())
    heights = np.array(heights)
    assert heights.min() <= 44 and heights.max() >= 0.95 * H
    # Log-uniform-ish: every fifth of [40, H] on a log scale gets its share.
    counts, _ = np.histogram(heights, bins=np.geomspace(40, H, 6))
    assert counts.min() >= 0.05 * len(heights), counts
    assert zoom_ins >= 150 and zoom_outs >= 100


def test_zooming_out_makes_people_smaller_than_the_anchor_down_to_a_few_pixels() -> None:
    augmenter = texture_zoom(out_prob=1.0).bind(Backgrounds())
    key, reference = make_frame(KEY_PEOPLE), make_frame(REFERENCE_PEOPLE)
    smallest = []
    for seed in range(100):
        (_, target), _, info = augmenter.augment(key, reference, np.random.default_rng(seed), 1, False)
        assert info["zoom"] < 1
        boxes = target["boxes"]
        smallest.append((boxes[:, 3] - boxes[:, 1]).min())
    # The 30-px person shrinks with a 90-px anchor brought down to 40: 13 px.
    assert min(smallest) < 20


def test_a_zoom_is_the_same_for_both_frames_and_a_function_of_the_generator() -> None:
    augmenter = texture_zoom().bind(Backgrounds())
    key, reference = make_frame(KEY_PEOPLE), make_frame(REFERENCE_PEOPLE)
    for seed in range(40):
        first = augmenter.augment(key, reference, np.random.default_rng(seed), 1, False)
        again = augmenter.augment(key, reference, np.random.default_rng(seed), 1, False)
        assert first[2] == again[2] and np.array_equal(first[0][0], again[0][0])
        # 1 moved by (6, 0) between the frames: after the shared zoom, by (6, 0) x scale.
        key_ids, reference_ids = first[0][1]["instance_ids"].tolist(), first[1][1]["instance_ids"].tolist()
        if 1 in key_ids and 1 in reference_ids:
            key_box = first[0][1]["boxes"][key_ids.index(1)]
            reference_box = first[1][1]["boxes"][reference_ids.index(1)]
            if 0 < key_box[0] and reference_box[2] < W and 0 < key_box[1] and key_box[3] < H:  # uncut
                assert abs((reference_box[0] - key_box[0]) - 6 * first[2]["zoom"]) <= 2
    assert not np.array_equal(augmenter.augment(key, reference, np.random.default_rng(1), 1, False)[0][0],
                              augmenter.augment(key, reference, np.random.default_rng(2), 1, False)[0][0])


def test_a_crop_keeps_the_visible_part_and_drops_slivers_into_ignore_boxes() -> None:
    masks = np.zeros((3, 100, 200), np.uint8)
    masks[0, 45:85, 10:30] = 1  # A: half inside the window
    masks[1, 30:70, 100:104] = 1  # B: wholly inside
    masks[2, 0:40, 5:21] = 1  # C: one column inside
    target = {"boxes": boxes_from_masks(masks), "labels": np.array([1, 1, 1]), "masks": masks,
              "instance_ids": np.array([7, 8, 9]), "ignore_boxes": np.array([[0, 0, 40, 10]], np.float32)}
    image = np.zeros((100, 200, 3), np.uint8)
    areas = masks.reshape(3, -1).sum(1) * 4.0
    zoomed_image, zoomed = zoom_in((image, target), 2.0, 20, 25)  # window x 20-120, y 25-75
    settled = settle_cut(zoomed, areas, min_pixels=20, min_fraction=0.25)
    assert settled["instance_ids"].tolist() == [7, 8]
    assert settled["boxes"].tolist() == [[0, 40, 20, 100], [160, 10, 168, 90]]
    assert settled["masks"][0].sum() == 20 * 60 and settled["masks"][1].sum() == 8 * 80
    # The old ignore box is moved (x 0-40 -> -40..40 -> 0..40, y 0-10 is above the window: gone);
    # C's sliver (x 20-21, y 25-40) is ignored, not labelled.
    assert settled["ignore_boxes"].tolist() == [[0, 0, 2, 30]]
    check_target(zoomed_image, settled)
    # Zooming out: boxes scale and move with the frame.
    canvas = np.full((100, 200, 3), 50, np.uint8)
    _, shrunk = zoom_out((image, target), 0.5, 60, 30, canvas, feather=0)
    assert np.abs(boxes_from_masks(shrunk["masks"]) - (target["boxes"] * 0.5 + [60, 30, 60, 30])).max() <= 1


def test_an_instance_resized_away_is_never_the_anchor_and_is_dropped() -> None:
    image, target = make_frame(KEY_PEOPLE)
    target = {**target, "masks": np.concatenate([target["masks"], np.zeros((1, H, W), np.uint8)]),
              "boxes": np.concatenate([target["boxes"], np.zeros((1, 4), np.float32)]),
              "labels": np.append(target["labels"], 1), "instance_ids": np.append(target["instance_ids"], 99)}
    augmenter = texture_zoom().bind(Backgrounds())
    for seed in range(30):
        (zoomed_image, zoomed), _, info = augmenter.augment((image, target), (image, target),
                                                            np.random.default_rng(seed), 1, False)
        assert info["anchor"] != 99 and 99 not in zoomed["instance_ids"].tolist()
        check_target(zoomed_image, zoomed)


def test_zoom_settings_are_checked() -> None:
    for bad in ({"prob": 1.5}, {"min_height": 0}, {"max_height": 1.2}, {"max_upscale": 0.5}, {"out_prob": -0.1},
                {"background_weights": (1, 1)}):
        with pytest.raises(ValueError, match="zoom: "):
            Zoom(**bad)
    with pytest.raises(ValueError, match="leave no background"):
        Zoom(background_weights=(1, 1, 0)).bind(Backgrounds())  # neither empty scenes nor photos


# --- photometric ---

def test_photometric_draws_cover_their_ranges_at_their_rates() -> None:
    config = Photometric()
    rng = np.random.default_rng(0)
    settings = [config.draw(rng) for _ in range(4000)]
    qualities = [s.jpeg_quality for s in settings if s.jpeg_quality is not None]
    assert 20 <= min(qualities) <= 22 and 93 <= max(qualities) <= 95
    rates = {
        "jpeg": len(qualities) / len(settings),
        "blur": np.mean([s.blur is not None for s in settings]),
        "grey": np.mean([s.look == "grey" for s in settings]),
        "ir": np.mean([s.look == "ir" for s in settings]),
        "low light": np.mean([s.low_light is not None for s in settings]),
    }
    expected = {"jpeg": 0.3, "blur": 0.2, "grey": 0.1, "ir": 0.1, "low light": 0.15}
    assert all(abs(rates[k] - expected[k]) < 0.03 for k in expected), rates
    gaussian = [s.blur[1] for s in settings if s.blur and s.blur[0] == "gaussian"]
    motion = [s.blur[1] for s in settings if s.blur and s.blur[0] == "motion"]
    assert 0.5 <= min(gaussian) and max(gaussian) <= 2.0 and 3 <= min(motion) and max(motion) <= 11
    gains = [s.low_light[0] for s in settings if s.low_light]
    assert 0.15 <= min(gains) < 0.2 and 0.45 < max(gains) <= 0.5
    assert all(s.ir is not None for s in settings if s.look == "ir")
    assert all(0.8 <= v <= 1.2 for s in settings if s.colour for v in s.colour[:2])


def test_the_reference_setting_is_the_key_setting_nudged() -> None:
    config = Photometric(blur_prob=1, jpeg_prob=1, low_light_prob=1, ir_prob=1, grey_prob=0)
    rng = np.random.default_rng(1)
    for _ in range(200):
        key = config.draw(rng)
        reference = config.perturb(key, rng)
        assert (reference.look, reference.blur[0]) == (key.look, key.blur[0])
        for a, b in [(key.colour, reference.colour), (key.ir, reference.ir), (key.low_light, reference.low_light)]:
            assert np.all(np.abs(np.array(b) / np.array(a) - 1) <= 0.02 + 1e-9)
        assert abs(reference.blur[1] / key.blur[1] - 1) <= 0.02
        assert abs(reference.jpeg_quality - key.jpeg_quality) <= 2 and 20 <= reference.jpeg_quality <= 95


def test_each_effect_changes_the_pixels_as_named_and_nothing_else() -> None:
    image, target = make_frame(KEY_PEOPLE)
    rng = np.random.default_rng(2)
    grey = apply_setting(image, PhotometricSetting(look="grey"), rng)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    ir = apply_setting(image, PhotometricSetting(look="ir", ir=(1.5, 1.3, 2.0)), rng)
    assert (ir[..., 0] == ir[..., 2]).all() and np.abs(ir.astype(int) - grey.astype(int)).mean() > 5
    dark = apply_setting(image, PhotometricSetting(low_light=(0.25, 4.0)), rng)
    assert abs(dark.mean() / image.mean() - 0.25) < 0.03 and (dark.astype(int) - image * 0.25).std() > 3
    assert np.array_equal(apply_setting(image, PhotometricSetting(jpeg_quality=30), rng), jpeg_roundtrip(image, 30))
    assert not np.array_equal(jpeg_roundtrip(image, 30), image)

    def sharpness(x: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())

    for blur in [("gaussian", 1.5, 0.0), ("motion", 9.0, 30.0)]:
        assert sharpness(apply_setting(image, PhotometricSetting(blur=blur), rng)) < 0.5 * sharpness(image)
    augmenter = Photometric(blur_prob=1, jpeg_prob=1, low_light_prob=1).bind()
    (new_image, new_target), (_, reference_target), info = augmenter.augment(
        (image, target), (image, target), np.random.default_rng(3), 1, False)
    assert new_target is target and reference_target is target  # geometry and targets untouched
    assert new_image.shape == image.shape and info["photometric"].jpeg_quality is not None
    with pytest.raises(ValueError, match="grey_prob"):
        Photometric(grey_prob=0.6, ir_prob=0.6)
    with pytest.raises(ValueError, match="jpeg_quality"):
        Photometric(jpeg_quality=(0, 101))


def test_colour_jitter_changes_both_frames_nearly_alike() -> None:
    augmenter = Photometric(grey_prob=0, ir_prob=0, blur_prob=0, jpeg_prob=0, low_light_prob=0).bind()
    original = make_frame(KEY_PEOPLE)
    changes = []
    for seed in range(6):
        # The key as its own reference: whatever differs between the two is the drift.
        key, reference, _ = augmenter.augment(original, original, np.random.default_rng(seed), 1, False)
        changes.append(np.abs(key[0].astype(int) - original[0].astype(int)).mean())
        drift = np.abs(key[0].astype(int) - reference[0].astype(int))
        assert drift.mean() <= 0.03 * 255 and np.percentile(drift, 99) <= 0.08 * 255
    assert np.mean(changes) > 8


# --- the steps together, on the pair dataset ---

@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("people"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"))


def all_steps(split: Path, photos: Path, zoom: bool = True, photometric: bool = True) -> PairAugmentations:
    annotations = load_ytvis(split / "instances.json")
    copy_paste = CopyPaste(prob=1.0, background_dir=photos).bind(annotations, split / "JPEGImages")
    return PairAugmentations(copy_paste, texture_zoom().bind(copy_paste.backgrounds) if zoom else None,
                             Photometric().bind() if photometric else None)


def test_the_steps_run_in_order_each_on_its_own_generator(split, photos) -> None:
    annotations = load_ytvis(split / "instances.json")
    pairs = YTVISPairs(annotations, split / "JPEGImages", scale=(SPLIT_WIDTH, SPLIT_HEIGHT),
                       augmenter=all_steps(split, photos))
    copy_paste_only = all_steps(split, photos, zoom=False, photometric=False)
    for index in range(len(pairs)):
        (video_id, key, reference, flip), rng = pairs.draw_with_rng(index)
        frames = pairs.frame_arrays(video_id, key, flip), pairs.frame_arrays(video_id, reference, flip)
        *augmented, info = pairs.augmenter.augment(*frames, rng, video_id, flip)
        assert set(info) == {"copy_paste", "zoom", "photometric"}
        # The dataset hands training exactly these frames.
        image, target = to_tensors(*augmented[0])
        assert torch.equal(pairs[index][0], image) and torch.equal(pairs[index][1]["masks"], target["masks"])
        # Zoom and photometric on or off, copy-paste draws the same.
        _, rng_again = pairs.draw_with_rng(index)
        alone = copy_paste_only.augment(*frames, rng_again, video_id, flip)[2]
        assert alone["copy_paste"] == info["copy_paste"]
        key_ids = set(augmented[0][1]["instance_ids"].tolist())
        reference_ids = set(augmented[1][1]["instance_ids"].tolist())
        pasted = set(info["copy_paste"]["pasted"])
        assert key_ids | reference_ids <= {11, 12, 13, 21, 22} | pasted
        for image, target in augmented:
            check_target(image, target)


def test_the_pair_dataset_imports_no_augmentation() -> None:
    source = Path(__file__).resolve().parents[2] / "models" / "data" / "ytvis.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or ""} | {alias.name for alias in node.names}
    assert not imported & {"copy_paste", "zoom", "photometric", "augment", "backgrounds", "CopyPaste"}


def test_options_need_their_switch_and_are_checked(split, tmp_path, capsys) -> None:
    base = ["--preset", "lite", "--data", str(split), "--out", str(tmp_path / "run")]
    args = train.parse_args(base + ["--zoom", "--photometric"])
    assert args.zoom_heights == (40.0, 1.0) and args.zoom_prob == 0.5 and args.zoom_out_prob == 0.3
    assert args.jpeg_quality == (20, 95) and args.low_light_prob == 0.15 and args.copy_paste_prob is None
    plain = train.parse_args(base)
    assert not (plain.copy_paste or plain.zoom or plain.photometric) and plain.zoom_prob is None
    for extra, message in [(["--zoom-prob", "0.3"], "--zoom-prob needs --zoom"),
                           (["--blur-prob", "0.3"], "--blur-prob needs --photometric"),
                           (["--copy-paste-backgrounds", str(tmp_path)], "needs --copy-paste or --zoom"),
                           (["--zoom", "--zoom-heights", "40,1.5"], "max_height"),
                           (["--photometric", "--jpeg-quality", "0,90"], "jpeg_quality"),
                           (["--zoom", "--zoom-heights", "forty"], "expected LOW,HIGH")]:
        with pytest.raises(SystemExit):
            train.parse_args(base + extra)
        assert message in capsys.readouterr().err


def test_preview_writes_a_sheet_of_pairs_and_names_a_bad_annotation_file(split, photos, tmp_path, capsys) -> None:
    sheet = tmp_path / "sheet.png"
    args = ["--data", str(split), "--out", str(sheet), "--n", "3", "--columns", "2", "--copy-paste",
            "--copy-paste-backgrounds", str(photos), "--zoom", "--photometric", "--frame-range", "2"]
    assert preview_module.main(args) == 0
    image = cv2.imread(str(sheet))
    # Default training scale: 160x120 frames become 480x360; a pair is two frames and a 4-px gap.
    assert image is not None and image.shape == (2 * 360, 2 * (2 * 480 + 4), 3)
    assert "3 pairs" in capsys.readouterr().out
    missing = tmp_path / "nope.json"
    assert preview_module.main(["--ann", str(missing), "--images", str(split), "--out", str(sheet)]) == 2
    assert f"annotation file {missing} does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"videos": [')
    assert preview_module.main(["--ann", str(broken), "--images", str(split), "--out", str(sheet)]) == 2
    assert "broken.json: malformed JSON" in capsys.readouterr().err
