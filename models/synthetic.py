"""Synthetic video instance segmentation data in the YouTube-VIS 2021 per-split layout.

Owns the scene generator behind ``python -m models.synthetic`` and ``generate()``: textured
shapes (each class its own outline *and* texture family, each instance its own colours) over
a textured, cluttered background, moving at near-constant velocity, growing or shrinking,
entering and leaving the frame, occluding each other by depth order. Every video plants one
same-class pair whose paths cross, so identity must come from appearance and motion.

Writes ``DIR/JPEGImages/<video>/<frame:05d>.jpg`` and ``DIR/instances.json`` with
uncompressed column-major RLE masks, as the official train JSON stores them.
Numpy, OpenCV and pycocotools only (no torch), so data can be made anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

JPEG_QUALITY = 90
MIN_VISIBLE_AREA = 16  # visible parts smaller than this are neither drawn nor annotated
MAX_SCENE_ATTEMPTS = 100
_GOLDEN = 0.6180339887  # hue step that keeps the instances of a video apart in colour

Mask = np.ndarray  # (H, W) bool


# --- classes: outline (unit polygon inside the unit circle) + texture in object coordinates ---

def _outline(kind: str, aspect: float) -> np.ndarray:
    """(N, 2) polygon inside the unit circle, so one radius bounds every class."""
    def ring(n: int, radius: np.ndarray | float = 1.0, squash: float = 1.0) -> np.ndarray:
        theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False) - np.pi / 2
        return np.stack([radius * np.cos(theta), squash * radius * np.sin(theta)], axis=1)
    if kind == "ellipse":
        return ring(48, squash=aspect)
    if kind == "rectangle":
        a, b = 1 / math.hypot(1, aspect), aspect / math.hypot(1, aspect)  # corners on the circle
        return np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
    if kind == "star":
        return ring(10, radius=np.where(np.arange(10) % 2 == 0, 1.0, 0.45))
    if kind == "cross":
        w, a = 0.3, math.sqrt(1 - 0.3**2)  # arm half-width; arm ends touch the circle
        return np.array([[a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w],
                         [-a, w], [-a, -w], [-w, -w], [-w, -a], [w, -a], [w, -w]])
    return ring({"triangle": 3, "hexagon": 6}[kind])


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, freq: float, phase: float) -> np.ndarray:
    """Texture value in [0, 1] at object coordinates (u, v), measured in radii."""
    a, b = freq * u + phase, freq * v + phase
    if kind == "rings":
        return 0.5 + 0.5 * np.cos(2 * np.pi * (freq * np.hypot(u, v) + phase))
    if kind == "stripes":
        return (a % 1.0 < 0.5).astype(np.float64)
    if kind == "checker":
        return ((np.floor(a) + np.floor(b)) % 2).astype(np.float64)
    if kind == "dots":
        return (np.hypot(a % 1.0 - 0.5, b % 1.0 - 0.5) < 0.3).astype(np.float64)
    if kind == "diagonal":
        return ((0.7071 * (a + b)) % 1.0 < 0.5).astype(np.float64)
    return 0.5 + 0.5 * np.cos(round(2 * freq + 2) * np.arctan2(v, u) + 2 * np.pi * phase)  # spokes


@dataclass(frozen=True)
class ShapeClass:
    name: str
    outline: str  # a kind of _outline
    pattern: str  # a kind of _pattern


CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass("disc", "ellipse", "rings"),
    ShapeClass("block", "rectangle", "stripes"),
    ShapeClass("star", "star", "checker"),
    ShapeClass("triangle", "triangle", "dots"),
    ShapeClass("cross", "cross", "diagonal"),
    ShapeClass("hexagon", "hexagon", "spokes"),
)

# Accepted (lowest, highest) values; below 64x48 or 4 frames the planted events no longer fit.
LIMITS: dict[str, tuple[int, int | None]] = {
    "videos": (1, None), "seed": (0, None), "frames": (4, None),
    "width": (64, None), "height": (48, None), "classes": (1, len(CLASSES)),
}


# --- one moving object ---

@dataclass(frozen=True)
class Track:
    category_id: int  # 1-based index into CLASSES
    outline: np.ndarray  # (N, 2) unit polygon, aspect applied
    colours: np.ndarray  # (2, 3) BGR ends of the texture ramp
    frequency: float  # texture cycles per radius
    phase: float
    start: np.ndarray  # centre at frame 0, pixels
    velocity: np.ndarray  # pixels per frame
    wobble: np.ndarray  # (3, 2): amplitude, cycles per frame, phase for x and y
    radius: float  # at frame 0, pixels
    growth: float  # log of the radius ratio between the last and the first frame
    angle: float
    spin: float  # radians per frame
    span: int  # frames - 1

    def centre(self, t: int) -> np.ndarray:
        amplitude, freq, phase = self.wobble
        return self.start + self.velocity * t + amplitude * np.sin(2 * np.pi * (freq * t + phase))

    def radius_at(self, t: int) -> float:
        return self.radius * math.exp(self.growth * t / self.span)

    def _rotation(self, t: int) -> np.ndarray:
        a = self.angle + self.spin * t
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    def polygon(self, t: int) -> np.ndarray:
        return self.outline @ self._rotation(t).T * self.radius_at(t) + self.centre(t)

    def texture(self, xs: np.ndarray, ys: np.ndarray, t: int) -> np.ndarray:
        """BGR colours of the pixels (xs, ys); the texture moves, turns and scales with the object."""
        offsets = np.stack([xs, ys], axis=1) - self.centre(t)
        local = offsets @ self._rotation(t) / self.radius_at(t)  # inverse rotation
        kind = CLASSES[self.category_id - 1].pattern
        value = _pattern(kind, local[:, 0], local[:, 1], self.frequency, self.phase)
        return self.colours[0] + (self.colours[1] - self.colours[0]) * value[:, None]


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    frames: int
    background: np.ndarray  # (H, W, 3) uint8 BGR
    tracks: list[Track]  # annotation order; tracks 0 and 1 are the planted crossing pair
    depth: list[int]  # track indices, front first


def _rasterise(polygon: np.ndarray, height: int, width: int) -> Mask:
    canvas = np.zeros((height, width), np.uint8)
    # 4 fractional bits: sub-pixel motion stays smooth instead of snapping to the grid.
    cv2.fillPoly(canvas, [np.rint(polygon * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def visible_masks(scene: Scene, t: int) -> list[Mask | None]:
    """Per track, the pixels it shows at frame t after clipping and occlusion; None if too few."""
    masks: list[Mask | None] = [None] * len(scene.tracks)
    occupied = np.zeros((scene.height, scene.width), bool)
    for index in scene.depth:
        visible = _rasterise(scene.tracks[index].polygon(t), scene.height, scene.width) & ~occupied
        # A sliver is not drawn either, so it must not hide what lies behind it.
        if visible.sum() >= MIN_VISIBLE_AREA:
            masks[index] = visible
            occupied |= visible
    return masks


def render_frame(scene: Scene, t: int, masks: list[Mask | None]) -> np.ndarray:
    """BGR uint8 frame: background everywhere except the (disjoint) visible masks."""
    image = scene.background.copy()
    for track, mask in zip(scene.tracks, masks):
        if mask is not None:
            ys, xs = np.nonzero(mask)
            colours = track.texture(xs.astype(np.float64), ys.astype(np.float64), t)
            image[ys, xs] = np.clip(np.rint(colours), 0, 255).astype(np.uint8)
    return image


# --- sampling ---

def _hsv_to_bgr(hsv: list[list[float]]) -> np.ndarray:
    pixels = np.array([hsv], np.float32).round().clip(0, 255).astype(np.uint8)
    return cv2.cvtColor(pixels, cv2.COLOR_HSV2BGR)[0].astype(np.float64)


def _clutter_shape(rng: np.random.Generator, height: int, width: int) -> Mask:
    layer = np.zeros((height, width), np.uint8)
    corner = (int(rng.integers(width)), int(rng.integers(height)))
    size = max(2, int(rng.uniform(0.03, 0.2) * min(height, width)))
    thickness = -1 if rng.random() < 0.5 else int(rng.integers(1, 4))
    kind = int(rng.integers(3))
    if kind == 0:
        cv2.circle(layer, corner, size, 1, thickness)
    elif kind == 1:
        cv2.rectangle(layer, corner, (corner[0] + size, corner[1] + int(size * rng.uniform(0.3, 2))), 1, thickness)
    else:
        cv2.line(layer, corner, (int(rng.integers(width)), int(rng.integers(height))), 1, max(1, thickness))
    return layer.astype(bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    ends = _hsv_to_bgr([[rng.uniform(0, 180), rng.uniform(0, 60), rng.uniform(70, 190)] for _ in range(2)])
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
    image = ends[0] + (ends[1] - ends[0]) * ramp[..., None]
    # Blotches, so that no region is flat enough to be learned as "not an object" by colour alone.
    coarse = rng.normal(0, 12, (max(2, height // 24), max(2, width // 24), 3)).astype(np.float32)
    image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    # Low-contrast untextured clutter: edges and blobs the detector has to learn to ignore.
    for _ in range(int(rng.integers(6, 15))):
        image[_clutter_shape(rng, height, width)] += rng.uniform(-30, 30, 3)
    image = cv2.GaussianBlur(image.astype(np.float32), (3, 3), 0) + rng.normal(0, 3, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _free_motion(rng: np.random.Generator, width: int, height: int, radius: float, speed: float,
                 span: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and velocity of an object that stays inside, enters or leaves the frame."""
    mode = rng.choice(["stay", "enter", "leave"], p=[0.2, 0.4, 0.4])
    if mode == "stay":
        start = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
        return start, 0.5 * speed * _unit(rng.uniform(0, 2 * np.pi))
    side, along = int(rng.integers(4)), rng.uniform(0.15, 0.85)
    border = [(0, along * height), (width, along * height), (along * width, 0), (along * width, height)][side]
    inward = [0.0, np.pi, np.pi / 2, -np.pi / 2][side]
    heading = inward + (0 if mode == "enter" else np.pi) + rng.uniform(-np.pi / 3, np.pi / 3)
    velocity = speed * _unit(heading)
    t_border = rng.uniform(0.15, 0.6 if mode == "enter" else 0.75) * span  # when the centre crosses the edge
    return np.array(border, float) - velocity * t_border, velocity


def _track(rng, category_id, hue, start, velocity, radius, span) -> Track:
    shape = CLASSES[category_id - 1]
    colours = _hsv_to_bgr([
        [hue, rng.uniform(120, 255), rng.uniform(170, 250)],
        [(hue + rng.uniform(-15, 15)) % 180, rng.uniform(80, 255), rng.uniform(30, 110)],
    ])
    amplitude = rng.uniform(0, 0.08 * radius, 2)  # a few pixels at most: jitter, not a new motion
    wobble = np.stack([amplitude, rng.uniform(0.08, 0.25, 2), rng.uniform(0, 1, 2)])
    growth = rng.choice([-1, 1]) * rng.uniform(0.15, 0.5)
    return Track(
        category_id=category_id, outline=_outline(shape.outline, rng.uniform(0.55, 0.9)), colours=colours,
        frequency=rng.uniform(1.5, 3.0), phase=rng.uniform(0, 1), start=start, velocity=velocity,
        wobble=wobble, radius=radius, growth=float(growth), angle=rng.uniform(0, 2 * np.pi),
        spin=rng.uniform(-0.06, 0.06), span=span,
    )


def _sample_tracks(rng: np.random.Generator, frames: int, width: int, height: int,
                   classes: int) -> tuple[list[Track], list[int]]:
    """Tracks in annotation order (the planted crossing pair first) and their depth order."""
    span, short = frames - 1, min(width, height)
    count = int(rng.integers(2, 6))
    base_hue = rng.uniform(0, 180)
    hues = [(base_hue + 180 * _GOLDEN * i) % 180 for i in range(count)]
    radii = rng.uniform(0.08, 0.16, count) * short
    speeds = rng.uniform(0.4, 1.2, count) * short / span
    # The planted crossing: two instances of one class meet near a point inside the frame.
    crossing_class = int(rng.integers(1, classes + 1))
    meet = np.array([rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height])
    t_meet = rng.uniform(0.35, 0.65) * span
    heading = rng.uniform(0, 2 * np.pi)
    headings = [heading, heading + np.pi + rng.uniform(-0.45, 0.45) * np.pi]
    tracks = []
    for i in range(count):
        if i < 2:
            velocity = speeds[i] * _unit(headings[i])
            offset = rng.uniform(-0.4, 0.4) * radii[i] * _unit(headings[i] + np.pi / 2) if i else 0.0
            start, category = meet + offset - velocity * t_meet, crossing_class
        else:
            start, velocity = _free_motion(rng, width, height, radii[i], speeds[i], span)
            category = int(rng.integers(1, classes + 1))
        tracks.append(_track(rng, category, hues[i], start, velocity, float(radii[i]), span))
    return tracks, [int(i) for i in rng.permutation(count)]


def _boxes_overlap(a: Mask, b: Mask) -> bool:
    (ya, xa), (yb, xb) = np.nonzero(a), np.nonzero(b)
    return xa.min() <= xb.max() and xb.min() <= xa.max() and ya.min() <= yb.max() and yb.min() <= ya.max()


def _acceptable(masks: list[list[Mask | None]]) -> bool:
    """Every track is seen for a while, the planted pair is seen overlapping, and something
    enters or leaves, so that every video asks the tracker to start or end an identity."""
    needed = max(2, len(masks) // 4)
    seen = [sum(frame[i] is not None for frame in masks) for i in range(len(masks[0]))]
    crossed = any(f[0] is not None and f[1] is not None and _boxes_overlap(f[0], f[1]) for f in masks)
    comes_or_goes = any(m is None for m in masks[0] + masks[-1])
    return crossed and comes_or_goes and min(seen) >= needed


def make_scene(seed: int, index: int, frames: int, width: int, height: int,
               classes: int) -> tuple[Scene, list[list[Mask | None]]]:
    """Video ``index`` of dataset ``seed`` and its visible masks [frame][track].

    Seeded by (seed, index), so a video does not depend on how many others are made."""
    rng = np.random.default_rng([seed, index])
    background = _background(rng, height, width)
    for _ in range(MAX_SCENE_ATTEMPTS):  # rejection sampling keeps the guarantees simple to state
        tracks, depth = _sample_tracks(rng, frames, width, height, classes)
        scene = Scene(width, height, frames, background, tracks, depth)
        masks = [visible_masks(scene, t) for t in range(frames)]
        if _acceptable(masks):
            break
    return scene, masks


# --- YouTube-VIS annotations ---

def encode_rle(mask: Mask) -> dict:
    """Uncompressed RLE as the official train JSON stores it: column-major runs, zeros first."""
    flat = np.asarray(mask, bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    counts = ([0] if flat.size and flat[0] else []) + [int(r) for r in runs]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def mask_bbox(mask: Mask) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def video_name(seed: int, index: int) -> str:
    return hashlib.sha1(f"cellwatch-synthetic:{seed}:{index}".encode()).hexdigest()[:10]


def _annotation(ann_id: int, video_id: int, scene: Scene, track_index: int, masks: list[list[Mask | None]]) -> dict:
    per_frame = [frame[track_index] for frame in masks]
    return {
        "id": ann_id, "video_id": video_id, "category_id": scene.tracks[track_index].category_id,
        "iscrowd": 0, "length": 1, "width": scene.width, "height": scene.height,
        "segmentations": [None if m is None else encode_rle(m) for m in per_frame],
        "bboxes": [None if m is None else mask_bbox(m) for m in per_frame],
        "areas": [None if m is None else float(m.sum()) for m in per_frame],
    }


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out_dir} is not empty; pass --overwrite to replace it")
        # Only what this generator writes is removed; anything else in the folder is left alone.
        shutil.rmtree(out_dir / "JPEGImages", ignore_errors=True)
        (out_dir / "instances.json").unlink(missing_ok=True)
    (out_dir / "JPEGImages").mkdir(parents=True, exist_ok=True)


def check_arguments(**values: int) -> tuple[str, str] | None:
    """(name, complaint) for the first value outside LIMITS, or None when all are fine."""
    for name, value in values.items():
        low, high = LIMITS[name]
        if value < low or (high is not None and value > high):
            return name, f"must be {'>= ' + str(low) if high is None else f'in [{low}, {high}]'}, got {value}"
    return None


def _write_video(images_dir: Path, scene: Scene, masks: list[list[Mask | None]], name: str) -> list[str]:
    (images_dir / name).mkdir()
    file_names = [f"{name}/{t:05d}.jpg" for t in range(scene.frames)]
    for t, file_name in enumerate(file_names):
        image = render_frame(scene, t, masks[t])
        if not cv2.imwrite(str(images_dir / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"could not write {images_dir / file_name}")
    return file_names


def generate(out_dir: str | Path, videos: int, seed: int, frames: int = 24, width: int = 320, height: int = 192,
             classes: int = 3, *, overwrite: bool = False, progress: bool = False) -> dict:
    """Write the dataset under ``out_dir`` and return the instances.json dict."""
    settings = {"videos": videos, "seed": seed, "frames": frames, "width": width, "height": height, "classes": classes}
    if problem := check_arguments(**settings):
        raise ValueError(f"{problem[0]} {problem[1]}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    dataset = {
        "info": {"description": "cellwatch synthetic video instance segmentation", "version": "1.0", "year": 2025,
                 "contributor": "cellwatch models.synthetic", "url": "", "date_created": "", "generator": settings},
        "licenses": [{"id": 1, "name": "generated", "url": ""}],
        "videos": [],
        "categories": [{"id": i + 1, "name": c.name, "supercategory": "shape"}
                       for i, c in enumerate(CLASSES[:classes])],
        "annotations": [],
    }
    for index in tqdm(range(videos), desc="synthetic videos", unit="video", disable=not progress, file=sys.stderr):
        scene, masks = make_scene(seed, index, frames, width, height, classes)
        file_names = _write_video(out_dir / "JPEGImages", scene, masks, video_name(seed, index))
        dataset["videos"].append({"id": index + 1, "width": width, "height": height, "length": frames,
                                  "file_names": file_names, "license": 1, "coco_url": "", "flickr_url": "",
                                  "date_captured": ""})
        for track_index in range(len(scene.tracks)):
            if any(frame[track_index] is not None for frame in masks):  # never-visible tracks are not annotated
                ann_id = len(dataset["annotations"]) + 1
                dataset["annotations"].append(_annotation(ann_id, index + 1, scene, track_index, masks))
    (out_dir / "instances.json").write_text(json.dumps(dataset, separators=(",", ":")))
    return dataset


# --- command line ---

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (YouTube-VIS split layout)")
    parser.add_argument("--videos", required=True, type=int)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--classes", type=int, default=3, help=f"1 to {len(CLASSES)}")
    parser.add_argument("--overwrite", action="store_true", help="replace JPEGImages/ and instances.json in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if problem := check_arguments(**{name: getattr(args, name) for name in LIMITS}):
        parser.error(f"argument --{problem[0]}: {problem[1]}")
    try:
        dataset = generate(args.out, args.videos, args.seed, args.frames, args.width, args.height, args.classes,
                           overwrite=args.overwrite, progress=True)
    except FileExistsError as error:
        parser.error(f"argument --out: {error}")
    frames = sum(v["length"] for v in dataset["videos"])
    print(f"synthetic: {len(dataset['videos'])} videos, {frames} frames, {len(dataset['annotations'])} instances, "
          f"{args.classes} classes -> {args.out / 'instances.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
