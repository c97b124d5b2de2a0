"""models.masks: pasting per-box probabilities into the frame (torchvision's rule), against a
per-pixel bilinear reference and torchvision itself; COCO RLE both ways, against pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from models.masks import (
    MASK_THRESHOLD,
    decode_rle,
    encode_rle,
    encode_rle_counts,
    mask_area,
    paste_mask,
    paste_mask_probs,
    paste_region,
)

HEIGHT, WIDTH = 70, 90
M = 14
BOXES = np.array(
    [
        [5.3, 7.1, 40.2, 60.9],  # inside
        [60.0, 50.0, 120.0, 100.0],  # across the right and bottom edges
        [0.0, 0.0, 90.0, 70.0],  # the whole frame
        [30.0, 30.0, 30.4, 30.4],  # smaller than a pixel
        [-10.0, -5.0, 20.0, 15.0],  # across the left and top edges
        [10.0, 10.0, 12.0, 50.0],  # thin: the mask is shrunk along x
        [-30.0, 20.0, 130.0, 40.0],  # wider than the frame
        [95.0, 10.0, 130.0, 40.0],  # right of the frame
        [-40.0, 10.0, -12.0, 40.0],  # left of the frame
        [10.0, -50.0, 40.0, -20.0],  # above the frame
    ],
    np.float32,
)
OUTSIDE = (7, 8, 9)
# torchvision slices the frame with the box's clipped ends, which for a box wholly
# outside the frame make a negative or reversed slice: it raises on those
TORCHVISION_ROWS = [i for i in range(len(BOXES)) if i not in OUTSIDE]


def reference_paste(prob: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's rule written out per pixel: pad the [M, M] mask with one zero
    cell, grow the box by (M + 2) / M about its centre (float32, as torch), cut its
    corners to integers, and sample the padded mask bilinearly at every frame
    pixel of the grown box (half-pixel centres, source clamped at the border)."""
    size = prob.shape[-1]
    padded = np.pad(prob.astype(np.float64), 1)
    box = box.astype(np.float32)
    scale = np.float32((size + 2) / size)
    half_w, half_h = (box[2] - box[0]) * np.float32(0.5) * scale, (box[3] - box[1]) * np.float32(0.5) * scale
    centre_x, centre_y = (box[2] + box[0]) * np.float32(0.5), (box[3] + box[1]) * np.float32(0.5)
    x0, x1 = int(centre_x - half_w), int(centre_x + half_w)  # int() truncates towards zero, as torch
    y0, y1 = int(centre_y - half_h), int(centre_y + half_h)
    box_w, box_h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    out = np.zeros((height, width))
    for row in range(max(y0, 0), min(y1 + 1, height)):
        sy = max((row - y0 + 0.5) * (size + 2) / box_h - 0.5, 0.0)
        r0 = int(sy)
        r1, fy = min(r0 + 1, size + 1), sy - r0
        for col in range(max(x0, 0), min(x1 + 1, width)):
            sx = max((col - x0 + 0.5) * (size + 2) / box_w - 0.5, 0.0)
            c0 = int(sx)
            c1, fx = min(c0 + 1, size + 1), sx - c0
            out[row, col] = ((1 - fy) * ((1 - fx) * padded[r0, c0] + fx * padded[r0, c1])
                             + fy * ((1 - fx) * padded[r1, c0] + fx * padded[r1, c1]))
    return out


@pytest.fixture(scope="module")
def probs() -> np.ndarray:
    return np.random.default_rng(0).random((len(BOXES), 1, M, M)).astype(np.float32)


# ----------------------------------------------------------------- pasting
def test_paste_mask_probs_equals_the_per_pixel_reference(probs):
    pasted = paste_mask_probs(probs, BOXES, HEIGHT, WIDTH)
    assert pasted.shape == (len(BOXES), HEIGHT, WIDTH) and pasted.dtype == np.float32
    for index, (prob, box) in enumerate(zip(probs, BOXES)):
        expected = reference_paste(prob[0], box, HEIGHT, WIDTH)
        np.testing.assert_allclose(pasted[index], expected, atol=2e-6, err_msg=str(box))
        if index in OUTSIDE:
            assert not pasted[index].any()
        else:
            assert pasted[index].any()
    # [N, M, M] works as [N, 1, M, M] does
    np.testing.assert_array_equal(paste_mask_probs(probs[:, 0], BOXES, HEIGHT, WIDTH), pasted)


def test_paste_mask_probs_equals_torchvision_paste_masks_in_image(probs):
    torch = pytest.importorskip("torch")
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    rng = np.random.default_rng(1)
    more = rng.uniform(-30, 95, (80, 2)).astype(np.float32)  # random boxes, many across the edges
    sizes = rng.uniform(0.3, 60, (80, 2)).astype(np.float32)
    random_boxes = np.concatenate([more, more + sizes], axis=1)
    keep = ((random_boxes[:, 2] >= 1) & (random_boxes[:, 3] >= 1)  # overlapping the frame (see above)
            & (random_boxes[:, 0] <= WIDTH - 1) & (random_boxes[:, 1] <= HEIGHT - 1))
    assert keep.sum() >= 40
    boxes = np.concatenate([BOXES[TORCHVISION_ROWS], random_boxes[keep]])
    masks = np.concatenate([probs[TORCHVISION_ROWS], rng.random((int(keep.sum()), 1, M, M)).astype(np.float32)])
    expected = roi_heads.paste_masks_in_image(torch.from_numpy(masks), torch.from_numpy(boxes), (HEIGHT, WIDTH))
    np.testing.assert_allclose(paste_mask_probs(masks, boxes, HEIGHT, WIDTH), expected[:, 0].numpy(), atol=2e-6)


def test_paste_mask_is_the_thresholded_paste_in_fortran_order(probs):
    pasted = paste_mask_probs(probs, BOXES, HEIGHT, WIDTH)
    for index, (prob, box) in enumerate(zip(probs, BOXES)):
        mask = paste_mask(prob[0], box, HEIGHT, WIDTH)
        assert mask.dtype == bool and mask.shape == (HEIGHT, WIDTH) and mask.flags.f_contiguous
        np.testing.assert_array_equal(mask, pasted[index] > MASK_THRESHOLD)
    full = paste_mask(np.ones((M, M), np.float32), np.array([20, 10, 60, 50], np.float32), HEIGHT, WIDTH)
    rows, cols = np.nonzero(full)  # a full mask covers its box, up to the pasting's edge
    assert abs(rows.min() - 10) <= 1 and abs(rows.max() - 50) <= 1
    assert abs(cols.min() - 20) <= 1 and abs(cols.max() - 60) <= 1


def test_paste_region_is_the_part_of_the_grown_box_inside_the_frame(probs):
    for index, (prob, box) in enumerate(zip(probs, BOXES)):
        region = paste_region(prob[0], box, HEIGHT, WIDTH)
        if index in OUTSIDE:
            assert region is None, box
            continue
        values, (rows, cols) = region
        assert 0 <= rows.start < rows.stop <= HEIGHT and 0 <= cols.start < cols.stop <= WIDTH
        assert values.shape == (rows.stop - rows.start, cols.stop - cols.start)
        expected = reference_paste(prob[0], box, HEIGHT, WIDTH)
        np.testing.assert_allclose(values, expected[rows, cols], atol=2e-6)
        outside = np.ones((HEIGHT, WIDTH), bool)
        outside[rows, cols] = False
        assert not expected[outside].any()  # nothing of the mask lies outside the region


# --------------------------------------------------------------------- RLE
def masks_to_encode() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    corner = np.zeros((7, 5), bool)
    corner[0, 0] = corner[-1, -1] = True
    blob = np.zeros((40, 30), bool)
    blob[5:25, 8:20] = True
    return {
        "random": rng.random((37, 23)) > 0.5,
        "sparse": rng.random((50, 60)) > 0.97,
        "empty": np.zeros((12, 9), bool),
        "full": np.ones((12, 9), bool),
        "corners": corner,
        "blob": blob,
        "row": rng.random((1, 40)) > 0.5,
        "column": rng.random((40, 1)) > 0.5,
        "one": np.ones((1, 1), bool),
    }


@pytest.mark.parametrize("name", list(masks_to_encode()))
def test_compressed_rle_round_trips_and_counts_the_area(name):
    mask = masks_to_encode()[name]
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    decoded = decode_rle(rle)
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(decode_rle({**rle, "counts": rle["counts"].encode("ascii")}), mask)  # bytes too
    assert mask_area(rle) == int(mask.sum())
    # what pycocotools itself makes of the mask
    expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"] == expected["counts"].decode("ascii")


@pytest.mark.parametrize("name", list(masks_to_encode()))
def test_uncompressed_rle_counts_agree_with_pycocotools_and_round_trip(name):
    mask = masks_to_encode()[name]
    rle = encode_rle_counts(mask)
    counts = rle["counts"]
    assert rle["size"] == list(mask.shape)
    assert all(isinstance(c, int) and c >= 0 for c in counts) and all(c > 0 for c in counts[1:])
    assert sum(counts) == mask.size and sum(counts[1::2]) == mask.sum()  # zeros first, then ones, ...
    np.testing.assert_array_equal(decode_rle(rle), mask)
    # pycocotools compresses the same runs to the same string as it encodes the mask
    compressed = mask_utils.frPyObjects({"size": list(mask.shape), "counts": counts}, *mask.shape)
    assert compressed["counts"] == mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]


def test_uncompressed_counts_by_hand():
    mask = np.array([[0, 1, 1], [0, 1, 0]], bool)  # column-major: 0 0 1 1 1 0
    assert encode_rle_counts(mask) == {"size": [2, 3], "counts": [2, 3, 1]}
    assert encode_rle_counts(~mask)["counts"] == [0, 2, 3, 1]  # starts with ones: a zero-length first run
    assert encode_rle_counts(np.zeros((2, 3), bool))["counts"] == [6]
    assert encode_rle_counts(np.ones((2, 3), bool))["counts"] == [0, 6]
    assert encode_rle_counts(np.array([[0, 1, 1], [0, 1, 0]], np.uint8))["counts"] == [2, 3, 1]  # 0/1 integers


def test_uncompressed_counts_take_any_nonzero_value_as_inside_as_encode_rle_does():
    mask = np.array([[255, 0, 0], [0, 255, 255]], np.uint8)
    np.testing.assert_array_equal(decode_rle(encode_rle_counts(mask)), decode_rle(encode_rle(mask)))
