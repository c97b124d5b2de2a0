"""Copy-paste augmentation on a tiny fixed-camera person dataset drawn here:
pasted identities, masks and boxes, occlusion, backgrounds (people-free
photos only; an empty scene without standing people), determinism, and a
short training run with every augmentation on."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from models import train
from models.checkpoint import read_checkpoint
from models.data import CopyPaste, YTVISPairs, load_ytvis
from models.data import copy_paste as copy_paste_module
from models.data.backgrounds import (
    PEOPLE_FREE_LIST,
    EmptyScenes,
    PhotoBackgrounds,
    read_people_free_list,
)
from models.data.copy_paste import Person, paste_person, settle
from models.data.transforms import to_tensors

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

WIDTH, HEIGHT = 160, 120
# annotation id -> (video, frames, top-left at frame t, width, height, colour)
PEOPLE = {
    11: (1, range(6), lambda t: (8 + 22 * t, 6), 16, 44, (200, 40, 40)),
    12: (1, range(6), lambda t: (136 - 22 * t, 60), 20, 54, (40, 60, 210)),
    21: (2, range(4), lambda t: (30 + 25 * t, 30), 18, 40, (230, 200, 30)),
    13: (2, range(3), lambda t: (120, 72), 18, 40, (150, 40, 150)),  # stands still, then leaves
    22: (2, range(4), lambda t: (10, 100), 6, 10, (30, 200, 60)),  # too small for the bank
}
LENGTHS = {1: 6, 2: 4}
REAL_IDS = set(PEOPLE)


def person_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    """A head over a body: one connected blob, narrower at the neck."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    head = max(2, w // 3)
    cv2.circle(mask, (x + w // 2, y + head), head, 1, -1)
    cv2.rectangle(mask, (x, y + 2 * head - 1), (x + w - 1, y + h - 1), 1, -1)
    return mask


def scene_background(video_id: int) -> np.ndarray:
    rng = np.random.default_rng(video_id)
    ramp = np.linspace(60, 190, WIDTH, dtype=np.float32)[None, :, None]
    image = np.broadcast_to(ramp, (HEIGHT, WIDTH, 3)) * np.array([1.0, 0.9, 0.7], np.float32)
    image = image + cv2.GaussianBlur(rng.normal(0, 25, (HEIGHT, WIDTH, 3)).astype(np.float32), (0, 0), 2)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_split(root: Path) -> Path:
    videos, annotations = [], []
    frames = {v: [scene_background(v).copy() for _ in range(n)] for v, n in LENGTHS.items()}
    stripes = (np.arange(HEIGHT) // 3 % 2).astype(np.float32)[:, None, None] * 0.35 + 0.65
    for annotation_id, (video_id, present, corner, w, h, colour) in PEOPLE.items():
        clothes = np.broadcast_to(np.array(colour) * stripes, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        segmentations = [None] * LENGTHS[video_id]
        boxes, areas = list(segmentations), list(segmentations)
        for t in present:
            mask = person_mask(*corner(t), w, h)
            frames[video_id][t][mask.astype(bool)] = clothes[mask.astype(bool)]
            rle = mask_utils.encode(np.asfortranarray(mask))
            segmentations[t] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            boxes[t], areas[t] = mask_utils.toBbox(rle).tolist(), float(mask.sum())
        annotations.append({"id": annotation_id, "video_id": video_id, "category_id": 1, "iscrowd": 0,
                            "segmentations": segmentations, "bboxes": boxes, "areas": areas})
    for video_id, images in frames.items():
        names = [f"cam{video_id}/{t:05d}.jpg" for t in range(len(images))]
        for name, image in zip(names, images):
            (root / "JPEGImages" / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "JPEGImages" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
        videos.append({"id": video_id, "width": WIDTH, "height": HEIGHT, "length": len(names), "file_names": names})
    data = {"videos": videos, "categories": [{"id": 1, "name": "person"}], "annotations": annotations}
    (root / "instances.json").write_text(json.dumps(data))
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_photos(folder: Path) -> Path:
    """good.jpg, tiny.png and broken.jpg on the folder's people-free list;
    unchecked.png, a usable photo, not on it."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:90, 0:130]
    photo = np.stack([xx * 2, yy * 2, (xx + yy) % 256], -1).astype(np.uint8)
    cv2.imwrite(str(folder / "good.jpg"), photo)
    cv2.imwrite(str(folder / "tiny.png"), photo[:20, :20])
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not an image either")
    cv2.imwrite(str(folder / "unchecked.png"), photo[:, ::-1])
    listed = ["good.jpg", "tiny.png", "broken.jpg"]
    (folder / "people_free.sha256").write_text(
        "# checked by eye\n" + "".join(f"{sha256(folder / name)}  {name}  # test\n" for name in listed))
    return folder


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_split(tmp_path_factory.mktemp("people"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"))


def pairs_for(split: Path, copy_paste: CopyPaste | None = None, **kwargs) -> YTVISPairs:
    annotations = load_ytvis(split / "instances.json")
    augmenter = copy_paste.bind(annotations, split / "JPEGImages") if copy_paste is not None else None
    return YTVISPairs(annotations, split / "JPEGImages", scale=(WIDTH, HEIGHT), augmenter=augmenter, **kwargs)


def frame(pairs: YTVISPairs, video_id: int, t: int, flip: bool = False):
    return pairs.frame_arrays(video_id, t, flip)


def mask_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def check_frame(image: np.ndarray, target: dict) -> None:
    count = len(target["instance_ids"])
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert target["masks"].shape == (count, HEIGHT, WIDTH) and target["boxes"].shape == (count, 4)
    assert len(target["labels"]) == count and len(set(target["instance_ids"].tolist())) == count
    assert set(np.unique(target["masks"]).tolist()) <= {0, 1}
    for mask, box in zip(target["masks"], target["boxes"]):
        assert mask.any()
        assert np.abs(np.array(mask_box(mask)) - box).max() <= 1
        assert 0 <= box[0] < box[2] <= WIDTH and 0 <= box[1] < box[3] <= HEIGHT
    assert (target["labels"] == 1).all()  # "person", the only category


def test_a_pasted_person_is_in_both_frames_with_one_new_id(split) -> None:
    pairs = pairs_for(split, flip_prob=0.0)
    augmenter = CopyPaste(prob=1.0, max_paste=1).bind(pairs.annotations, pairs.image_root)
    assert augmenter.first_new_id == max(REAL_IDS) + 1
    pasted = 0
    for seed in range(24):
        key, reference, info = augmenter.augment(frame(pairs, 1, 0), frame(pairs, 1, 2),
                                                 np.random.default_rng(seed), 1, False)
        if not info["pasted"]:
            continue
        pasted += 1
        assert info["pasted"] == [augmenter.first_new_id]
        in_key, in_reference = key[1]["instance_ids"].tolist(), reference[1]["instance_ids"].tolist()
        new_id = augmenter.first_new_id
        assert new_id in in_key and new_id in in_reference
        key_box, reference_box = key[1]["boxes"][in_key.index(new_id)], reference[1]["boxes"][in_reference.index(new_id)]
        assert key[1]["labels"][in_key.index(new_id)] == reference[1]["labels"][in_reference.index(new_id)] == 1
        # The same person, moved a little: centres at most max_shift heights (plus rounding) apart.
        height = key_box[3] - key_box[1]
        shift = np.abs((key_box[:2] + key_box[2:]) / 2 - (reference_box[:2] + reference_box[2:]) / 2)
        assert (shift <= 0.1 * height * 1.1 + 2).all()
        assert abs((reference_box[3] - reference_box[1]) / height - 1) <= 0.08
    assert pasted >= 8


def test_masks_boxes_and_ids_stay_valid_over_many_augmented_pairs(split, photos) -> None:
    pairs = pairs_for(split, flip_prob=0.5, copy_paste=CopyPaste(prob=1.0, max_paste=3, background_dir=photos))
    first_new = pairs.augmenter.first_new_id
    new_ids, backgrounds = set(), set()
    for epoch in range(3):
        pairs.set_epoch(epoch)
        for index in range(len(pairs)):
            (video_id, key, reference, flip), rng = pairs.draw_with_rng(index)
            frames = frame(pairs, video_id, key, flip), frame(pairs, video_id, reference, flip)
            *augmented, info = pairs.augmenter.augment(*frames, rng, video_id, flip)
            if epoch == 0:  # the dataset augments with the rest of the sample's own generator
                image, target = to_tensors(*augmented[1])
                assert torch.equal(pairs[index][2], image)
                assert torch.equal(pairs[index][3]["masks"], target["masks"])
            backgrounds.add(info["background"])
            assert info["pasted"] == list(range(first_new, first_new + len(info["pasted"])))
            for (image, target), (_, original) in zip(augmented, frames):
                check_frame(image, target)
                ids = set(target["instance_ids"].tolist())
                assert ids <= set(original["instance_ids"].tolist()) | set(info["pasted"])
                new_ids |= ids - REAL_IDS
            key_ids = set(augmented[0][1]["instance_ids"].tolist())
            # The last one pasted lies on top of everything: never hidden, in both frames.
            if info["pasted"]:
                assert info["pasted"][-1] in key_ids & set(augmented[1][1]["instance_ids"].tolist())
    assert new_ids and min(new_ids) >= first_new
    assert backgrounds == {"frame", "empty_scene", "photo", "texture"}
    # The tensors the dataset hands to training are those same frames.
    image, target, _, _ = pairs[0]
    assert image.shape == (3, HEIGHT, WIDTH) and target["masks"].shape[1:] == (HEIGHT, WIDTH)
    assert len(target["boxes"]) == len(target["instance_ids"]) == len(target["labels"])


def test_a_pasted_person_occludes_instances_which_shrink_or_are_dropped() -> None:
    image = np.full((60, 80, 3), 100, np.uint8)
    masks = np.zeros((2, 60, 80), np.uint8)
    masks[0, 10:50, 20:40] = 1  # 800 px
    masks[1, 2:4, 70:75] = 1  # 10 px: small, but not hidden, so kept
    target = {"boxes": np.array([[20, 10, 40, 50], [70, 2, 75, 4]], np.float32), "labels": np.array([1, 1]),
              "masks": masks, "instance_ids": np.array([5, 6]), "ignore_boxes": np.zeros((0, 4), np.float32)}
    block = np.ones((20, 30), np.uint8)
    person = Person(np.full((20, 30, 3), 250, np.uint8), block, block.astype(np.float32), label=1)
    areas = target["masks"].reshape(2, -1).sum(1)

    image, target = paste_person(image, target, person, 15, 10, instance_id=100)  # covers rows 10-29
    areas = np.append(areas, target["masks"][-1].sum())
    half = settle(target, areas, min_fraction=0.3, min_pixels=20)
    assert half["instance_ids"].tolist() == [5, 6, 100]
    assert half["masks"][0].sum() == 400 and half["boxes"][0].tolist() == [20, 30, 40, 50]
    assert half["masks"][2].sum() == 600 and half["boxes"][2].tolist() == [15, 10, 45, 30]
    assert (image[10:30, 15:45] == 250).all() and (image[30:50, 20:40] == 100).all()

    # A second paste covers rows 30-44 as well: 100 px of 800 left (12.5 %), so 5 goes.
    image, target = paste_person(image, target, person, 15, 25, instance_id=101)
    areas = np.append(areas, target["masks"][-1].sum())
    covered = settle(target, areas, min_fraction=0.3, min_pixels=20)
    assert covered["instance_ids"].tolist() == [6, 100, 101]
    # 100 lost its rows 25-29 to 101: 450 of 600 px visible, kept with a shorter box.
    assert covered["boxes"][1].tolist() == [15, 10, 45, 25]
    assert covered["boxes"][2].tolist() == [15, 25, 45, 45]
    assert not (covered["masks"][1] & covered["masks"][2]).any()


@pytest.mark.parametrize("kind", ["empty_scene", "photo", "texture"])
def test_a_new_background_keeps_the_people_and_is_shared_by_the_pair(split, photos, kind) -> None:
    pairs = pairs_for(split, flip_prob=0.0)
    weights = tuple(float(name == kind) for name in ("frame", "empty_scene", "photo", "texture"))
    config = CopyPaste(prob=1.0, max_paste=0, background_weights=weights, background_dir=photos)
    augmenter = config.bind(pairs.annotations, pairs.image_root)
    originals = frame(pairs, 1, 0), frame(pairs, 1, 3)
    for seed in range(3):
        key, reference, info = augmenter.augment(*originals, np.random.default_rng(seed), 1, False)
        assert info == {"background": kind, "pasted": []}
        outside = np.ones((HEIGHT, WIDTH), bool)
        for (image, target), (original_image, original_target) in zip((key, reference), originals):
            assert target["instance_ids"].tolist() == original_target["instance_ids"].tolist() == [11, 12]
            people = target["masks"].any(0)
            assert np.array_equal(image[people], original_image[people])
            outside &= ~cv2.dilate(people.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            changed = np.abs(image.astype(int) - original_image.astype(int)).max(-1)[outside]
            if kind == "empty_scene":  # the same scene without its people
                assert changed.mean() < 4
            else:
                assert (changed > 10).mean() > 0.5
        assert np.array_equal(key[0][outside], reference[0][outside])


def test_the_empty_scene_is_the_median_without_the_people(split) -> None:
    pairs = pairs_for(split)
    empty_scene = CopyPaste().bind(pairs.annotations, pairs.image_root).backgrounds.empty_scenes
    scene = empty_scene(1)
    assert scene.shape == (HEIGHT, WIDTH, 3) and empty_scene(1) is scene
    difference = np.abs(scene.astype(int) - scene_background(1).astype(int))
    assert difference.mean() < 2.5 and np.percentile(difference, 99) < 12
    # Each frame shows people where the empty scene does not.
    image, target = frame(pairs, 1, 0)
    person = target["masks"][0].astype(bool)
    assert np.abs(image[person].astype(int) - scene[person].astype(int)).mean() > 40
    # 13 stands in 3 of the 4 frames: a plain median keeps it; only the frame
    # it has left shows the ground behind it.
    image, target = frame(pairs, 2, 0)
    standing = target["masks"][target["instance_ids"].tolist().index(13)].astype(bool)
    behind = np.abs(empty_scene(2).astype(int) - scene_background(2).astype(int))[standing]
    assert behind.mean() < 4


def test_same_generator_same_pair_and_another_seed_another_pair(split, photos) -> None:
    config = CopyPaste(prob=1.0, background_dir=photos)

    def items(seed: int) -> list:
        pairs = pairs_for(split, seed=seed, copy_paste=config)
        return [pairs[i] for i in range(len(pairs))]

    def same(a: list, b: list) -> bool:
        return all(
            torch.equal(x, y) if isinstance(x, torch.Tensor) else x.keys() == y.keys()
            and all(torch.equal(x[k], y[k]) for k in x)
            for item_a, item_b in zip(a, b) for x, y in zip(item_a, item_b)
        )

    first = items(4)
    assert same(first, items(4))
    assert not same(first, items(5))
    # The augmenter alone: a function of its generator.
    pairs = pairs_for(split, flip_prob=0.0)
    augmenter = config.bind(pairs.annotations, pairs.image_root)
    runs = [augmenter.augment(frame(pairs, 1, 1), frame(pairs, 1, 4), np.random.default_rng(s), 1, False)
            for s in (7, 7, 8)]
    assert runs[0][2] == runs[1][2] and np.array_equal(runs[0][0][0], runs[1][0][0])
    assert not np.array_equal(runs[0][0][0], runs[2][0][0])


def test_without_copy_paste_or_at_probability_zero_the_pairs_are_unchanged(split) -> None:
    plain, never = pairs_for(split, seed=2), pairs_for(split, seed=2, copy_paste=CopyPaste(prob=0.0))
    always = pairs_for(split, seed=2, copy_paste=CopyPaste(prob=1.0))
    assert plain.augmenter is None
    for epoch in range(2):
        for pairs in (plain, never, always):
            pairs.set_epoch(epoch)
        for index in range(len(plain)):
            # The augmentation draws after the pair: the same frames and flips either way.
            assert plain.draw(index) == never.draw(index) == always.draw(index)
            for a, b in zip(plain[index], never[index]):
                assert torch.equal(a, b) if isinstance(a, torch.Tensor) else all(torch.equal(a[k], b[k]) for k in a)
    video_id, key, _, flip = plain.draw(0)
    image, target = plain.load_frame(video_id, key, flip)
    assert torch.equal(plain[0][0], image) and torch.equal(plain[0][1]["boxes"], target["boxes"])


def test_the_bank_is_listed_without_decoding_and_keeps_to_its_minimums(split, monkeypatch) -> None:
    decoded = []
    real_decode = copy_paste_module.decode_mask
    monkeypatch.setattr(copy_paste_module, "decode_mask", lambda *a: decoded.append(1) or real_decode(*a))
    annotations = load_ytvis(split / "instances.json")
    augmenter = CopyPaste(prob=1.0, max_paste=3).bind(annotations, split / "JPEGImages")
    assert decoded == []
    assert {annotations.instances[v][i].id for v, i, _ in augmenter.bank} == {11, 12, 13, 21}  # 22: 10 px tall
    assert len(augmenter.bank) == 6 + 6 + 3 + 4
    pairs = pairs_for(split, flip_prob=0.0)
    for seed in range(4):
        augmenter.augment(frame(pairs, 2, 0), frame(pairs, 2, 1), np.random.default_rng(seed), 2, False)
    assert decoded


def test_only_photos_on_a_people_free_list_are_backgrounds_and_the_rest_are_counted(split, photos, tmp_path,
                                                                                    caplog) -> None:
    annotations = load_ytvis(split / "instances.json")
    with caplog.at_level(logging.WARNING, logger="models.data.backgrounds"):
        augmenter = CopyPaste(background_dir=photos).bind(annotations, split / "JPEGImages")
    # unchecked.png is a fine photo, but nobody looked at it: refused, and said so.
    assert augmenter.backgrounds.photos.photos == [photos / "good.jpg"]
    assert augmenter.backgrounds.photos.refused == ["unchecked.png"]
    assert "1 of 4 photos" in caplog.text and "unchecked.png" in caplog.text
    assert augmenter.background_odds.tolist() == pytest.approx([0.3, 0.3, 0.2, 0.2])
    # Declared in a list of one's own: accepted.
    extra = tmp_path / "mine.sha256"
    extra.write_text(f"{sha256(photos / 'unchecked.png')}  unchecked.png\n")
    assert PhotoBackgrounds(photos, (extra,)).photos == [photos / "good.jpg", photos / "unchecked.png"]
    # The list trusts content, not names: a changed good.jpg is refused.
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "people_free.sha256").write_text((photos / "people_free.sha256").read_text())
    cv2.imwrite(str(changed / "good.jpg"), np.full((90, 130, 3), 77, np.uint8))
    with pytest.raises(ValueError, match=r"no readable image .* people-free list .* \(1 refused"):
        PhotoBackgrounds(changed)
    no_photos = CopyPaste().bind(annotations, split / "JPEGImages")
    assert no_photos.background_odds[2] == 0 and no_photos.background_odds.sum() == pytest.approx(1)
    bad_list = tmp_path / "bad.sha256"
    bad_list.write_text("abc  good.jpg\n")
    with pytest.raises(ValueError, match=r"bad\.sha256: line 1"):
        PhotoBackgrounds(photos, (bad_list,))
    with pytest.raises(ValueError, match="does not exist"):
        CopyPaste(background_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="prob"):
        CopyPaste(prob=1.5)


OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
WITH_PEOPLE = ["messi5.jpg", "basketball1.png", "basketball2.png", "left01.jpg", "right14.jpg"]


def test_the_shipped_list_names_no_photo_with_people() -> None:
    listed = set(read_people_free_list(PEOPLE_FREE_LIST).values())
    assert len(listed) >= 50 and {"leuvenA.jpg", "aloeL.jpg", "starry_night.jpg"} <= listed
    assert not listed & set(WITH_PEOPLE + ["graf1.png", "ml.png", "sudoku.png"])
    if not OPENCV_DATA.is_dir():
        pytest.skip("Debian opencv-doc is not installed")
    photos = PhotoBackgrounds(OPENCV_DATA)
    assert set(WITH_PEOPLE) <= set(photos.refused)
    assert {p.name for p in photos.photos} == listed


def write_standing_split(root: Path) -> Path:
    """One video of 8 frames: person 1 stands at the same place in all of
    them; person 2 stands still too but the labeller missed it in frames 3-5;
    person 3 walks through. The ground is ``scene_background(5)``."""
    ground = scene_background(5)
    standing = {1: (range(8), (20, 30), (250, 30, 30)), 2: ([0, 1, 2, 6, 7], (90, 40), (30, 30, 250))}
    frames = [ground.copy() for _ in range(8)]
    annotations = []
    for annotation_id, (labelled, (x, y), colour) in standing.items():
        mask = person_mask(x, y, 18, 50)
        for image in frames:  # there in every frame, whatever the labels say
            image[mask.astype(bool)] = colour
        rle = mask_utils.encode(np.asfortranarray(mask))
        segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        annotations.append({"id": annotation_id, "video_id": 1, "category_id": 1, "iscrowd": 0,
                            "segmentations": [segmentation if t in labelled else None for t in range(8)]})
    walker = []
    for t, image in enumerate(frames):
        mask = person_mask(5 + 18 * t, 60, 16, 44)
        image[mask.astype(bool)] = (40, 200, 40)
        rle = mask_utils.encode(np.asfortranarray(mask))
        walker.append({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
    annotations.append({"id": 3, "video_id": 1, "category_id": 1, "iscrowd": 0, "segmentations": walker})
    names = [f"still/{t:05d}.png" for t in range(8)]
    for name, image in zip(names, frames):
        (root / "JPEGImages" / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    data = {"videos": [{"id": 1, "width": WIDTH, "height": HEIGHT, "file_names": names}],
            "categories": [{"id": 1, "name": "person"}], "annotations": annotations}
    (root / "instances.json").write_text(json.dumps(data))
    return root


def test_the_empty_scene_never_keeps_a_person_who_stands_still(tmp_path) -> None:
    root = write_standing_split(tmp_path)
    annotations = load_ytvis(root / "instances.json")
    scenes = EmptyScenes(annotations, root / "JPEGImages", frames=8)
    scene = scenes(1).astype(int)
    ground = scene_background(5).astype(int)
    for x, y, colour in [(20, 30, (250, 30, 30)), (90, 40, (30, 30, 250))]:
        person = person_mask(x, y, 18, 50).astype(bool)
        # Neither the person's colour (a plain median keeps it) nor far from the ground around it.
        assert np.abs(scene[person] - np.array(colour)).mean() > 60
        assert np.abs(scene[person] - ground[person]).mean() < 25
    assert 0 < scenes.inpainted[1] < 0.3  # the two standing people and their margins
    # Where every frame was free the scene is the ground itself.
    free = np.ones((HEIGHT, WIDTH), bool)
    for x, y in [(20, 30), (90, 40)]:
        free &= ~cv2.dilate(person_mask(x, y, 18, 50), np.ones((25, 25), np.uint8)).astype(bool)
    free[50:115] = False  # the walker's rows
    assert np.abs(scene[free] - ground[free]).mean() < 2


def test_a_spot_that_is_rarely_free_gets_a_second_look_over_more_frames(tmp_path) -> None:
    """A person stands at a spot in the 4 sampled frames of a 40-frame video
    but leaves it in frames 5-12 (and comes back as a new track): the second
    look finds the ground there."""
    ground = scene_background(6)
    mask = person_mask(60, 30, 18, 50)
    rle = mask_utils.encode(np.asfortranarray(mask))
    segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    names, segmentations = [], []
    for t in range(40):
        image = ground.copy()
        away = 5 <= t <= 12
        if not away:
            image[mask.astype(bool)] = (250, 30, 30)
        names.append(f"spot/{t:05d}.png")
        segmentations.append(None if away else segmentation)
        (tmp_path / "spot").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / names[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    data = {"videos": [{"id": 1, "width": WIDTH, "height": HEIGHT, "file_names": names}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [
                {"id": 1, "video_id": 1, "category_id": 1, "segmentations": segmentations[:13] + [None] * 27},
                {"id": 2, "video_id": 1, "category_id": 1, "segmentations": [None] * 13 + segmentations[13:]}]}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    scenes = EmptyScenes(load_ytvis(tmp_path / "instances.json"), tmp_path, frames=4)
    scene = scenes(1)
    assert scenes.inpainted[1] == 0
    assert np.array_equal(scene[mask.astype(bool)], ground[mask.astype(bool)])


def test_training_runs_with_the_augmentation_and_records_its_options(split, photos, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    command = [
        "--preset", "lite", "--data", str(split), "--out", str(run), "--input-size", "160x120", "--workers", "0",
        "--epochs", "1", "--max-iters", "3", "--log-every", "1", "--warmup-iters", "0",
        "--set", "rpn_pre_nms_top_n_train=300", "--set", "rpn_post_nms_top_n_train=300",
        "--copy-paste", "--copy-paste-backgrounds", str(photos), "--max-paste", "2", "--copy-paste-prob", "1",
        "--zoom", "--zoom-prob", "1", "--photometric", "--jpeg-prob", "1",
    ]
    assert train.main(command) == 0
    assert "stopped at 3/" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    args = read_checkpoint(run / "latest.pt")["args"]
    assert args["copy_paste"] is True and args["copy_paste_prob"] == 1.0 and args["max_paste"] == 2
    assert args["copy_paste_backgrounds"] == str(photos)
    assert args["zoom"] is True and args["zoom_prob"] == 1.0 and args["zoom_heights"] == [40.0, 1.0]
    assert args["photometric"] is True and args["jpeg_prob"] == 1.0 and args["blur_prob"] == 0.2
    with pytest.raises(SystemExit) as refused:
        train.parse_args(["--preset", "lite", "--data", str(split), "--out", str(run), "--copy-paste-prob", "0.3"])
    assert refused.value.code == 2
    assert "--copy-paste-prob needs --copy-paste" in capsys.readouterr().err
