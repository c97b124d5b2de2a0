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
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from tqdm import tqdm

from .checkpoint import load_model
from .data import load_ytvis, read_frame
from .data.split_args import add_split_arguments, resolve_split_arguments
from .masktrack_rcnn import MaskTrackRCNN
from .tracker import Tracker

MASK_THRESHOLD = 0.5


@dataclass
class TrackResult:
    """One identity's per-frame masks, scores and labels within a video."""

    segmentations: dict[int, dict] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def encode_mask(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


class SupportCache:
    """The FPN features of the last ``size`` frames, stacked for the model."""

    def __init__(self, size: int) -> None:
        self.frames: deque[list[torch.Tensor]] = deque(maxlen=size)

    def features(self) -> list[torch.Tensor] | None:
        if not self.frames:
            return None
        levels = len(self.frames[0])
        return [torch.stack([f[level] for f in self.frames])[None] for level in range(levels)]

    def push(self, features: list[torch.Tensor]) -> None:
        self.frames.append(features)  # a size-0 cache keeps nothing


def run_video(
    model: MaskTrackRCNN,
    frame_paths: list[Path],
    support_frames: int,
    tracker: Tracker | None,
    device: torch.device,
) -> dict[int, TrackResult]:
    """Online over one video; ``tracker=None`` makes every detection its own track."""
    cache = SupportCache(support_frames)
    tracks: dict[int, TrackResult] = {}
    next_id = 0
    for index, path in enumerate(frame_paths):
        image = torch.from_numpy(read_frame(path)).permute(2, 0, 1).float().div_(255).to(device)
        out = model([image], support_features=cache.features())[0]
        cache.push(out["cache_features"])
        scores = out["scores"].cpu().numpy()
        labels = out["labels"].cpu().numpy()
        if tracker is not None:
            ids = tracker.update(
                out["embeddings"].cpu().numpy(), out["boxes"].cpu().numpy(), labels, scores
            )
        else:
            ids = np.arange(next_id, next_id + len(scores))
            next_id += len(scores)
        masks = (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy()
        for track_id, mask, score, label in zip(ids.tolist(), masks, scores, labels):
            track = tracks.setdefault(track_id, TrackResult())
            track.segmentations[index] = encode_mask(mask)
            track.scores.append(float(score))
            track.labels.append(int(label))
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
    p.add_argument("--support-frames", type=int, default=2, help="past frames for Temporal RoI Align (T)")
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
