"""Accuracy and CPU speed of an exported person model on held-out, auto-labelled frames.

Usage: python bench/bench_person_model.py --ann HELDOUT/instances.json [--images DIR]
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
import time
from pathlib import Path

import bench_common
import numpy as np
from tqdm import tqdm

from models.data import load_ytvis
from models.data.ytvis import decode_mask, read_frame
from models.detections import Detections
from models.geometry import box_iou
from models.masks import encode_rle
from models.stream_step import StreamStep
from models.tracker import Tracker
from models.ytvis_eval import evaluate_results
from service.config import PipelineSettings
from service.engines import create_engine
from service.shipped_model import SHIPPED_MODEL

log = bench_common.logger("person_model")
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


class Scores:
    """Per-frame agreement with the labels, accumulated over the run."""

    def __init__(self, score: float, min_height: float, length: int) -> None:
        self.score, self.min_height, self.length = score, min_height, length
        self.sweep = {t: [0, 0, 0] for t in SWEEP}  # true positives, labelled, counted detections
        self.mask_ious: list[float] = []
        self.last_track: dict[int, int] = {}
        self.switches = 0
        self.tracks: dict[int, dict] = {}

    def _tall(self, boxes: np.ndarray) -> np.ndarray:
        return (boxes[:, 3] - boxes[:, 1]) >= self.min_height

    def add(self, index: int, labelled: list, truth_mask, every: Detections, persons: Detections,
            person_masks: list[np.ndarray]) -> None:
        """One frame: ``every`` detection (the sweep reaches below the operating
        threshold) and the tracked ``persons`` at it, against the ``labelled`` people."""
        gt_boxes = np.array([i.box for i in labelled], np.float64).reshape(-1, 4)
        gt_tall = self._tall(gt_boxes)
        for threshold in SWEEP:
            tp, positives, counted, _ = frame_counts(gt_boxes, gt_tall, every.boxes, every.scores,
                                                     self._tall(every.boxes), threshold)
            for k, value in enumerate((tp, positives, counted)):
                self.sweep[threshold][k] += value
        _, _, _, matched = frame_counts(gt_boxes, gt_tall, persons.boxes, persons.scores, self._tall(persons.boxes),
                                        self.score)
        for d, g in matched.items():
            if gt_tall[g]:
                self._matched(labelled[g].annotation_id, truth_mask(labelled[g]), person_masks[d], persons.track_id(d))
        for d in range(len(persons)):
            entry = self.tracks.setdefault(persons.track_id(d), {"scores": [], "segmentations": [None] * self.length})
            entry["scores"].append(round(float(persons.scores[d]), 4))
            entry["segmentations"][index] = encode_rle(person_masks[d])

    def _matched(self, person: int, truth: np.ndarray, predicted: np.ndarray, track_id: int | None) -> None:
        union = np.logical_or(truth, predicted).sum()
        self.mask_ious.append(float(np.logical_and(truth, predicted).sum() / union) if union else 0.0)
        if person in self.last_track and self.last_track[person] != track_id:
            self.switches += 1
        self.last_track[person] = track_id


def _ground_truth(ann: Path, length: int, video_length: int) -> dict:
    """The annotation file, cut to the frames that ran."""
    gt = json.loads(ann.read_text(encoding="utf-8"))
    if length < video_length:
        gt["videos"][0]["length"] = length
        gt["videos"][0]["file_names"] = gt["videos"][0]["file_names"][:length]
        for entry in gt["annotations"]:
            for key in ("segmentations", "bboxes", "areas"):
                entry[key] = entry[key][:length]
        gt["annotations"] = [a for a in gt["annotations"] if any(s is not None for s in a["segmentations"])]
    return gt


def run(args: argparse.Namespace) -> dict:
    if args.score not in SWEEP:
        raise SystemExit(f"error: --score must be one of {SWEEP}")
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
    step = StreamStep(engine, tracker, args.score)  # the service's step, threshold and all
    scores = Scores(args.score, args.min_height, length)
    engine_ms, step_ms = [], []

    def truth_mask(instance) -> np.ndarray:
        return decode_mask(instance.segmentation, video.height, video.width).astype(bool)

    for index in tqdm(range(length), desc="person_model", unit="frame", dynamic_ncols=True):
        frame_bgr = np.ascontiguousarray(read_frame(images / video.file_names[index], video.id)[:, :, ::-1])
        started = time.perf_counter()
        item = step.prepare(frame_bgr)
        called = time.perf_counter()
        output = engine.infer([item])[0]
        returned = time.perf_counter()
        persons = step.finish(frame_bgr.shape[:2], output)
        person_masks = [persons.mask(i) for i in range(len(persons))]
        finished = time.perf_counter()
        if index >= args.warmup:
            engine_ms.append((returned - called) * 1000.0)
            step_ms.append((finished - started) * 1000.0)
        scores.add(index, annotations.frame_instances(video.id, index), truth_mask, step.last_all, persons,
                   person_masks)
    engine.close()
    return _report(args, annotations, video, length, engine, scores, engine_ms, step_ms)


def _report(args, annotations, video, length, engine, scores: Scores, engine_ms, step_ms) -> dict:
    results = [
        {"video_id": video.id, "category_id": annotations.category_ids[0], "score": float(np.mean(t["scores"])),
         "segmentations": t["segmentations"]}
        for t in scores.tracks.values()
    ]
    ytvis = evaluate_results(_ground_truth(Path(args.ann), length, video.length), results) if results else None
    if args.results:
        args.results.write_text(json.dumps(results), encoding="utf-8")

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 4) if b else None

    def stats(values: list[float]) -> dict:
        return bench_common.summary(values, ("median", "mean", "p90"), digits=1)

    tp, positives, counted = scores.sweep[args.score]
    return {
        "model": str(args.model),
        "annotations": str(args.ann),
        "frames": length,
        "support_frames": engine.support_frames,
        "working_size": list(engine.input_size),
        "score_thresh": args.score,
        "min_height": args.min_height,
        "ytvis": {k: round(v, 4) for k, v in ytvis.items()} if ytvis else None,
        "frame": {
            "recall": ratio(tp, positives), "precision": ratio(tp, counted),
            "labelled_people": positives, "detections": counted, "true_positives": tp,
            "mean_mask_iou": round(float(np.mean(scores.mask_ious)), 4) if scores.mask_ious else None,
        },
        "id_switches": scores.switches,
        "id_switches_per_100_frames": round(100.0 * scores.switches / length, 2),
        "tracks": len(scores.tracks),
        "labelled_tracks": len({i.annotation_id for f in range(length) for i in annotations.frame_instances(video.id, f)}),
        "sweep": [{"score": t, "recall": ratio(v[0], v[1]), "precision": ratio(v[0], v[2])}
                  for t, v in scores.sweep.items()],
        "speed_ms": {"engine": stats(engine_ms), "step": stats(step_ms), "warmup_frames": args.warmup},
        "safety_rated": False,
    }


def main(argv: list[str] | None = None) -> int:
    p = bench_common.parser(__file__, __doc__)
    p.add_argument("--ann", required=True, type=Path, help="held-out YouTube-VIS annotations (one video)")
    p.add_argument("--images", type=Path, help="image root (default: ANN's folder/JPEGImages)")
    p.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="exported .onnx (its sidecar .json beside it; "
                                                                     "default: the shipped model, `make model`)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--score", type=float, default=0.5, help=f"operating score threshold, one of {SWEEP}")
    p.add_argument("--min-height", type=float, default=40.0, help="px; smaller labelled people are ignored")
    p.add_argument("--max-frames", type=int, help="only the first N frames")
    p.add_argument("--warmup", type=int, default=3, help="frames left out of the timings")
    p.add_argument("--results", type=Path, help="also write the tracks as a YouTube-VIS results file")
    args = p.parse_args(argv)
    for path, what in ((args.ann, "annotation file"), (args.model, "model")):
        if not path.is_file():
            p.error(f"{what} {path} not found")
    if args.out is not None and args.out.resolve() == args.model.resolve().with_suffix(".json"):
        p.error(f"--out {args.out} is the model's sidecar; choose another file")
    started = time.perf_counter()
    report = {"benchmark": "person_model", "command": bench_common.command(__file__, argv),
              "machine": bench_common.machine(device="cpu", engine="onnxruntime", ort_intra_op_threads=args.threads),
              **run(args)}
    bench_common.finish(report, started)
    bench_common.emit(report, args.out)
    frame, speed = report["frame"], report["speed_ms"]["step"]
    log(f"summary: {report['frames']} frames, recall {frame['recall']}, precision {frame['precision']}, "
        f"mask IoU {frame['mean_mask_iou']}, {report['id_switches']} id switches, "
        f"step median {speed['median']} ms; {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
