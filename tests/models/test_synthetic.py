"""Tests for the synthetic YouTube-VIS generator (models/synthetic.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from models.synthetic import (
    MIN_VISIBLE_AREA, _rasterise, encode_rle, generate, main, make_scene, render_frame, video_name,
)

REPO = Path(__file__).resolve().parents[2]
# pycocotools' decode warns under numpy 2 about its own array wrapper; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = dict(videos=6, frames=12, width=160, height=96, classes=3)
SEED = 7


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "train"
    generate(out, seed=SEED, **SMALL)
    return out


@pytest.fixture(scope="module")
def dataset(dataset_dir) -> dict:
    return json.loads((dataset_dir / "instances.json").read_text())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _touches_border(box: list[float], width: int, height: int) -> bool:
    return box[0] <= 0 or box[1] <= 0 or box[0] + box[2] >= width or box[1] + box[3] >= height


def _by_video(dataset: dict) -> dict[int, list[dict]]:
    groups: dict[int, list[dict]] = {v["id"]: [] for v in dataset["videos"]}
    for ann in dataset["annotations"]:
        groups[ann["video_id"]].append(ann)
    return groups


# --- determinism ---

def test_same_seed_gives_identical_files(dataset_dir, tmp_path):
    generate(tmp_path / "again", seed=SEED, **SMALL)
    first, second = _tree(dataset_dir), _tree(tmp_path / "again")
    assert list(first) == list(second)
    assert first == second


def test_other_seed_gives_other_data(dataset_dir, dataset, tmp_path):
    other = generate(tmp_path / "other", seed=SEED + 1, **SMALL)
    assert other["annotations"] != dataset["annotations"]
    assert {v["file_names"][0] for v in other["videos"]}.isdisjoint({v["file_names"][0] for v in dataset["videos"]})
    first = (tmp_path / "other" / "JPEGImages" / other["videos"][0]["file_names"][0]).read_bytes()
    assert first != (dataset_dir / "JPEGImages" / dataset["videos"][0]["file_names"][0]).read_bytes()


# --- layout and schema ---

def test_layout_and_schema(dataset_dir, dataset):
    assert {"info", "licenses", "videos", "categories", "annotations"} <= set(dataset)
    assert [c["id"] for c in dataset["categories"]] == [1, 2, 3]
    assert len({c["name"] for c in dataset["categories"]}) == 3
    assert [v["id"] for v in dataset["videos"]] == list(range(1, SMALL["videos"] + 1))
    names = {v["file_names"][0].split("/")[0] for v in dataset["videos"]}
    assert len(names) == SMALL["videos"]
    for video in dataset["videos"]:
        assert video["length"] == len(video["file_names"]) == SMALL["frames"]
        assert (video["width"], video["height"]) == (SMALL["width"], SMALL["height"])
        for t, file_name in enumerate(video["file_names"]):
            assert file_name.endswith(f"/{t:05d}.jpg")
            image = cv2.imread(str(dataset_dir / "JPEGImages" / file_name))
            assert image is not None and image.shape == (video["height"], video["width"], 3)
    assert sorted(p.name for p in (dataset_dir / "JPEGImages").iterdir()) == sorted(names)

    ids = [a["id"] for a in dataset["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    videos = {v["id"]: v for v in dataset["videos"]}
    for ann in dataset["annotations"]:
        video = videos[ann["video_id"]]
        assert ann["category_id"] in {1, 2, 3}
        assert (ann["iscrowd"], ann["length"]) == (0, 1)
        assert (ann["width"], ann["height"]) == (video["width"], video["height"])
        for key in ("segmentations", "bboxes", "areas"):
            assert len(ann[key]) == video["length"]
        assert any(s is not None for s in ann["segmentations"])
    per_video = [len(anns) for anns in _by_video(dataset).values()]
    assert min(per_video) >= 2 and max(per_video) <= 5


# --- annotations agree with pixels ---

def test_rle_encoder_round_trips_through_pycocotools():
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((5, 7), bool), rng.random((9, 6)) < 0.5]
    masks[2][0, 0] = True  # starts with foreground: counts must begin with a zero-length run
    for mask in masks:
        rle = encode_rle(mask)
        assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *mask.shape))
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_segmentations_match_areas_and_boxes(dataset):
    checked = 0
    for ann in dataset["annotations"]:
        for seg, box, area in zip(ann["segmentations"], ann["bboxes"], ann["areas"]):
            assert (seg is None) == (box is None) == (area is None)
            if seg is None:
                continue
            assert seg["size"] == [ann["height"], ann["width"]]
            assert all(isinstance(c, int) for c in seg["counts"])
            rle = mask_utils.frPyObjects(seg, ann["height"], ann["width"])
            decoded = mask_utils.decode(rle)
            assert decoded.sum() == area == mask_utils.area(rle) >= MIN_VISIBLE_AREA
            assert box == mask_utils.toBbox(rle).tolist()
            checked += 1
    assert checked > 100


def _reference_visible(scene, t: int, masks) -> list[np.ndarray | None]:
    """Occlusion by a plain rule: what is left of each outline after the drawn ones in front."""
    shapes = [_rasterise(track.polygon(t), scene.height, scene.width) for track in scene.tracks]
    result = []
    for i in range(len(scene.tracks)):
        front = scene.depth[: scene.depth.index(i)]
        visible = shapes[i].copy()
        for j in front:
            if masks[j] is not None:
                visible &= ~shapes[j]
        result.append(visible if visible.sum() >= MIN_VISIBLE_AREA else None)
    return result


def test_masks_are_the_drawn_pixels(dataset_dir, dataset):
    groups = _by_video(dataset)
    for index, video in enumerate(dataset["videos"][:3]):
        scene, masks = make_scene(SEED, index, SMALL["frames"], SMALL["width"], SMALL["height"], SMALL["classes"])
        anns = groups[video["id"]]
        assert len(anns) == len(scene.tracks)
        assert video["file_names"][0] == f"{video_name(SEED, index)}/00000.jpg"
        for t in range(SMALL["frames"]):
            reference = _reference_visible(scene, t, masks[t])
            image = render_frame(scene, t, masks[t])
            union = np.zeros((scene.height, scene.width), bool)
            for ann, mask, expected in zip(anns, masks[t], reference):
                assert (mask is None) == (expected is None) == (ann["segmentations"][t] is None)
                if mask is None:
                    continue
                np.testing.assert_array_equal(mask, expected)
                decoded = mask_utils.decode(mask_utils.frPyObjects(ann["segmentations"][t], scene.height, scene.width))
                np.testing.assert_array_equal(decoded.astype(bool), mask)
                assert not (union & mask).any()  # one owner per pixel
                union |= mask
                changed = (image[mask] != scene.background[mask]).any(axis=1)
                assert changed.mean() > 0.9
            np.testing.assert_array_equal(image[~union], scene.background[~union])
            stored = cv2.imread(str(dataset_dir / "JPEGImages" / video["file_names"][t])).astype(float)
            assert np.abs(stored - image).mean() < 6  # the JPEG is this frame, channel order included


# --- the task has what makes tracking matter ---

def test_objects_enter_leave_cross_occlude_and_scale(dataset):
    width, height = SMALL["width"], SMALL["height"]
    entering = leaving = crossing = occluded = scaling = 0
    for anns in _by_video(dataset).values():
        for ann in anns:
            seen = [s is not None for s in ann["segmentations"]]
            entering += any(not a and b for a, b in zip(seen, seen[1:]))
            leaving += any(a and not b for a, b in zip(seen, seen[1:]))
            others = [o for o in anns if o is not ann]
            clean_areas = []
            for t, (box, area) in enumerate(zip(ann["bboxes"], ann["areas"])):
                if box is None:
                    continue
                hit = [o for o in others if o["bboxes"][t] is not None and _overlap(box, o["bboxes"][t])]
                crossing += any(o["category_id"] == ann["category_id"] for o in hit)
                if not hit and not _touches_border(box, width, height):
                    clean_areas.append(area)
                neighbours = [ann["areas"][s] for s in (t - 1, t + 1) if 0 <= s < len(seen) and seen[s]]
                inside = all(not _touches_border(ann["bboxes"][s], width, height)
                             for s in (t - 1, t, t + 1) if 0 <= s < len(seen) and seen[s])
                # A sudden loss of area, away from the borders, under another box: occlusion.
                occluded += bool(hit and inside and neighbours and area < 0.8 * max(neighbours))
            # Unoccluded, unclipped area changing by a third: the object grew or shrank.
            scaling += len(clean_areas) >= 2 and max(clean_areas) > 1.33 * min(clean_areas)
    assert entering >= 2 and leaving >= 2
    assert crossing >= 2
    assert occluded >= 2
    assert scaling >= 2


def test_every_video_has_a_same_class_crossing_and_an_arrival_or_departure(dataset):
    for anns in _by_video(dataset).values():
        assert any(a["segmentations"][0] is None or a["segmentations"][-1] is None for a in anns)
        assert any(
            a["category_id"] == b["category_id"] and a["bboxes"][t] and b["bboxes"][t]
            and _overlap(a["bboxes"][t], b["bboxes"][t])
            for a in anns for b in anns if a["id"] < b["id"] for t in range(len(a["bboxes"]))
        )


# --- command line ---

def test_cli_refuses_non_empty_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    args = ["--out", str(out), "--videos", "1", "--seed", "0", "--frames", "4", "--width", "64", "--height", "48"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "--out" in capsys.readouterr().err and not (out / "instances.json").exists()

    (out / "JPEGImages" / "stale_video").mkdir(parents=True)
    assert main(args + ["--overwrite"]) == 0
    assert "1 videos, 4 frames" in capsys.readouterr().out
    assert (out / "keep.txt").exists() and not (out / "JPEGImages" / "stale_video").exists()
    assert len(json.loads((out / "instances.json").read_text())["videos"]) == 1


@pytest.mark.parametrize("flag, value", [("--videos", "0"), ("--width", "10"), ("--height", "8"),
                                         ("--frames", "1"), ("--classes", "99"), ("--seed", "-1")])
def test_cli_rejects_bad_numbers(tmp_path, capsys, flag, value):
    args = {"--out": str(tmp_path / "x"), "--videos": "1", "--seed": "0", flag: value}
    with pytest.raises(SystemExit) as exit_info:
        main([part for item in args.items() for part in item])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_module_entry_point_prints_progress_and_summary(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "models.synthetic", "--out", str(out), "--videos", "2", "--seed", "3",
         "--frames", "5", "--width", "80", "--height", "64", "--classes", "6"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert result.stdout.strip().splitlines() == [
        f"synthetic: 2 videos, 10 frames, {len(json.loads((out / 'instances.json').read_text())['annotations'])} "
        f"instances, 6 classes -> {out / 'instances.json'}"
    ]
    assert "2/2" in result.stderr  # tqdm's bar
    assert len(list((out / "JPEGImages").rglob("*.jpg"))) == 10


def test_generator_does_not_import_torch():
    code = "import sys, models.synthetic; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
