"""What the service says about a frame, and the checks on frames it is sent.

* ``frame_result``: an engine's output (working-size pixels) as JSON-ready
  detections in the camera frame's pixels, masks as COCO RLE;
* ``overlay_png``: a frame with those detections drawn on it;
* ``decode_image``: untrusted JPEG/PNG bytes to a BGR frame, refusing
  anything that is not one, or too big, before it is decoded.

numpy, OpenCV and pycocotools only (no torch).
"""

from __future__ import annotations

import colorsys
import struct
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .engines.base import FrameOutput

MASK_THRESHOLD = 0.5
PERSON = "person"


# --------------------------------------------------------------- results
def frame_result(
    output: FrameOutput,
    track_ids: list[int] | None,
    classes: list[str],
    frame_size: tuple[int, int],
    working_size: tuple[int, int],
    *,
    score_thresh: float = 0.5,
    masks: bool = True,
) -> dict[str, Any]:
    """Detections with ``score >= score_thresh`` in the original frame's pixels.

    ``frame_size``/``working_size`` are (height, width). ``track_ids`` lines up
    with ``output``'s detections (None: no tracking). Detections of class
    "person" go to ``persons``, the rest to ``objects``; each has
    ``track_id``, ``class``, ``label``, ``score``, ``box`` [x1, y1, x2, y2],
    ``mask`` (COCO RLE at frame size, or None) and ``area`` (mask pixels, or None).
    """
    frame_h, frame_w = (int(v) for v in frame_size)
    work_h, work_w = (int(v) for v in working_size)
    count = len(output.scores)
    if track_ids is not None and len(track_ids) != count:
        raise ValueError(f"{len(track_ids)} track ids for {count} detections")
    scale = np.array([frame_w / work_w, frame_h / work_h] * 2, dtype=np.float64)
    keep = np.nonzero(np.asarray(output.scores) >= score_thresh)[0]
    boxes = np.asarray(output.boxes, dtype=np.float64).reshape(-1, 4)[keep] * scale
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, frame_w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, frame_h)

    persons, objects = [], []
    for row, index in enumerate(keep):
        label = int(output.labels[index])
        name = classes[label - 1] if 1 <= label <= len(classes) else f"class_{label}"
        detection: dict[str, Any] = {
            "track_id": None if track_ids is None else int(track_ids[index]),
            "class": name,
            "label": label,
            "score": round(float(output.scores[index]), 4),
            "box": [round(float(v), 2) for v in boxes[row]],
            "mask": None,
            "area": None,
        }
        if masks:
            # As torchvision: boxes scaled to the frame, the 28x28 mask pasted at frame size.
            mask = paste_mask(output.mask_probs[index, 0], boxes[row], frame_h, frame_w)
            detection["mask"] = encode_mask(mask)
            detection["area"] = int(mask_utils.area(detection["mask"]))
        (persons if name == PERSON else objects).append(detection)
    return {
        "frame_size": {"height": frame_h, "width": frame_w},
        "persons": persons,
        "objects": objects,
        "safety_rated": False,
    }


def paste_mask(mask_prob: np.ndarray, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """One ``[M, M]`` mask pasted into its box and thresholded: a boolean ``[height, width]``
    array in Fortran order (what RLE encoding reads).

    The same computation as ``export.ort_runtime.paste_masks`` (torchvision's
    rule: one-cell zero border, box grown by the same proportion, bilinear
    resize), but only the box's region is computed, so a detection costs its
    box's pixels rather than a float32 copy of the whole frame.
    """
    size = mask_prob.shape[-1]
    scale = (size + 2) / size
    padded = np.pad(mask_prob.astype(np.float32, copy=False), 1)
    box = np.asarray(box, dtype=np.float32)
    half_w = (box[2] - box[0]) * 0.5 * scale
    half_h = (box[3] - box[1]) * 0.5 * scale
    centre_x = (box[2] + box[0]) * 0.5
    centre_y = (box[3] + box[1]) * 0.5
    grown = np.array([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h])
    x0, y0, x1, y1 = (int(v) for v in grown.astype(np.float32).astype(np.int64))  # truncation, as paste_masks
    out = np.zeros((height, width), dtype=bool, order="F")
    box_w, box_h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    left, right = max(x0, 0), min(x1 + 1, width)
    top, bottom = max(y0, 0), min(y1 + 1, height)
    if left < right and top < bottom:
        resized = cv2.resize(padded, (box_w, box_h), interpolation=cv2.INTER_LINEAR)
        out[top:bottom, left:right] = resized[top - y0 : bottom - y0, left - x0 : right - x0] > MASK_THRESHOLD
    return out


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A boolean [H, W] mask as COCO RLE with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (``counts`` str or bytes) -> boolean [H, W] mask."""
    counts = rle["counts"]
    encoded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(encoded).astype(bool)


# --------------------------------------------------------------- overlay
def track_colour(key: int) -> tuple[int, int, int]:
    """A BGR colour per track id, far apart for neighbouring ids (golden-ratio hues)."""
    hue = (key * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def overlay_png(frame_bgr: np.ndarray, result: dict[str, Any], alpha: float = 0.45) -> bytes:
    """PNG of ``frame_bgr`` with the result's masks (translucent), boxes and "id N score" labels."""
    if frame_bgr is None or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise ValueError(f"overlay needs an HxWx3 BGR frame, got {getattr(frame_bgr, 'shape', None)}")
    canvas = frame_bgr.copy()
    height, width = canvas.shape[:2]
    detections = [*result.get("persons", []), *result.get("objects", [])]
    for index, det in enumerate(detections):
        track = det.get("track_id")
        colour = track_colour(track if track is not None else index)
        if det.get("mask"):
            mask = decode_mask(det["mask"])
            if mask.shape != (height, width):  # a result computed for another frame size
                mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
            tinted = canvas[mask].astype(np.float32) * (1 - alpha) + np.array(colour, np.float32) * alpha
            canvas[mask] = tinted.round().astype(np.uint8)
    for index, det in enumerate(detections):  # boxes and labels on top of every mask
        track = det.get("track_id")
        colour = track_colour(track if track is not None else index)
        x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        text = f"id {track} {det['score']:.2f}" if track is not None else f"{det['class']} {det['score']:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - text_h - baseline - 2, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + text_w + 4, top + text_h + baseline + 2), colour, -1)
        cv2.putText(canvas, text, (x1 + 2, top + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise ValueError("OpenCV could not encode the overlay as PNG")
    return png.tobytes()


# ------------------------------------------------------------ decoding
class ImageError(ValueError):
    """Bytes that are not an acceptable frame; the message says what was received."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"IEND\xaeB`\x82"
JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); not DHT C4, JPG C8, DAC CC.
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers without a length field.
JPEG_STANDALONE = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI


def sniff_type(data: bytes) -> str:
    """A name for what ``data`` looks like (JPEG and PNG are the accepted ones)."""
    if data.startswith(JPEG_SOI):
        return "JPEG"
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    others = (
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"BM", "BMP"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"P1", "PBM"), (b"P4", "PBM"), (b"P2", "PGM"), (b"P5", "PGM"), (b"P3", "PPM"), (b"P6", "PPM"),
        (b"\x1aE\xdf\xa3", "Matroska/WebM video"),
        (b"%PDF", "PDF"),
        (b"{", "JSON/text"),
        (b"<", "HTML/XML text"),
    )
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        brand = data[8:12].decode("ascii", "replace")
        return "HEIF/AVIF" if brand in ("heic", "heix", "mif1", "avif", "msf1") else f"MP4/QuickTime ({brand})"
    for magic, name in others:
        if data.startswith(magic):
            return name
    return f"unrecognised data (first bytes {data[:8].hex(' ')})"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which must come first."""
    if len(data) < 33:
        raise ImageError(f"truncated PNG: {len(data)} bytes, shorter than a PNG header")
    length, chunk = struct.unpack(">I4s", data[8:16])
    if chunk != b"IHDR" or length != 13:
        raise ImageError("corrupt PNG: the first chunk is not a 13-byte IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first start-of-frame segment, walking the marker segments."""
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise ImageError(f"corrupt JPEG: expected a marker at byte {pos}, found 0x{data[pos]:02x}")
        while pos < end and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise ImageError("corrupt JPEG: no frame header (SOF) before the image data")
        if pos + 2 > end:
            break
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise ImageError(f"corrupt JPEG: segment 0x{marker:02x} has length {length}")
        if marker in JPEG_SOF:
            if pos + 7 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 3 : pos + 7])
            return width, height
        pos += length
    raise ImageError(f"truncated JPEG: {len(data)} bytes end before its frame header (SOF)")


def decode_image(data: bytes, max_bytes: int, max_pixels: int, max_side: int) -> np.ndarray:
    """JPEG or PNG bytes -> BGR uint8 [H, W, 3], or ImageError saying why not.

    The size the header declares is checked before decoding, so an oversized
    image (a decompression bomb) is never decoded; a JPEG must end with its
    EOI marker and a PNG with its IEND chunk, so truncated frames are refused
    even where OpenCV would decode part of them.
    """
    if data is None or len(data) == 0:
        raise ImageError("empty image: 0 bytes received")
    data = bytes(data)
    if len(data) > max_bytes:
        raise ImageError(f"image of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    kind = sniff_type(data)
    if kind == "PNG":
        width, height = png_size(data)
        if PNG_IEND not in data[-64:]:
            raise ImageError(f"truncated PNG: {len(data)} bytes with no IEND chunk at the end")
    elif kind == "JPEG":
        width, height = jpeg_size(data)
        if not data.rstrip(b"\x00\r\n").endswith(JPEG_EOI):
            raise ImageError(f"truncated JPEG: {len(data)} bytes without the end-of-image marker (FF D9)")
    else:
        raise ImageError(f"unsupported image type: received {kind} ({len(data)} bytes); only JPEG and PNG are accepted")
    _check_size(kind, width, height, max_pixels, max_side)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError(f"corrupt {kind}: {len(data)} bytes that OpenCV cannot decode")
    # EXIF orientation may swap the sides; the limits are symmetric, but check what was decoded.
    _check_size(kind, image.shape[1], image.shape[0], max_pixels, max_side)
    return image


def _check_size(kind: str, width: int, height: int, max_pixels: int, max_side: int) -> None:
    if width == 0 or height == 0:
        raise ImageError(f"{kind} declares a zero size ({width}x{height})")
    if max(width, height) > max_side:
        raise ImageError(
            f"{kind} of {width}x{height} is too large: the longest side may be at most {max_side} pixels"
        )
    if width * height > max_pixels:
        raise ImageError(f"{kind} of {width}x{height} is too large: {width * height} pixels exceeds {max_pixels}")
