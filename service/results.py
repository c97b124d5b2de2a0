"""What the service says about a frame, and the checks on frames it is sent.

* ``FrameResult``: one processed frame of a stream (typed: its ``Detections``),
  and ``result_json``/``detections_json``: the JSON made from it where it is
  sent (masks as COCO RLE); ``frame_result``: the same for a stateless frame;
* ``overlay_png``: a frame with those detections drawn on it;
* ``decode_image``: untrusted JPEG/PNG bytes to a BGR frame, refusing
  anything that is not one, or too big, before it is decoded.

numpy, OpenCV and pycocotools only (no torch).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from models.detections import Detections
from models.drawing import track_colour
from models.masks import decode_rle, encode_rle, mask_area
from models.stream_step import FrameOutput, detections_from_output

PERSON = "person"
RESULT_SCHEMA = "cellwatch.result/1"


# --------------------------------------------------------------- results
@dataclass
class FrameResult:
    """One processed frame of a stream: what the pipeline hands to the zones and
    the edge. ``detections`` are thresholded and tracked, in the frame's pixels."""

    stream_id: str
    frame: int  # 1, 2, 3, ... per stream
    capture_ts: float
    image: np.ndarray  # the BGR frame itself
    detections: Detections
    classes: list[str]  # class names, label 1 first
    timing: dict[str, float] = field(default_factory=dict)

    def persons(self) -> list[int]:
        """Indices of the detections of class "person"."""
        return [i for i, label in enumerate(self.detections.labels.tolist())
                if 1 <= label <= len(self.classes) and self.classes[label - 1] == PERSON]


def detections_json(detections: Detections, classes: list[str], masks: bool = True) -> dict[str, Any]:
    """Detections as JSON: class "person" to ``persons``, the rest to ``objects``;
    each with ``track_id``, ``class``, ``label``, ``score``, ``box`` [x1, y1, x2, y2],
    ``mask`` (COCO RLE at frame size, or None) and ``area`` (mask pixels, or None)."""
    frame_h, frame_w = detections.frame_hw
    persons, objects = [], []
    for index in range(len(detections)):
        label = int(detections.labels[index])
        name = classes[label - 1] if 1 <= label <= len(classes) else f"class_{label}"
        detection: dict[str, Any] = {
            "track_id": detections.track_id(index),
            "class": name,
            "label": label,
            "score": round(float(detections.scores[index]), 4),
            "box": [round(float(v), 2) for v in detections.boxes[index]],
            "mask": None,
            "area": None,
        }
        mask = detections.mask(index) if masks else None
        if mask is not None:
            detection["mask"] = encode_rle(mask)
            detection["area"] = mask_area(detection["mask"])
        (persons if name == PERSON else objects).append(detection)
    return {"frame_size": {"height": frame_h, "width": frame_w}, "persons": persons, "objects": objects,
            "safety_rated": False}


def result_json(result: FrameResult, masks: bool = True) -> dict[str, Any]:
    """A stream's processed frame as JSON (``cellwatch.result/1``), made where it is sent."""
    return {**detections_json(result.detections, result.classes, masks), "schema": RESULT_SCHEMA,
            "stream_id": result.stream_id, "frame": result.frame, "capture_ts": result.capture_ts,
            "timing": result.timing}


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
    """One engine output (working-size pixels) as JSON, for stateless single frames:
    detections with ``score >= score_thresh`` in the frame's pixels (see
    ``detections_json``). ``frame_size``/``working_size`` are (height, width);
    ``track_ids`` lines up with ``output``'s detections (None: no tracking)."""
    count = len(output.scores)
    if track_ids is not None and len(track_ids) != count:
        raise ValueError(f"{len(track_ids)} track ids for {count} detections")
    detections = detections_from_output(output, frame_size, working_size)
    if track_ids is not None:
        detections = detections.with_track_ids(track_ids)
    return detections_json(detections[detections.scores >= score_thresh], classes, masks)


# --------------------------------------------------------------- overlay
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
            mask = decode_rle(det["mask"])
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
