"""Accuracy and CPU speed of an exported person model on held-out, auto-labelled frames.

Usage: python bench/person_model.py --ann HELDOUT/instances.json [--images DIR]
           [--model M.onnx] [--threads 2] [--score 0.5] [--min-height 40]
           [--max-frames N] [--out FILE]

The model runs as the service runs it: ONNX Runtime on the CPU (``--threads``),
each frame resized to the model's working size, the last T frames' features
as its support cache (models with Temporal RoI Align), detections at or above
``--score`` kept and associated by the tracker (``models.tracker.Tracker``
with the service's settings, motion gate included), masks pasted at frame size. Frames are fed in order,
one at a time, with no frame dropped.

Printed as JSON (and written to ``--out``):

* ``ytvis``: the 12 YouTube-VIS figures (AP, AP50, ...) of the tracks as a
  results file, scored against the annotation file by ``models.ytvis_eval``;
* ``frame``: per-frame person detection at box IoU 0.5 (greedy, by score)
  for labelled people at least ``--min-height`` px tall: recall, precision,
  mean mask IoU of the matched pairs. Smaller labelled people are ignored
  (a detection matched to one is neither right nor wrong), as are unmatched
  detections shorter than ``--min-height``;
* ``id_switches`` (and per 100 frames): a labelled person whose matched
  track id differs from the one it last matched;
* ``sweep``: recall and precision at other score thresholds;
* ``speed_ms``: per-frame wall time of the engine call alone and of the whole
  step (resize, engine, tracker, masks), median, mean and p90, without the
  first ``--warmup`` frames.

The annotations are the teacher's (``python -m models.autolabel``): the
figures measure agreement with the teacher, not with human ground truth.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from export.ort_runtime import prepare_frame  # noqa: E402
from models.data import load_ytvis  # noqa: E402
from models.data.ytvis import decode_mask, read_frame  # noqa: E402
from models.geometry import box_iou  # noqa: E402
from models.tracker import Tracker  # noqa: E402
from models.ytvis_eval import evaluate_results  # noqa: E402
from service.config import PipelineSettings  # noqa: E402
from service.engines import FrameInput, create_engine  # noqa: E402
from service.results import frame_result  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "weights" / "person-lite.onnx"
SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def match_frame(gt_boxes: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray, iou: float = 0.5) -> dict[int, int]:
    """Greedy by score: detection index -> labelled index, at box IoU >= ``iou``."""
    pairs: dict[int, int] = {}
    if not len(gt_boxes) or not len(det_boxes):
        return pairs
    ious = box_iou(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    for d in np.argsort(-det_scores, kind="stable"):
        candidates = np.where(taken, -1.0, ious[d])
        g = int(np.argmax(candidates))
        if candidates[g] >= iou:
            pairs[int(d)] = g
            taken[g] = True
    return pairs


def frame_counts(gt_boxes, gt_tall, det_boxes, det_scores, det_tall, threshold):
    """(true positives, labelled tall people, counted detections, matched pairs) at a score threshold."""
    keep = det_scores >= threshold
    index = np.nonzero(keep)[0]
    pairs = match_frame(gt_boxes, det_boxes[keep], det_scores[keep])
    matched = {int(index[d]): g for d, g in pairs.items()}
    tp = sum(1 for g in matched.values() if gt_tall[g])
    counted = sum(1 for d in index if (d in matched and gt_tall[matched[d]]) or (d not in matched and det_tall[d]))
    return tp, int(gt_tall.sum()), counted, matched


def run(args: argparse.Namespace) -> dict:
    annotations = load_ytvis(args.ann)
    images = Path(args.images) if args.images else Path(args.ann).parent / "JPEGImages"
    if len(annotations.videos) != 1:
        raise SystemExit(f"error: {args.ann}: expected one video, found {len(annotations.videos)}")
    video = annotations.videos[0]
    length = min(video.length, args.max_frames or video.length)
    engine = create_engine("onnxruntime", args.model, threads=args.threads)
    defaults = PipelineSettings()  # the service's tracker settings
    tracker = Tracker(max_age=defaults.max_track_age, max_tracks=defaults.max_tracks,
                      motion_gate=defaults.track_motion_gate)
    support = engine.support_frames
    cache = [deque(maxlen=support) for _ in engine.cache_shapes] if support else []
    engine_ms, step_ms = [], []
    tracks: dict[int, dict] = {}
    sweep = {t: [0, 0, 0] for t in SWEEP}
    mask_ious: list[float] = []
    last_track: dict[int, int] = {}
    switches = 0
    for index in range(length):
        rgb = read_frame(images / video.file_names[index], video.id)
        frame_bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        started = time.perf_counter()
        image = prepare_frame(frame_bgr, engine.input_size)
        if support:
            levels = [np.stack(level) if level else empty for level, empty in zip(cache, engine.empty_cache())]
        else:
            levels = engine.empty_cache()
        called = time.perf_counter()
        output = engine.infer([FrameInput(image, levels)])[0]
        returned = time.perf_counter()
        keep = output.scores >= min(args.score, min(SWEEP))
        kept = type(output)(output.boxes[keep], output.scores[keep], output.labels[keep], output.mask_probs[keep],
                            output.embeddings[keep], output.features)
        for level, feature in zip(cache, output.features):
            level.append(np.array(feature, dtype=np.float32, copy=True))
        tracked = kept.scores >= args.score
        ids = np.full(len(kept.scores), -1, np.int64)
        ids[tracked] = tracker.update(kept.embeddings[tracked], kept.boxes[tracked], kept.labels[tracked],
                                      kept.scores[tracked])
        result = frame_result(kept, [int(i) for i in ids], engine.classes, rgb.shape[:2], engine.input_size,
                              score_thresh=min(args.score, min(SWEEP)))
        finished = time.perf_counter()
        if index >= args.warmup:
            engine_ms.append((returned - called) * 1000.0)
            step_ms.append((finished - started) * 1000.0)

        persons = result["persons"]
        det_boxes = np.array([p["box"] for p in persons], np.float64).reshape(-1, 4)
        det_scores = np.array([p["score"] for p in persons], np.float64)
        det_tall = (det_boxes[:, 3] - det_boxes[:, 1]) >= args.min_height
        labelled = annotations.frame_instances(video.id, index)
        gt_boxes = np.array([i.box for i in labelled], np.float64).reshape(-1, 4)
        gt_tall = (gt_boxes[:, 3] - gt_boxes[:, 1]) >= args.min_height
        for threshold in SWEEP:
            tp, positives, counted, _ = frame_counts(gt_boxes, gt_tall, det_boxes, det_scores, det_tall, threshold)
            sweep[threshold][0] += tp
            sweep[threshold][1] += positives
            sweep[threshold][2] += counted
        _, _, _, matched = frame_counts(gt_boxes, gt_tall, det_boxes, det_scores, det_tall, args.score)
        for d, g in matched.items():
            if not gt_tall[g]:
                continue
            truth = decode_mask(labelled[g].segmentation, video.height, video.width).astype(bool)
            predicted = mask_utils.decode(persons[d]["mask"]).astype(bool)
            union = np.logical_or(truth, predicted).sum()
            mask_ious.append(float(np.logical_and(truth, predicted).sum() / union) if union else 0.0)
            track_id = persons[d]["track_id"]
            person = labelled[g].annotation_id
            if person in last_track and last_track[person] != track_id:
                switches += 1
            last_track[person] = track_id
        for person in persons:
            if person["score"] < args.score:
                continue
            entry = tracks.setdefault(person["track_id"], {"scores": [], "segmentations": [None] * length})
            entry["scores"].append(person["score"])
            entry["segmentations"][index] = person["mask"]
    engine.close()

    results = [
        {"video_id": video.id, "category_id": annotations.category_ids[0], "score": float(np.mean(t["scores"])),
         "segmentations": t["segmentations"]}
        for t in tracks.values()
    ]
    gt = json.loads(Path(args.ann).read_text(encoding="utf-8"))
    if length < video.length:  # score the frames that ran
        gt["videos"][0]["length"] = length
        gt["videos"][0]["file_names"] = gt["videos"][0]["file_names"][:length]
        for ann in gt["annotations"]:
            for key in ("segmentations", "bboxes", "areas"):
                ann[key] = ann[key][:length]
        gt["annotations"] = [a for a in gt["annotations"] if any(s is not None for s in a["segmentations"])]
    ytvis = evaluate_results(gt, results) if results else None
    if args.results:
        args.results.write_text(json.dumps(results), encoding="utf-8")

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    tp, positives, counted = sweep[args.score] if args.score in sweep else (None, None, None)
    if tp is None:
        raise SystemExit(f"error: --score must be one of {SWEEP}")

    def stats(values: list[float]) -> dict:
        if not values:
            return {}
        return {"median": round(float(np.median(values)), 1), "mean": round(float(np.mean(values)), 1),
                "p90": round(float(np.percentile(values, 90)), 1)}

    return {
        "bench": "person_model",
        "model": str(args.model),
        "annotations": str(args.ann),
        "frames": length,
        "machine": {"cpu_threads": args.threads, "platform": platform.platform(), "python": platform.python_version()},
        "support_frames": support,
        "working_size": list(engine.input_size),
        "score_thresh": args.score,
        "min_height": args.min_height,
        "ytvis": {k: round(v, 4) for k, v in ytvis.items()} if ytvis else None,
        "frame": {
            "recall": ratio(tp, positives), "precision": ratio(tp, counted),
            "labelled_people": positives, "detections": counted, "true_positives": tp,
            "mean_mask_iou": round(float(np.mean(mask_ious)), 4) if mask_ious else None,
        },
        "id_switches": switches,
        "id_switches_per_100_frames": round(100.0 * switches / length, 2),
        "tracks": len(tracks),
        "labelled_tracks": len({i.annotation_id for f in range(length) for i in annotations.frame_instances(video.id, f)}),
        "sweep": [{"score": t, "recall": ratio(v[0], v[1]), "precision": ratio(v[0], v[2])} for t, v in sweep.items()],
        "speed_ms": {"engine": stats(engine_ms), "step": stats(step_ms), "warmup_frames": args.warmup},
        "safety_rated": False,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/person_model.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", required=True, type=Path, help="held-out YouTube-VIS annotations (one video)")
    p.add_argument("--images", type=Path, help="image root (default: ANN's folder/JPEGImages)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported .onnx (its sidecar .json beside it)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--score", type=float, default=0.5, help=f"operating score threshold, one of {SWEEP}")
    p.add_argument("--min-height", type=float, default=40.0, help="px; smaller labelled people are ignored")
    p.add_argument("--max-frames", type=int, help="only the first N frames")
    p.add_argument("--warmup", type=int, default=3, help="frames left out of the timings")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--results", type=Path, help="also write the tracks as a YouTube-VIS results file")
    args = p.parse_args(argv)
    for path, what in ((args.ann, "annotation file"), (args.model, "model")):
        if not path.is_file():
            p.error(f"{what} {path} not found")
    if args.out is not None and args.out.resolve() == args.model.resolve().with_suffix(".json"):
        p.error(f"--out {args.out} is the model's sidecar; choose another file")
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
