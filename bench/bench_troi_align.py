"""Time and peak memory of TemporalRoIAlign against a naive full-similarity version.

Usage: python bench/bench_troi_align.py [--out FILE] [--cap-gb 8] [--budget-mb 256]

The frame is 640x360 padded to 640x384, so the FPN levels are P2 160x96,
P3 80x48, P4 40x24 and P5 20x12 with 256 channels; RoIs (seeded) have
square-root areas log-uniform between 24 and 480 pixels and aspect ratios
between 1:3 and 3:1, clipped to the frame. Both versions run inference
(no_grad) with 7x7 output, K = 2 and 4 heads.

The naive version computes, per FPN level, the whole [R_l*49, T*H*W]
similarity at once and gathers the top-k per frame in a Python loop, as
mmtracking does. Each configuration runs in a fresh subprocess: its peak
extra memory is the process's peak RSS (ru_maxrss) after one forward minus
its RSS just before it, inputs and module already built. Prints one JSON
object on stdout; progress and a one-line summary go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor

import bench_common
from models.most_similar import aggregate_frames, roi_chunk_size
from models.temporal_roi_align import TemporalRoIAlign

FRAME_W, FRAME_H = 640, 360
PADDED_H = 384
STRIDES = (4, 8, 16, 32)
CHANNELS = 256
OUTPUT = 7
NUM_MOST_SIMILAR = 2
NUM_HEADS = 4
ROI_COUNTS = (100, 1000)
FRAME_COUNTS = (1, 2, 4)
SEED = 0


def level_sizes() -> list[tuple[int, int]]:
    return [(PADDED_H // s, FRAME_W // s) for s in STRIDES]


def make_rois(count: int, generator: torch.Generator) -> Tensor:
    """Seeded RoIs with a spread of sizes and shapes over the 640x360 frame."""
    scale = torch.empty(count).uniform_(math.log(24.0), math.log(480.0), generator=generator).exp()
    aspect = torch.empty(count).uniform_(-math.log(3.0), math.log(3.0), generator=generator).exp()  # h / w
    width = (scale / aspect.sqrt()).clamp(max=FRAME_W)
    height = (scale * aspect.sqrt()).clamp(max=FRAME_H)
    x1 = torch.rand(count, generator=generator) * (FRAME_W - width)
    y1 = torch.rand(count, generator=generator) * (FRAME_H - height)
    return torch.stack([torch.zeros(count), x1, y1, x1 + width, y1 + height], dim=1)


def make_inputs(num_rois: int, num_frames: int) -> tuple[list[Tensor], Tensor, list[Tensor]]:
    generator = torch.Generator().manual_seed(SEED)
    features = [torch.randn(1, CHANNELS, h, w, generator=generator) for h, w in level_sizes()]
    support = [torch.randn(1, num_frames, CHANNELS, h, w, generator=generator) for h, w in level_sizes()]
    return features, make_rois(num_rois, generator), support


def naive_forward(
    module: TemporalRoIAlign, features: list[Tensor], rois: Tensor, support: list[Tensor]
) -> Tensor:
    """Same result as ``module``, with each level's whole similarity in memory at once."""
    roi_feats = module.roi_align(features, rois)
    num_rois, channels, height, width = roi_feats.shape
    num_frames = support[0].shape[1]
    levels = module.search_levels(rois)
    found_all = roi_feats.new_zeros((num_frames, num_rois, channels, height, width))
    for level, frames in enumerate(support):
        index = torch.nonzero(levels == level).squeeze(1)
        if index.numel() == 0:
            continue
        frames = frames[0]  # the benchmark has one image
        positions = frames.shape[-2] * frames.shape[-1]
        cells = F.normalize(roi_feats[index], dim=1).permute(0, 2, 3, 1).reshape(-1, channels)
        unit = F.normalize(frames, dim=1).transpose(0, 1).reshape(channels, -1)
        similarity = (cells @ unit).view(-1, num_frames, positions)
        values, top = similarity.topk(module.num_most_similar, dim=2)
        weights = values.softmax(dim=2)
        rows = frames.flatten(2).transpose(1, 2)  # [T, P, C]
        per_frame = [(rows[t][top[:, t]] * weights[:, t, :, None]).sum(dim=1) for t in range(num_frames)]
        found = torch.stack(per_frame).view(num_frames, index.numel(), height, width, channels)
        found_all[:, index] = found.permute(0, 1, 4, 2, 3)
    frames_all = torch.cat([roi_feats.unsqueeze(0), found_all], dim=0)
    embedded = module.embed(frames_all.flatten(0, 1)).view(frames_all.shape)
    return aggregate_frames(frames_all, embedded, module.num_heads)


def level_counts(rois: Tensor) -> list[int]:
    module = TemporalRoIAlign(CHANNELS, OUTPUT, STRIDES)
    return torch.bincount(module.search_levels(rois), minlength=len(STRIDES)).tolist()


def naive_bytes_estimate(counts: list[int], num_frames: int) -> int:
    """Largest level's similarity plus its gathered top-k features (float32).

    A lower bound: top-k's workspace and the aggregation come on top (measured
    peaks run about 1.2x this).
    """
    cells = OUTPUT * OUTPUT
    return max(
        n * cells * num_frames * (h * w + 2 * NUM_MOST_SIMILAR * CHANNELS) * 4
        for n, (h, w) in zip(counts, level_sizes())
    )


def chunk_sizes(budget_mb: float, num_frames: int) -> list[int]:
    extra = num_frames * (NUM_MOST_SIMILAR * CHANNELS + CHANNELS + 6 * NUM_MOST_SIMILAR)
    return [
        roi_chunk_size(OUTPUT * OUTPUT, num_frames * h * w, budget_mb * 2**20, 4, extra)
        for h, w in level_sizes()
    ]


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_worker(config: dict) -> dict:
    """One configuration, in its own process so ru_maxrss starts clean."""
    torch.manual_seed(SEED)
    module = TemporalRoIAlign(
        CHANNELS, OUTPUT, STRIDES, num_most_similar=NUM_MOST_SIMILAR, num_heads=NUM_HEADS,
        memory_budget_mb=config["budget_mb"],
    ).eval()
    features, rois, support = make_inputs(config["rois"], config["frames"])

    def forward() -> Tensor:
        if config["impl"] == "naive":
            return naive_forward(module, features, rois, support)
        return module(features, rois, support)

    with torch.no_grad():
        rss_before = current_rss_bytes()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        out = forward()
        first_s = time.perf_counter() - start
        peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        checksum = float(out.double().sum())
        del out
        # Fewer repeats where one forward is already slow, to bound the run;
        # never one, as this machine's timings wander by up to 2x.
        repeats = max(2, min(5, int(20.0 / max(first_s, 1e-3))))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward()
            times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "repeats": repeats,
        "first_run_s": first_s,
        "peak_extra_bytes": peak_after - rss_before,
        "peak_rss_exceeded_setup_peak": peak_after > peak_before,
        "checksum": checksum,
    }


SETUP = {
    "frame": [FRAME_W, FRAME_H], "padded": [FRAME_W, PADDED_H],
    "levels_hw": level_sizes(), "strides": list(STRIDES), "channels": CHANNELS,
    "output_size": OUTPUT, "num_most_similar": NUM_MOST_SIMILAR, "num_heads": NUM_HEADS,
    "dtype": "float32", "mode": "inference (no_grad)", "support_level": "same", "seed": SEED,
    "rois": "sqrt(area) log-uniform in [24, 480] px, h/w log-uniform in [1/3, 3], clipped to frame",
}
METHODS = {
    "memory_method": "fresh subprocess per configuration; peak_extra_bytes = ru_maxrss after one "
                     "forward minus current RSS (/proc/self/statm) just before it",
    "naive_estimate_method": "largest level's [R_l*49, T*H*W] similarity plus its gathered top-k "
                             "features, float32; a lower bound of the naive peak",
    "time_method": "median of `repeats` forwards after a first (untimed) one",
}


def run_config(config: dict, cap_gb: float) -> dict:
    """One configuration, measured in a fresh ``--worker`` subprocess (or skipped: naive over the cap)."""
    counts = level_counts(make_inputs(config["rois"], 0)[1])
    record = dict(config, rois_per_level=counts)
    estimate = naive_bytes_estimate(counts, config["frames"])
    if config["impl"] == "naive":
        record["naive_estimated_bytes"] = estimate
        if estimate > cap_gb * 2**30:
            record["skipped"] = f"naive estimate {estimate / 2**30:.1f} GiB exceeds the {cap_gb:g} GiB cap"
            return record
    else:
        record["chunk_rois_per_level"] = chunk_sizes(config["budget_mb"], config["frames"])
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        record["error"] = lines[-1] if lines else f"exit {done.returncode}"
    else:
        record.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = bench_common.parser(__file__, __doc__)
    parser.add_argument("--cap-gb", type=float, default=8.0,
                        help="skip the naive version where its estimated memory exceeds this")
    parser.add_argument("--budget-mb", type=float, default=256.0, help="TemporalRoIAlign memory_budget_mb")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # the parent reads this one line
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0

    from tqdm import tqdm

    configs = [
        {"rois": r, "frames": t, "impl": impl, "budget_mb": args.budget_mb}
        for r in ROI_COUNTS for t in FRAME_COUNTS for impl in ("chunked", "naive")
    ]
    started = time.perf_counter()
    report = {
        "benchmark": "temporal_roi_align",
        "command": bench_common.command(__file__, argv),
        "machine": bench_common.machine(device="cpu", torch=torch.__version__, torch_threads=torch.get_num_threads()),
        "setup": SETUP,
        **METHODS,
        "results": [run_config(config, args.cap_gb) for config in tqdm(configs, desc="troi_align", file=sys.stderr)],
    }
    bench_common.finish(report, started)
    bench_common.emit(report, args.out)
    ran = [r for r in report["results"] if "median_s" in r]
    print(f"troi_align: {len(ran)} configurations timed, {len(report['results']) - len(ran)} skipped or failed "
          f"in {report['wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
