"""service.results: detections in frame pixels with COCO RLE masks, the PNG overlay,
and the checks on untrusted image bytes (on real encoded vtest frames and crafted headers)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from export.ort_runtime import paste_masks
from models import masks
from service import results
from service.engines.base import FrameOutput
from service.results import ImageError, decode_image, frame_result, overlay_png

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")
LIMITS = {"max_bytes": 8 << 20, "max_pixels": 4096 * 4096, "max_side": 8192}
WORKING = (360, 480)
FRAME = (576, 768)  # vtest's (height, width): 1.6x the working size


def _output(boxes, scores, labels, mask_probs=None) -> FrameOutput:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    count = len(boxes)
    if mask_probs is None:
        mask_probs = np.ones((count, 1, 28, 28), np.float32)
    return FrameOutput(
        boxes=boxes,
        scores=np.asarray(scores, np.float32),
        labels=np.asarray(labels, np.int64),
        mask_probs=np.asarray(mask_probs, np.float32),
        embeddings=np.zeros((count, 8), np.float32),
        features=[],
    )


def _rle_for_pycocotools(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} missing (Debian package opencv-doc)")
    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 120)
    ok, image = capture.read()
    capture.release()
    assert ok and image.shape == (*FRAME, 3)
    return image


# ------------------------------------------------------------------ results
def test_boxes_scale_back_to_frame_pixels_and_low_scores_are_dropped():
    out = _output(
        [[10, 20, 110, 220], [0, 0, 480, 360], [50, 50, 60, 60], [100, 100, 200, 300]],
        [0.9, 0.7, 0.2, 0.6],
        [1, 1, 1, 2],
    )
    result = frame_result(out, [7, 8, 9, 10], ["person", "forklift"], FRAME, WORKING, score_thresh=0.5)
    assert result["safety_rated"] is False
    assert result["frame_size"] == {"height": 576, "width": 768}
    persons, objects = result["persons"], result["objects"]
    assert [p["track_id"] for p in persons] == [7, 8]  # id 9 scored 0.2: dropped with its detection
    assert persons[0]["box"] == pytest.approx([16, 32, 176, 352])
    assert persons[1]["box"] == pytest.approx([0, 0, 768, 576])
    assert [(p["class"], p["label"]) for p in persons] == [("person", 1), ("person", 1)]
    assert persons[0]["score"] == pytest.approx(0.9, abs=1e-4)
    assert len(objects) == 1 and objects[0]["class"] == "forklift" and objects[0]["track_id"] == 10
    assert objects[0]["box"] == pytest.approx([160, 160, 320, 480])
    json.dumps(result)  # JSON-ready as it is

    untracked = frame_result(out, None, ["person", "forklift"], FRAME, WORKING, score_thresh=0.65, masks=False)
    assert [p["track_id"] for p in untracked["persons"]] == [None, None]
    assert untracked["objects"] == []
    assert all(p["mask"] is None and p["area"] is None for p in untracked["persons"])
    with pytest.raises(ValueError, match="3 track ids for 4 detections"):
        frame_result(out, [1, 2, 3], ["person"], FRAME, WORKING)


def test_rle_masks_decode_to_the_mask_pasted_at_frame_size():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 1, 28, 28)).astype(np.float32)  # 0: noise, an exact round trip
    probs[1] = 1.0  # a full mask: it covers its box
    yy, xx = np.mgrid[:28, :28] - 13.5
    probs[2, 0] = 1.0 - np.hypot(xx, yy) / 20.0  # a smooth disk
    boxes = [[30.5, 40.25, 130.75, 300.5], [200, 100, 300, 350], [320, 60, 420, 200]]
    out = _output(boxes, [0.8, 0.9, 0.7], [1, 1, 1], probs)
    result = frame_result(out, [1, 2, 3], ["person"], FRAME, WORKING)
    expected = paste_masks(probs, out.boxes * 1.6, *FRAME) > 0.5
    decoded = []
    for det, reference in zip(result["persons"], expected):
        assert det["mask"]["size"] == [576, 768] and isinstance(det["mask"]["counts"], str)
        decoded.append(mask_utils.decode(_rle_for_pycocotools(det["mask"])).astype(bool))
        np.testing.assert_array_equal(decoded[-1], reference)
        assert det["area"] == int(reference.sum()) > 0
    # The full mask is its box in frame pixels (320..480 x 160..560), up to the pasting's edge.
    box = np.zeros(FRAME, bool)
    box[160:560, 320:480] = True
    assert _iou(decoded[1], box) > 0.97
    # Pasting at working size and enlarging gives nearly the same disk (a cross-check of the scaling).
    small = paste_masks(probs[2:], out.boxes[2:], *WORKING)[0] > 0.5
    enlarged = cv2.resize(small.astype(np.uint8), FRAME[::-1], interpolation=cv2.INTER_NEAREST) > 0
    assert _iou(decoded[2], enlarged) > 0.95


def test_box_region_pasting_equals_full_frame_paste_masks_also_across_the_edges():
    rng = np.random.default_rng(1)
    boxes = np.array(
        [[-20.3, -15.7, 60.2, 90.9], [700.5, 500.25, 790.0, 600.0], [0, 0, 768, 576], [100, 100, 100.4, 100.4],
         [-80, 200, -10, 300], [383.6, 287.2, 384.1, 288.9]],
        np.float32,
    )
    probs = rng.random((len(boxes), 1, 28, 28)).astype(np.float32)
    expected = paste_masks(probs, boxes, *FRAME) > 0.5
    for box, prob, reference in zip(boxes, probs, expected):
        got = masks.paste_mask(prob[0], box, *FRAME)
        assert got.flags.f_contiguous
        np.testing.assert_array_equal(got, reference, err_msg=str(box))


@needs_vtest
def test_overlay_is_a_png_of_the_frame_with_masks_tinted_per_track(frame):
    out = _output([[50, 50, 150, 300], [300, 50, 400, 300]], [0.9, 0.8], [1, 1])
    result = frame_result(out, [3, 4], ["person"], FRAME, WORKING)
    png = overlay_png(frame, result)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == frame.shape
    masks = [mask_utils.decode(_rle_for_pycocotools(p["mask"])).astype(bool) for p in result["persons"]]
    inner = [cv2.erode(m.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0 for m in masks]  # away from the labels
    for mask in inner:
        assert np.abs(image[mask].astype(int) - frame[mask].astype(int)).mean() > 10
    outside = ~cv2.dilate(np.logical_or(*masks).astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
    np.testing.assert_array_equal(image[outside], frame[outside])
    # Different ids, different tints: the same pixels of both boxes shifted towards different colours.
    shift = [(image[m].astype(float) - frame[m].astype(float)).mean(0) for m in inner]
    assert np.abs(shift[0] - shift[1]).max() > 20
    assert results.track_colour(3) != results.track_colour(4)


# ----------------------------------------------------------------- decoding
def _png_header(width: int, height: int) -> bytes:
    """PNG signature + an IHDR chunk with a correct CRC (and no pixel data)."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF0 segment's declared size replaced."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


@pytest.fixture
def never_decoded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode must not be reached")

    monkeypatch.setattr(results.cv2, "imdecode", refuse)


@needs_vtest
def test_real_jpeg_and_png_decode(frame):
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    png = cv2.imencode(".png", frame)[1].tobytes()
    decoded = decode_image(jpeg, **LIMITS)
    assert decoded.shape == frame.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frame.astype(int)).mean() < 4
    np.testing.assert_array_equal(decode_image(png, **LIMITS), frame)
    grey = cv2.imencode(".png", frame[:, :, 0])[1].tobytes()  # one channel in, BGR out
    assert decode_image(grey, **LIMITS).shape == frame.shape
    progressive = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert decode_image(progressive, **LIMITS).shape == frame.shape


@needs_vtest
def test_limits_on_bytes_and_size(frame, never_decoded):
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    with pytest.raises(ImageError, match=f"image of {len(jpeg)} bytes exceeds the limit of 1000 bytes"):
        decode_image(jpeg, max_bytes=1000, max_pixels=LIMITS["max_pixels"], max_side=LIMITS["max_side"])
    with pytest.raises(ImageError, match="JPEG of 768x576 is too large: the longest side may be at most 640 pixels"):
        decode_image(jpeg, max_bytes=LIMITS["max_bytes"], max_pixels=LIMITS["max_pixels"], max_side=640)
    with pytest.raises(ImageError, match="JPEG of 768x576 is too large: 442368 pixels exceeds 100000"):
        decode_image(jpeg, max_bytes=LIMITS["max_bytes"], max_pixels=100_000, max_side=LIMITS["max_side"])
    # A JPEG that declares 20000x20000 is refused from its header.
    with pytest.raises(ImageError, match="JPEG of 20000x20000 is too large"):
        decode_image(_jpeg_with_size(jpeg, 20000, 20000), **LIMITS)
    with pytest.raises(ImageError, match=r"JPEG declares a zero size \(768x0\)"):
        decode_image(_jpeg_with_size(jpeg, 768, 0), **LIMITS)


def test_png_bomb_and_zero_size_are_refused_from_the_header(never_decoded):
    iend = _png_chunk(b"IEND", b"")
    bomb = _png_header(20000, 20000) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + iend
    with pytest.raises(ImageError, match="PNG of 20000x20000 is too large: the longest side may be at most 8192"):
        decode_image(bomb, **LIMITS)
    with pytest.raises(ImageError, match=r"PNG declares a zero size \(0x0\)"):
        decode_image(_png_header(0, 0) + iend, **LIMITS)
    with pytest.raises(ImageError, match="truncated PNG: .* no IEND chunk"):
        decode_image(_png_header(10, 10) + _png_chunk(b"IDAT", b"x" * 200), **LIMITS)
    with pytest.raises(ImageError, match="truncated PNG: 20 bytes, shorter than a PNG header"):
        decode_image(_png_header(10, 10)[:20], **LIMITS)


def test_corrupt_png_data_is_refused():
    corrupt = _png_header(10, 10) + _png_chunk(b"IDAT", b"not zlib data at all") + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="corrupt PNG: .* OpenCV cannot decode"):
        decode_image(corrupt, **LIMITS)


@needs_vtest
def test_truncated_jpeg_is_refused(frame):
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    # OpenCV decodes a partial image from this (grey below the cut); the missing EOI gives it away.
    with pytest.raises(ImageError, match=r"truncated JPEG: \d+ bytes without the end-of-image marker \(FF D9\)"):
        decode_image(jpeg[: len(jpeg) * 2 // 3], **LIMITS)
    with pytest.raises(ImageError, match="truncated JPEG: 100 bytes end before its frame header"):
        decode_image(jpeg[:100], **LIMITS)


def test_empty_random_and_unsupported_bytes_are_refused():
    with pytest.raises(ImageError, match="empty image: 0 bytes received"):
        decode_image(b"", **LIMITS)
    noise = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    unrecognised = r"unsupported image type: received unrecognised data \(first bytes [0-9a-f ]+\) \(4096 bytes\)"
    with pytest.raises(ImageError, match=unrecognised + "; only JPEG and PNG are accepted"):
        decode_image(noise, **LIMITS)
    with pytest.raises(ImageError, match="(corrupt|truncated) JPEG"):  # JPEG magic, then noise
        decode_image(b"\xff\xd8\xff" + noise, **LIMITS)
    picture = np.zeros((16, 16, 3), np.uint8)
    bmp = cv2.imencode(".bmp", picture)[1].tobytes()
    gif = b"GIF89a" + struct.pack("<HH", 16, 16) + b"\x00\x00\x00" + b"\x3b"
    for data, kind in ((bmp, "BMP"), (gif, "GIF"), (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP")):
        with pytest.raises(ImageError, match=f"unsupported image type: received {kind} .*only JPEG and PNG"):
            decode_image(data, **LIMITS)
