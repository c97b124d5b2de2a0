"""models.detections: one frame's detections in frame pixels, subsets that keep every
field aligned, and masks pasted once from their box probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from models import detections as detections_module
from models.detections import Detections
from models.masks import paste_mask

FRAME_HW = (60, 80)


@pytest.fixture
def paste_calls(monkeypatch) -> list[int]:
    """Counts models.detections' calls of paste_mask (the real one still answers)."""
    calls: list[int] = []

    def counting(mask_prob, box, height, width):
        calls.append(1)
        return paste_mask(mask_prob, box, height, width)

    monkeypatch.setattr(detections_module, "paste_mask", counting)
    return calls


def sample(count: int = 4, seed: int = 0, **fields) -> Detections:
    """``count`` detections with distinct boxes, scores, labels, ids, embeddings and mask probabilities."""
    rng = np.random.default_rng(seed)
    x = 4.0 + 15.0 * np.arange(count)
    boxes = np.stack([x, x / 2, x + 12.0, x / 2 + 30.0], axis=1)
    base = {
        "boxes": boxes,
        "scores": np.linspace(0.9, 0.6, count),
        "labels": np.arange(1, count + 1),
        "frame_hw": FRAME_HW,
        "track_ids": np.arange(10, 10 + count),
        "embeddings": rng.random((count, 5)).astype(np.float32),
        "mask_probs": rng.random((count, 14, 14)).astype(np.float32),
    }
    base.update(fields)
    return Detections(**base)


# ---------------------------------------------------------------- building
def test_from_working_size_scales_each_axis_and_clips_to_the_frame():
    boxes = [[10, 20, 110, 220], [-5, -8, 500, 400], [40, 30, 60, 35]]
    det = Detections.from_working_size(boxes, [0.9, 0.8, 0.7], [1, 1, 2], (576, 768), (360, 480))
    # 768 / 480 = 576 / 360 = 1.6
    np.testing.assert_allclose(det.boxes, [[16, 32, 176, 352], [0, 0, 768, 576], [64, 48, 96, 56]], rtol=1e-6)
    assert det.boxes.dtype == np.float32 and det.frame_hw == (576, 768)
    # Different scales per axis: x by 100 / 200 = 0.5, y by 300 / 100 = 3.
    det = Detections.from_working_size([[20, 10, 190, 90], [150, 50, 250, 120]], [0.5, 0.6], [1, 1],
                                       (300, 100), (100, 200), track_ids=np.array([3, 4]))
    np.testing.assert_allclose(det.boxes, [[10, 30, 95, 270], [75, 150, 100, 300]])
    assert det.track_ids.tolist() == [3, 4]  # other fields pass through


def test_fields_are_normalised_and_counts_must_agree():
    det = Detections([1, 2, 3, 4], [0.5], [1], (10.0, 20.0))
    assert det.boxes.shape == (1, 4) and det.scores.dtype == np.float32 and det.labels.dtype == np.int64
    assert det.frame_hw == (10, 20) and len(det) == 1
    boxes = np.zeros((3, 4))
    with pytest.raises(ValueError, match="Detections: 2 scores for 3 boxes"):
        Detections(boxes, [0.1, 0.2], [1, 1, 1], FRAME_HW)
    with pytest.raises(ValueError, match="Detections: 4 labels for 3 boxes"):
        Detections(boxes, [0.1] * 3, [1] * 4, FRAME_HW)
    for name, value in (("track_ids", np.arange(2)), ("embeddings", np.zeros((4, 8))),
                        ("mask_probs", np.zeros((2, 14, 14))), ("masks", np.zeros((1, *FRAME_HW), bool))):
        with pytest.raises(ValueError, match=f"Detections: {len(value)} {name} for 3 boxes"):
            Detections(boxes, [0.1] * 3, [1] * 3, FRAME_HW, **{name: value})
    with pytest.raises(ValueError, match=r"masks of shape \(80, 60\) for a \(60, 80\) frame"):
        Detections(boxes, [0.1] * 3, [1] * 3, FRAME_HW, masks=np.zeros((3, 80, 60), bool))
    with pytest.raises(ValueError, match="2 track_ids for 3 boxes"):
        sample(3).with_track_ids([1, 2])


def test_empty_detections():
    det = Detections.empty(FRAME_HW)
    assert len(det) == 0 and det.frame_hw == FRAME_HW and not det.has_masks
    assert det.boxes.shape == (0, 4) and det.track_ids is None
    assert len(det[det.scores > 0.5]) == 0
    assert len(det.with_track_ids(np.zeros(0))) == 0


# ----------------------------------------------------------------- subsets
def test_subsets_keep_every_field_aligned():
    det = sample(5)
    for index in ([3, 0, 4], np.array([False, True, False, True, True]), slice(1, 3), 2, -1):
        rows = np.atleast_1d(np.arange(5)[index])
        subset = det[index]
        assert isinstance(subset, Detections) and len(subset) == len(rows) and subset.frame_hw == FRAME_HW
        for name in ("boxes", "scores", "labels", "track_ids", "embeddings", "mask_probs"):
            np.testing.assert_array_equal(getattr(subset, name), getattr(det, name)[rows], err_msg=f"{name} {index}")
        assert subset.masks is None
        for new, old in enumerate(rows):
            np.testing.assert_array_equal(subset.mask(new), det.mask(old))
    # binary masks and untracked detections
    masks = np.random.default_rng(3).random((5, *FRAME_HW)) > 0.5
    binary = Detections(det.boxes, det.scores, det.labels, FRAME_HW, masks=masks)
    subset = binary[[4, 1]]
    assert subset.track_ids is None and subset.embeddings is None and subset.mask_probs is None
    np.testing.assert_array_equal(subset.masks, masks[[4, 1]])
    np.testing.assert_array_equal(subset.mask(0), masks[4])


def test_a_subset_carries_masks_already_pasted_to_their_new_rows(paste_calls):
    det = sample(4)
    pasted = det.mask(2)
    assert len(paste_calls) == 1
    subset = det[[3, 2, 0]]
    assert subset.mask(1) is pasted  # row 2 became row 1: reused, not pasted again
    assert len(paste_calls) == 1
    np.testing.assert_array_equal(subset.mask(0), paste_mask(det.mask_probs[3], det.boxes[3], *FRAME_HW))
    assert len(paste_calls) == 2
    # subsetting the subset still lines up
    assert subset[[1]].mask(0) is pasted and len(paste_calls) == 2
    # and the ids stay with their detections
    assert subset.track_ids.tolist() == [13, 12, 10]


def test_with_track_ids_keeps_the_rest_and_the_pasted_masks(paste_calls):
    det = sample(3, track_ids=None)
    assert det.track_id(0) is None
    pasted = det.mask(1)
    tracked = det.with_track_ids([7, 8, 9])
    assert tracked is not det and det.track_ids is None  # the original is untouched
    assert tracked.track_ids.dtype == np.int64 and [tracked.track_id(i) for i in range(3)] == [7, 8, 9]
    assert isinstance(tracked.track_id(0), int)
    np.testing.assert_array_equal(tracked.boxes, det.boxes)
    np.testing.assert_array_equal(tracked.mask_probs, det.mask_probs)
    assert tracked.mask(1) is pasted and len(paste_calls) == 1


# ------------------------------------------------------------------- masks
def test_mask_is_paste_mask_of_its_probabilities_computed_once(paste_calls):
    det = sample(3)
    for index in range(3):
        first = det.mask(index)
        np.testing.assert_array_equal(first, paste_mask(det.mask_probs[index], det.boxes[index], *FRAME_HW))
        assert first.shape == FRAME_HW and first.dtype == bool and first.any()
        assert det.mask(index) is first and det.mask(index) is first
    assert len(paste_calls) == 3


def test_binary_masks_are_returned_as_given_and_no_masks_is_none(paste_calls):
    masks = np.zeros((2, *FRAME_HW), bool)
    masks[0, 5:10, 5:10] = True
    det = Detections(np.zeros((2, 4)), [0.9, 0.8], [1, 1], FRAME_HW, masks=masks)
    assert det.has_masks
    np.testing.assert_array_equal(det.mask(0), masks[0])
    assert not det.mask(1).any()
    assert paste_calls == []
    bare = Detections(np.zeros((2, 4)), [0.9, 0.8], [1, 1], FRAME_HW)
    assert not bare.has_masks and bare.mask(0) is None
    assert sample(1).has_masks


def test_track_ids_given_as_a_list_subset_like_an_array():
    det = Detections(np.zeros((3, 4)), [0.9, 0.8, 0.7], [1, 1, 1], FRAME_HW, track_ids=[3, 4, 5])
    assert det[[2, 0]].track_ids.tolist() == [5, 3]
