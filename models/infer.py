"""Inference: ``python -m models.infer --weights CKPT --data DIR --out results.json [--zip]``.

Runs a trained MaskTrackRCNN online over every video of a YouTube-VIS-format
split, frame by frame: each frame sees the FPN features of its last T frames
(the support cache for Temporal RoI Align), and the tracker turns embeddings
into identities. Writes the official submission format: a list of
``{video_id, category_id, score, segmentations}``, one per track, with the
score the mean of its frame scores, the category the majority of its frame
labels, and one compressed RLE (or null) per frame of the video.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import load_model
from .data import load_ytvis, read_frame
from .data.split_args import add_split_arguments, resolve_split_arguments
from .defaults import DEFAULT_SUPPORT_FRAMES
from .masks import MASK_THRESHOLD, encode_rle
from .masktrack_rcnn import MaskTrackRCNN
from .presets import ROI_STRIDES
from .stream_step import FrameInput, FrameOutput, StreamStep
from .tracker import Tracker


@dataclass
class TrackResult:
    """One identity's per-frame masks, scores and labels within a video."""

    segmentations: dict[int, dict] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


class EagerEngine:
    """A trained MaskTrackRCNN behind ``models.stream_step.FrameEngine``, in eager
    PyTorch: the model resizes frames itself, so the input size is the frame's,
    and it returns binary masks at frame size instead of per-box probabilities."""

    def __init__(self, model: MaskTrackRCNN, frame_hw: tuple[int, int], support_frames: int,
                 device: torch.device) -> None:
        self.model = model
        self.device = device
        self._input_size = (int(frame_hw[0]), int(frame_hw[1]))
        self._support_frames = int(support_frames)
        self._levels = len(ROI_STRIDES)  # the FPN levels the RoI heads pool from, one cache entry each

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def support_frames(self) -> int:
        return self._support_frames

    @property
    def cache_shapes(self) -> list[tuple[int, int, int]]:
        return [(0, 0, 0)] * self._levels  # sizes unknown until the first frame; only the count is read

    def empty_cache(self) -> list[np.ndarray]:
        return [np.zeros((0, 0, 0, 0), np.float32) for _ in range(self._levels)]

    def infer(self, batch: list[FrameInput]) -> list[FrameOutput]:
        return [self._infer_one(item) for item in batch]

    def _infer_one(self, item: FrameInput) -> FrameOutput:
        image = torch.from_numpy(item.image).to(self.device)
        support = None
        if item.cache and len(item.cache[0]):
            support = [torch.from_numpy(level)[None].to(self.device) for level in item.cache]
        out = self.model([image], support_features=support)[0]
        return FrameOutput(
            boxes=out["boxes"].cpu().numpy(),
            scores=out["scores"].cpu().numpy(),
            labels=out["labels"].cpu().numpy().astype(np.int64),
            mask_probs=None,
            masks=(out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy(),
            embeddings=out["embeddings"].cpu().numpy(),
            features=[f.cpu().numpy() for f in out["cache_features"]],
        )


def run_video(
    model: MaskTrackRCNN,
    frame_paths: list[Path],
    support_frames: int,
    tracker: Tracker | None,
    device: torch.device,
) -> dict[int, TrackResult]:
    """Online over one video through the per-stream step; ``tracker=None`` makes
    every detection its own track."""
    tracks: dict[int, TrackResult] = {}
    step: StreamStep | None = None
    next_id = 0
    for index, path in enumerate(frame_paths):
        frame_bgr = np.ascontiguousarray(read_frame(path)[:, :, ::-1])
        if step is None:  # the model's own score threshold already applied: keep all it returns
            step = StreamStep(EagerEngine(model, frame_bgr.shape[:2], support_frames, device), tracker, 0.0)
        detections = step(frame_bgr)
        ids = detections.track_ids
        if ids is None:
            ids = np.arange(next_id, next_id + len(detections))
            next_id += len(detections)
        for row, track_id in enumerate(ids.tolist()):
            track = tracks.setdefault(track_id, TrackResult())
            track.segmentations[index] = encode_rle(detections.mask(row))
            track.scores.append(float(detections.scores[row]))
            track.labels.append(int(detections.labels[row]))
    return tracks


def submission_entries(video_id: int, length: int, tracks: dict[int, TrackResult], category_ids: list[int]) -> list[dict]:
    entries = []
    for track in tracks.values():
        # Majority vote; ties go to the label seen first.
        label = Counter(track.labels).most_common(1)[0][0]
        entries.append(
            {
                "video_id": video_id,
                "category_id": category_ids[label - 1],
                "score": float(np.mean(track.scores)),
                "segmentations": [track.segmentations.get(t) for t in range(length)],
            }
        )
    return entries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, required=True, help="checkpoint from models.train")
    add_split_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="results JSON to write")
    p.add_argument("--zip", action="store_true", help="also write the submission zip (results.json inside)")
    p.add_argument("--support-frames", type=int, default=DEFAULT_SUPPORT_FRAMES, help="past frames for Temporal RoI Align (T)")
    p.add_argument("--no-tracking", action="store_true", help="every detection is a new object (ablation)")
    p.add_argument("--max-age", type=int, help="tracker forgets tracks unmatched this many frames")
    p.add_argument("--score-thresh", type=float, help="detection score threshold (default: the model's, 0.05)")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    resolve_split_arguments(p, args)
    if args.support_frames < 0:
        p.error("--support-frames must be >= 0")
    return args


def infer(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, payload = load_model(args.weights)
    model.to(device).eval()
    if args.score_thresh is not None:
        model.roi_heads.score_thresh = args.score_thresh
    category_ids = [c["id"] for c in payload["categories"]]
    annotations = load_ytvis(args.ann)
    dataset_ids = [c["id"] for c in annotations.categories]
    if dataset_ids and dataset_ids != category_ids:
        raise ValueError(f"{args.ann}: categories {dataset_ids} differ from the model's {category_ids}")

    results: list[dict] = []
    videos = annotations.videos
    frames = sum(v.length for v in videos)
    with tqdm(total=frames, desc="infer", unit="frame", dynamic_ncols=True) as bar:
        for video in videos:
            tracker = None if args.no_tracking else Tracker(max_age=args.max_age)
            tracks = run_video(model, video.frame_paths(args.images), args.support_frames, tracker, device)
            results.extend(submission_entries(video.id, video.length, tracks, category_ids))
            bar.update(video.length)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results))
    if args.zip:
        with zipfile.ZipFile(args.out.with_suffix(".zip"), "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(args.out, "results.json")
    print(f"infer: {len(videos)} videos, {frames} frames, {len(results)} tracks -> {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return infer(parse_args(argv))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
