"""YouTube-VIS data: validation errors, the label map, per-frame targets after
resize and flip, pair sampling, and 2019/2021 files, on tiny hand-made videos."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from models.data import YTVISPairs, collate_pairs, iter_video_frames, keep_ratio_size, load_ytvis, read_frame

# pycocotools' compiled decode still passes copy=False to numpy 2 (its own warning, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

WIDTH, HEIGHT = 64, 48
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
Rect = tuple[int, int, int, int]  # x1 y1 x2 y2, pixel edges


def rect_mask(rect: Rect) -> np.ndarray:
    x1, y1, x2, y2 = rect
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def uncompressed_rle(rect: Rect) -> dict:
    # Column-major run lengths, starting with a run of zeros.
    flat = rect_mask(rect).flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": [HEIGHT, WIDTH], "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def compressed_rle(rect: Rect) -> dict:
    rle = mask_utils.encode(np.asfortranarray(rect_mask(rect)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def polygon(rect: Rect) -> list[list[float]]:
    x1, y1, x2, y2 = rect
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def bbox(rect: Rect) -> list[float]:
    return [rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]]


def track(annotation_id: int, video_id: int, category_id: int, frames: list, crowd: int = 0) -> dict:
    """``frames``: per frame None or (encode, rect) or (encode, rect, bbox, area)."""
    segmentations, bboxes, areas = [], [], []
    for entry in frames:
        if entry is None:
            segmentations.append(None), bboxes.append(None), areas.append(None)
            continue
        encode, rect, *given = entry
        segmentations.append(encode(rect))
        box, area = given if given else (bbox(rect), float(rect_mask(rect).sum()))
        bboxes.append(box), areas.append(area)
    return {"id": annotation_id, "video_id": video_id, "category_id": category_id, "iscrowd": crowd,
            "segmentations": segmentations, "bboxes": bboxes, "areas": areas}  # fmt: skip


def k11(f: int) -> Rect:
    return (4 + 2 * f, 6, 20 + 2 * f, 30)


# Video 1: 11 moves through frames 0-3; 12 is compressed RLE / polygon / compressed;
# 13 is a crowd strip; 14 is tiny (w < 1), then zero-area, then has no bbox/area.
ANNOTATIONS = [
    track(11, 1, 7, [(uncompressed_rle, k11(f)) for f in range(4)] + [None]),
    track(12, 1, 3, [(compressed_rle, (30, 10, 50, 40)), (polygon, (32, 10, 52, 40)),
                     (compressed_rle, (34, 10, 54, 40)), None, None]),  # fmt: skip
    track(13, 1, 3, [(uncompressed_rle, (0, 40, 64, 48)), None, None, None, (uncompressed_rle, (0, 40, 64, 48))], 1),
    track(14, 1, 7, [None, (polygon, (60, 2, 61, 6), [60, 2, 0.5, 4], 2.0),
                     (compressed_rle, (56, 2, 60, 6), [56, 2, 4, 4], 0.0), (polygon, (56, 2, 62, 8), None, None), None]),  # fmt: skip
    track(21, 2, 3, [None, (uncompressed_rle, (10, 10, 30, 30)), None]),
    track(31, 3, 7, [(uncompressed_rle, (10, 10, 20, 20)), None, None, None, (uncompressed_rle, (10, 10, 20, 20))]),
]
COLOURS = {11: RED, 12: BLUE}
VIDEO_LENGTHS = {1: 5, 2: 3, 3: 5}


def video_record(video_id: int, length: int) -> dict:
    names = [f"vid{video_id}/{f:05d}.jpg" for f in range(length)]
    return {"id": video_id, "width": WIDTH, "height": HEIGHT, "length": length, "file_names": names}


def write_frames(image_root: Path, data: dict) -> None:
    for video in data["videos"]:
        for f, name in enumerate(video["file_names"]):
            image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
            for ann in data["annotations"]:
                seg = ann["segmentations"][f] if ann["video_id"] == video["id"] else None
                if seg is not None:
                    mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, HEIGHT, WIDTH))
                                             if isinstance(seg, list) else mask_utils.frPyObjects(seg, HEIGHT, WIDTH)
                                             if isinstance(seg["counts"], list) else seg)  # fmt: skip
                    image[mask.astype(bool)] = COLOURS.get(ann["id"], GREEN)
            (image_root / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(image_root / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def base_data() -> dict:
    return {
        "videos": [video_record(v, n) for v, n in VIDEO_LENGTHS.items()],
        "categories": [{"id": 7, "name": "person"}, {"id": 3, "name": "robot"}],
        "annotations": copy.deepcopy(ANNOTATIONS),
    }


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def dataset_files(tmp_path: Path) -> tuple[Path, Path]:
    data = base_data()
    write_frames(tmp_path / "JPEGImages", data)
    return write_json(tmp_path / "train.json", data), tmp_path / "JPEGImages"


def by_id(target: dict, annotation_id: int) -> int:
    (index,) = torch.nonzero(target["instance_ids"] == annotation_id).flatten().tolist()
    return index


def test_label_map_is_contiguous_over_sorted_category_ids(dataset_files) -> None:
    annotations = load_ytvis(dataset_files[0])
    assert annotations.category_ids == [3, 7]
    assert annotations.category_names == ["robot", "person"]
    assert annotations.category_to_label == {3: 1, 7: 2}
    assert annotations.label_to_category == {1: 3, 2: 7}
    assert annotations.categories == [{"id": 3, "name": "robot"}, {"id": 7, "name": "person"}]


def test_samples_are_frames_with_a_kept_non_crowd_instance(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files)
    # Video 1 frame 4 has only the crowd strip; video 2 frames 0 and 2 are null.
    assert pairs.samples == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 1), (3, 0), (3, 4)]


def test_targets_at_scale_one_match_the_drawn_masks(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT), flip_prob=0.0)
    image, target = pairs.load_frame(1, 0, flip=False)
    assert image.dtype == torch.float32 and image.shape == (3, HEIGHT, WIDTH)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["instance_ids"].tolist() == [11, 12]
    assert target["labels"].tolist() == [2, 1] and target["labels"].dtype == torch.int64
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [list(k11(0)), [30, 10, 50, 40]]
    assert target["masks"].dtype == torch.uint8
    assert torch.equal(target["masks"][0], torch.from_numpy(rect_mask(k11(0))))
    assert torch.equal(target["masks"][1], torch.from_numpy(rect_mask((30, 10, 50, 40))))
    # RGB order: the red instance is red in channel 0, the blue one in channel 2.
    red, blue = target["masks"][0].bool(), target["masks"][1].bool()
    assert image[0][red].mean() > 0.8 and image[2][red].mean() < 0.2
    assert image[2][blue].mean() > 0.8 and image[0][blue].mean() < 0.2
    # Polygon frame: same geometry as the RLE frames.
    _, target = pairs.load_frame(1, 1, flip=False)
    assert torch.equal(target["masks"][by_id(target, 12)], torch.from_numpy(rect_mask((32, 10, 52, 40))))


def test_crowd_goes_to_ignore_boxes_only(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT))
    _, target = pairs.load_frame(1, 0, flip=False)
    assert 13 not in target["instance_ids"].tolist()
    assert target["ignore_boxes"].tolist() == [[0, 40, 64, 48]]
    assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"]) == 2


def test_tiny_and_zero_area_instances_are_dropped_and_missing_boxes_come_from_the_mask(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT))
    assert 14 not in pairs.load_frame(1, 1, flip=False)[1]["instance_ids"].tolist()  # w = 0.5
    assert 14 not in pairs.load_frame(1, 2, flip=False)[1]["instance_ids"].tolist()  # area 0
    _, target = pairs.load_frame(1, 3, flip=False)  # bbox and area null: from the polygon
    assert target["boxes"][by_id(target, 14)].tolist() == [56, 2, 62, 8]
    # Null segmentation: 12 is absent from frame 3.
    assert target["instance_ids"].tolist() == [11, 14]


def test_resize_scales_boxes_and_resizes_masks_nearest(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, scale=(32, 24))  # factor 0.5
    image, target = pairs.load_frame(1, 2, flip=False)
    assert image.shape == (3, 24, 32) and target["masks"].shape == (2, 24, 32)
    for i, rect in [(by_id(target, 11), k11(2)), (by_id(target, 12), (34, 10, 54, 40))]:
        half = tuple(c // 2 for c in rect)
        assert target["boxes"][i].tolist() == list(half)
        expected = np.zeros((24, 32), np.uint8)
        expected[half[1] : half[3], half[0] : half[2]] = 1
        assert torch.equal(target["masks"][i], torch.from_numpy(expected))
    # Upscaling to the default (640, 360): 64x48 -> 480x360, factor 7.5.
    image, target = YTVISPairs(*dataset_files).load_frame(1, 0, flip=False)
    assert image.shape == (3, 360, 480)
    assert target["boxes"][0].tolist() == [c * 7.5 for c in k11(0)]
    assert target["ignore_boxes"].tolist() == [[0, 300, 480, 360]]
    # The upscaled mask still fills exactly its scaled box.
    ys, xs = torch.nonzero(target["masks"][0], as_tuple=True)
    assert [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] == target["boxes"][0].tolist()
    assert set(target["masks"].unique().tolist()) == {0, 1}


def test_flip_mirrors_image_boxes_and_masks(dataset_files) -> None:
    plain = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT), flip_prob=0.0)
    flipped = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT), flip_prob=1.0)
    for index in range(len(plain)):
        a, b = plain[index], flipped[index]
        for image, target, image_f, target_f in [(a[0], a[1], b[0], b[1]), (a[2], a[3], b[2], b[3])]:
            assert torch.equal(image_f, image.flip(-1))
            assert torch.equal(target_f["masks"], target["masks"].flip(-1))
            x1, y1, x2, y2 = target["boxes"].unbind(1)
            assert torch.equal(target_f["boxes"], torch.stack([WIDTH - x2, y1, WIDTH - x1, y2], 1))
            assert torch.equal(target_f["instance_ids"], target["instance_ids"])
    _, target = flipped.load_frame(1, 0, flip=True)
    assert target["boxes"][0].tolist() == [WIDTH - 20, 6, WIDTH - 4, 30]
    assert target["ignore_boxes"].tolist() == [[0, 40, 64, 48]]


def test_flip_is_shared_by_key_and_reference(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT), flip_prob=0.5, seed=3)
    flips = set()
    for epoch in range(4):
        pairs.set_epoch(epoch)
        for index in range(len(pairs)):
            video_id, key, reference, flip = pairs.draw(index)
            flips.add(flip)
            key_image, key_target, ref_image, ref_target = pairs[index]
            assert torch.equal(key_image, pairs.load_frame(video_id, key, flip)[0])
            assert torch.equal(ref_target["masks"], pairs.load_frame(video_id, reference, flip)[1]["masks"])
    assert flips == {True, False}


def test_reference_is_another_annotated_frame_of_the_same_video_drawn_uniformly(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, seed=1)
    counts: Counter = Counter()
    for epoch in range(300):
        pairs.set_epoch(epoch)
        for index, (video_id, key) in enumerate(pairs.samples):
            drawn_video, drawn_key, reference, _ = pairs.draw(index)
            assert (drawn_video, drawn_key) == (video_id, key)
            if video_id == 2:  # one annotated frame: the key is its own reference
                assert reference == key
            else:
                assert reference != key and (video_id, reference) in pairs.samples
            if (video_id, key) == (1, 0):
                counts[reference] += 1
    assert set(counts) == {1, 2, 3} and min(counts.values()) > 70  # 100 expected each


def test_frame_range_limits_the_reference(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, frame_range=1)
    assert pairs.reference_candidates(1, 0) == [1]
    assert pairs.reference_candidates(1, 2) == [1, 3]
    for epoch in range(20):
        pairs.set_epoch(epoch)
        for index, (video_id, key) in enumerate(pairs.samples):
            reference = pairs.draw(index)[2]
            assert abs(reference - key) <= 1
            if video_id == 3:  # frames 0 and 4: nothing within 1, so the key itself
                assert reference == key


def test_identities_are_carried_from_key_to_reference(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT), flip_prob=0.0)
    index = pairs.samples.index((1, 0))
    epoch = next(e for e in range(50) if (pairs.set_epoch(e), pairs.draw(index)[2])[1] == 2)
    pairs.set_epoch(epoch)
    _, key_target, _, ref_target = pairs[index]
    assert key_target["instance_ids"].tolist() == ref_target["instance_ids"].tolist() == [11, 12]
    assert ref_target["boxes"][by_id(ref_target, 11)].tolist() == list(k11(2))


def test_draws_are_reproducible_per_seed_epoch_and_index(dataset_files) -> None:
    def draws(pairs: YTVISPairs, epoch: int) -> list:
        pairs.set_epoch(epoch)
        return [pairs.draw(i) for i in range(len(pairs))]

    a, b = YTVISPairs(*dataset_files, seed=5), YTVISPairs(*dataset_files, seed=5)
    assert draws(a, 3) == draws(b, 3)
    assert draws(a, 0) != draws(a, 1)
    assert draws(a, 0) != draws(YTVISPairs(*dataset_files, seed=6), 0)
    # Independent of the order items are read in (as with shuffled DDP shards).
    b.set_epoch(3)
    assert [b.draw(i) for i in reversed(range(len(b)))][::-1] == draws(a, 3)


def test_collate_pairs_gives_four_lists(dataset_files) -> None:
    pairs = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT))
    loader = torch.utils.data.DataLoader(pairs, batch_size=3, collate_fn=collate_pairs)
    key_images, key_targets, ref_images, ref_targets = next(iter(loader))
    assert len(key_images) == len(key_targets) == len(ref_images) == len(ref_targets) == 3
    assert all(image.shape == (3, HEIGHT, WIDTH) for image in key_images + ref_images)
    assert key_targets[0]["instance_ids"].tolist() == [11, 12]


def test_inference_iterates_frames_in_order_at_original_resolution(dataset_files) -> None:
    annotations = load_ytvis(dataset_files[0])
    video = annotations.video(1)
    assert video.name == "vid1" and video.length == 5
    frames = list(iter_video_frames(video, dataset_files[1]))
    assert [f.shape for f in frames] == [(HEIGHT, WIDTH, 3)] * 5 and frames[0].dtype == np.uint8
    # The red instance moves 2 px right per frame: its left edge in each frame.
    left_edges = [int(np.flatnonzero((f[:, :, 0] > 200) & (f[:, :, 2] < 60)).min() % WIDTH) for f in frames[:4]]
    assert [abs(edge - (4 + 2 * i)) <= 1 for i, edge in enumerate(left_edges)] == [True] * 4


@pytest.mark.parametrize(
    ("size", "scale"),
    [((1280, 720), (640, 360)), ((720, 1280), (640, 360)), ((768, 576), (640, 360)), ((1920, 800), (640, 360)),
     ((500, 333), (360, 640))],  # fmt: skip
)
def test_keep_ratio_size_follows_the_long_and_short_edge_rule(size, scale) -> None:
    width, height = size
    factor = min(max(scale) / max(size), min(scale) / min(size))
    assert keep_ratio_size(width, height, scale) == (int(width * factor + 0.5), int(height * factor + 0.5))


def test_keep_ratio_size_known_numbers() -> None:
    assert keep_ratio_size(1280, 720) == (640, 360)
    assert keep_ratio_size(720, 1280) == (360, 640)  # orientation-free: long side <= 640, short <= 360
    assert keep_ratio_size(768, 576) == (480, 360)
    assert keep_ratio_size(1920, 800) == (640, 267)


def test_2019_and_2021_files_and_a_test_split_load(tmp_path: Path) -> None:
    data_2019 = {"info": {"year": 2019}, "licenses": [], **base_data()}
    for video in data_2019["videos"]:
        video.update(license=1, coco_url="", flickr_url="", date_captured="")
    data_2021 = base_data()
    for ann in data_2021["annotations"]:
        ann.update(length=1, height=HEIGHT, width=WIDTH)
    loaded = [load_ytvis(write_json(tmp_path / f"{y}.json", d)) for y, d in [(2019, data_2019), (2021, data_2021)]]
    for annotations in loaded:
        assert [v.id for v in annotations.videos] == [1, 2, 3]
        assert sum(len(i) for i in annotations.instances.values()) == len(ANNOTATIONS)
    split = {"videos": base_data()["videos"], "categories": base_data()["categories"]}
    test_split = load_ytvis(write_json(tmp_path / "valid.json", split))
    assert test_split.instances == {} and test_split.num_classes == 2
    with pytest.raises(ValueError, match="no frame has a non-crowd instance"):
        YTVISPairs(tmp_path / "valid.json", tmp_path)


def test_malformed_json_names_the_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"videos": [\n  {"id": 1,, }]}')
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON at line 2 column 12"):
        load_ytvis(path)


def _mutated(tmp_path: Path, mutate) -> Path:
    data = base_data()
    mutate(data)
    return write_json(tmp_path / "bad.json", data)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["videos"][0]["file_names"].pop(), r"bad\.json: video 1: 'length' is 5 but there are 4 file_names"),
        (lambda d: d["annotations"][0]["segmentations"].pop(), r"video 1, annotation 11: 4 segmentations .* 5 frames"),
        (lambda d: d["annotations"][1]["bboxes"].append(None), r"video 1, annotation 12: 6 bboxes"),
        (lambda d: d["annotations"][4].update(category_id=99), r"video 2, annotation 21: unknown category_id 99"),
        (lambda d: d["annotations"][4].update(video_id=9), r"video 9, annotation 21: points at an unknown video"),
        (lambda d: d["annotations"][4].pop("video_id"), r"annotation 21: missing key 'video_id'"),
        (lambda d: d["videos"][1].pop("width"), r"video 2: missing key 'width'"),
        (lambda d: d.pop("categories"), r"bad\.json: missing key 'categories'"),
        (lambda d: d["annotations"][0]["segmentations"][1].update(size=[HEIGHT, WIDTH + 1]),
         r"video 1, annotation 11, frame 1: segmentation size \[48, 65\] differs"),  # fmt: skip
        (lambda d: d["annotations"][0]["segmentations"][2]["counts"].append(3), r"annotation 11, frame 2: RLE counts"),
        (lambda d: d["annotations"][1]["segmentations"][1][0].pop(), r"annotation 12, frame 1: a polygon"),
        (lambda d: d["annotations"].append(copy.deepcopy(d["annotations"][0])), r"duplicate annotation id 11"),
    ],
)
def test_annotation_problems_name_the_file_video_and_annotation(tmp_path: Path, mutate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_ytvis(_mutated(tmp_path, mutate))


def test_missing_or_unreadable_frame_names_the_file_and_video(dataset_files) -> None:
    annotation_file, image_root = dataset_files
    pairs = YTVISPairs(annotation_file, image_root)
    (image_root / "vid2/00001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"vid2/00001\.jpg of video 2 is missing"):
        pairs[pairs.samples.index((2, 1))]
    (image_root / "vid3/00000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"vid3/00000\.jpg of video 3 cannot be decoded"):
        read_frame(image_root / "vid3/00000.jpg", 3)


def test_a_batch_of_pairs_trains_masktrack_rcnn(dataset_files) -> None:
    from models import build_model

    torch.manual_seed(0)
    pairs = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT), frame_range=1)
    model = build_model("lite", pretrained_backbone=False, num_classes=2, class_names=(), min_size=48, max_size=64)
    losses = model.train()(*collate_pairs([pairs[i] for i in range(3)]))
    assert {"loss_classifier", "loss_mask", "loss_track"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


class _Recorder:
    """A ``PairAugmenter`` that inverts the key image and records its calls and first random draw."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool, float]] = []

    def __call__(self, key, reference, rng, video_id, flip):
        self.calls.append((video_id, flip, float(rng.random())))
        return (255 - key[0], key[1]), reference


def test_an_augmenter_gets_both_frames_and_the_rest_of_the_samples_generator(dataset_files) -> None:
    plain = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT), seed=4)
    recorder = _Recorder()
    augmented = YTVISPairs(*dataset_files, scale=(WIDTH, HEIGHT), seed=4, augmenter=recorder)
    for index in range(len(plain)):
        assert plain.draw(index) == augmented.draw(index)  # augmenting leaves the pair draws alone
        key_image, key_target, reference_image, _ = augmented[index]
        assert torch.allclose(key_image, 1 - plain[index][0], atol=1e-6)
        assert torch.equal(reference_image, plain[index][2])
        assert torch.equal(key_target["boxes"], plain[index][1]["boxes"])
        (video_id, _, _, flip), rng = plain.draw_with_rng(index)
        assert recorder.calls[-1] == (video_id, flip, rng.random())
