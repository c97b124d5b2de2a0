"""Per-frame CPU latency of the `lite` network: PyTorch eager against its ONNX exports.

Usage: python bench/bench_export.py [--sizes 640x360,768x576] [--frames 0,2]
           [--engines eager,ort-standard,ort-plugin] [--repeats 10] [--warmup 2]
           [--threads 2] [--weights CKPT] [--video vtest.avi] [--workdir DIR] [--quick]

Engines, all on the CPU:

* ``eager``: ``MaskTrackRCNN`` in eval mode under ``torch.no_grad`` (its
  ``forward`` includes torchvision's transform and its post-processing, which
  pastes the masks into the image);
* ``ort-standard``: the standard-mode ONNX export on ONNX Runtime
  (``export.ort_runtime.OnnxFrameModel``; Most-Similar RoI Align decomposed into
  standard operators; outputs per-box 28x28 mask probabilities, not pasted);
* ``ort-plugin``: the plugin-mode export, its TemporalRoIAlign node run by the
  onnxruntime-extensions NumPy operator.

The network is the `lite` preset with ``roi_extractor=temporal``: randomly
initialised heads (seed 0) on the ImageNet-pretrained backbone unless
``--weights`` names a checkpoint. Frames are real frames of OpenCV's vtest.avi,
resized with cv2 to the camera frame size and then, for every engine alike,
to the working size (``models.stream_step.prepare_frame``); that preparation
is outside the timed region. With T support frames the cache holds the
features of the T frames before the timed one (eager: their
``cache_features``; ONNX Runtime: their ``features_*`` outputs). Each ONNX
file is exported once per (frame size, mode) into a temporary directory (or
``--workdir``) and serves every T.

Per configuration: ``--warmup`` untimed runs, then ``--repeats`` runs timed
with ``time.perf_counter``; the JSON reports median, p90 (linear
interpolation), min and max in ms and the detection count of the last run.
Where the search can be timed from outside (eager: ``TemporalRoIAlign.
temporal_frames``; ort-plugin: the NumPy operator), ``search_median_ms`` is
the median per-frame time spent in it. Prints one JSON object on stdout;
progress and a one-line summary go to stderr. Exit status: 0 when every
configuration was timed, 1 when one failed, 2 on bad arguments or a missing video.
"""


from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

import bench_common
from export import ort_runtime
from export.onnx import export_onnx, resolve_model
from export.spec import CACHE_LEVELS, PLUGIN_OP, working_size
from models.presets import build_model
from models.sizes import parse_size_hw
from models.stream_step import prepare_frame
from models.temporal_roi_align import TemporalRoIAlign

PRESET = "lite"
ROI_EXTRACTOR = "temporal"
ENGINES = ("eager", "ort-standard", "ort-plugin")
ENGINE_MODE = {"ort-standard": "standard", "ort-plugin": "plugin"}
DEFAULT_SIZES = "640x360,768x576"
DEFAULT_FRAME_INDEX = 100
SEED = 0
TIMED_REGION = {
    "eager": "model([image], support_features=cache) under torch.no_grad: transform (normalise, "
             "resize at scale 1, pad), network, post-processing incl. mask pasting",
    "ort": "OnnxFrameModel.infer(image, cache): input checks and InferenceSession.run; "
           "masks stay per-box 28x28 probabilities",
    "excluded": "video decoding, resizing to frame and working size, building the cache",
}

log = bench_common.logger("export")
size_text_hw = bench_common.size_text_hw


# ----------------------------------------------------------------- inputs
def read_video_frames(path: Path, last: int, count: int) -> list[np.ndarray]:
    """Frames ``last - count + 1 .. last`` (BGR uint8, oldest first), read in order."""
    capture = bench_common.open_video(path)
    frames: list[np.ndarray] = []
    try:
        for index in range(last + 1):
            ok, frame = capture.read()
            if not ok:
                raise ValueError(f"{path}: has only {index} frames, --frame-index {last} needs {last + 1}")
            if index > last - count:
                frames.append(frame)
    finally:
        capture.release()
    return frames


def prepare(frame_bgr: np.ndarray, frame_hw: tuple[int, int], work_hw: tuple[int, int]) -> np.ndarray:
    """Video frame -> camera frame size (cv2) -> working size, float32 [3, H, W] RGB in [0, 1]."""
    import cv2

    height, width = frame_hw
    camera = cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    return prepare_frame(camera, work_hw)


# ----------------------------------------------------------------- model
def load_network(weights: str | None) -> tuple[torch.nn.Module, str | None]:
    if weights is None:
        # The same network resolve_model builds without weights, built here so a
        # shipped checkpoint (if one appears) does not replace the random heads.
        torch.manual_seed(SEED)
        model = build_model(PRESET, roi_extractor=ROI_EXTRACTOR)
        source = None
    else:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: no such checkpoint")
        model, source = resolve_model(PRESET, weights)
    model = model.eval()
    if not any(isinstance(m, TemporalRoIAlign) for m in model.modules()):
        log(f"warning: {weights} has roi_extractor={model.config.roi_extractor!r}: no Temporal RoI Align to time")
    return model, source


def plugin_nodes(path: Path) -> int:
    """TemporalRoIAlign nodes in an ONNX file (main graph and local functions)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    return sum(n.op_type == PLUGIN_OP for n in nodes)


# ----------------------------------------------------------------- timing
class SearchTimer:
    """Accumulates the time spent in one function per run."""

    def __init__(self) -> None:
        self.total = 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        return timed


@contextmanager
def timed_eager_search(model: torch.nn.Module, timer: SearchTimer):
    modules = [m for m in model.modules() if isinstance(m, TemporalRoIAlign)]
    for module in modules:
        module.temporal_frames = timer.wrap(module.temporal_frames)
    try:
        yield
    finally:
        for module in modules:
            del module.temporal_frames  # back to the class's method


@contextmanager
def timed_plugin_search(timer: SearchTimer):
    # The registered operator looks most_similar_numpy up in the module at call time.
    original = ort_runtime.most_similar_numpy
    ort_runtime.most_similar_numpy = timer.wrap(original)
    try:
        yield
    finally:
        ort_runtime.most_similar_numpy = original


def measure(run, warmup: int, repeats: int, timer: SearchTimer | None) -> dict:
    for _ in range(warmup):
        run()
    times, search, detections = [], [], None
    for _ in range(repeats):
        if timer is not None:
            timer.total = 0.0
        start = time.perf_counter()
        detections = run()
        times.append((time.perf_counter() - start) * 1e3)
        if timer is not None:
            search.append(timer.total * 1e3)
    return {
        **bench_common.summary(times, ("median", "p90", "min", "max"), suffix="_ms"),
        "detections": detections,
        "search_median_ms": bench_common.summary(search, ("median",))["median"] if timer is not None else None,
        "repeats": repeats,
        "warmup": warmup,
    }


def bench_eager(model, frames: list[np.ndarray], counts: list[int], warmup: int, repeats: int) -> list[dict]:
    results = []
    tensors = [torch.from_numpy(f) for f in frames]
    with torch.no_grad():
        history = [model([t])[0]["cache_features"] for t in tensors[:-1]]
        for count in counts:
            support = None
            if count > 0:
                chosen = history[len(history) - count:]
                support = [torch.stack([h[level] for h in chosen])[None] for level in range(len(chosen[0]))]
            image = tensors[-1]

            def run() -> int:
                return int(model([image], support_features=support)[0]["boxes"].shape[0])

            timer = SearchTimer()
            with timed_eager_search(model, timer):
                results.append({"support_frames": count, **measure(run, warmup, repeats, timer if count else None)})
    return results


def bench_ort(path: Path, mode: str, threads: int, frames: list[np.ndarray], counts: list[int],
              warmup: int, repeats: int) -> list[dict]:
    runtime = ort_runtime.OnnxFrameModel(path, threads=threads)
    try:
        history = []
        for frame in frames[:-1]:
            out = runtime.infer(frame, runtime.empty_cache())
            history.append([out[f"features_{name}"] for name in CACHE_LEVELS])
        results = []
        for count in counts:
            cache = runtime.empty_cache()
            if count > 0:
                chosen = history[len(history) - count:]
                cache = [np.concatenate([h[level] for h in chosen]) for level in range(len(CACHE_LEVELS))]
            image = frames[-1]

            def run() -> int:
                return int(runtime.infer(image, cache)["boxes"].shape[0])

            timer = SearchTimer() if mode == "plugin" and count else None
            if timer is not None:
                with timed_plugin_search(timer):
                    record = measure(run, warmup, repeats, timer)
            else:
                record = measure(run, warmup, repeats, None)
            results.append({"support_frames": count, **record})
        return results
    finally:
        del runtime


def machine(threads: int) -> dict:
    import onnxruntime

    return bench_common.machine(
        device="cpu", torch=torch.__version__, torch_threads=torch.get_num_threads(),
        onnxruntime_providers=onnxruntime.get_available_providers(), ort_intra_op_threads=threads,
        **bench_common.versions("torchvision", "onnxruntime", "onnxruntime-extensions", "numpy",
                                "opencv-python-headless"))


# ----------------------------------------------------------------- the run
def parse_list(text: str, name: str, convert) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--{name} is empty")
    try:
        return [convert(item) for item in items]
    except ValueError as exc:
        raise ValueError(f"--{name} {text!r}: {exc}") from exc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_common.parser(__file__, __doc__)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"camera frame sizes WIDTHxHEIGHT (default {DEFAULT_SIZES})")
    p.add_argument("--frames", default="0,2", help="support frame counts T (default 0,2)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"of {', '.join(ENGINES)} (default all)")
    p.add_argument("--repeats", type=int, help="timed runs per configuration (default 10; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--weights", help="lite checkpoint (default: random heads, seed 0)")
    bench_common.add_video(p, "video to take frames from")
    p.add_argument("--frame-index", type=int, default=DEFAULT_FRAME_INDEX,
                   help=f"the timed frame's index in the video; support frames precede it (default {DEFAULT_FRAME_INDEX})")
    bench_common.add_workdir(p, "the ONNX files")
    p.add_argument("--quick", action="store_true", help="smoke run: the first size only, 2 repeats")
    return p.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> tuple[list[tuple[int, int]], list[int], list[str], int]:
    """``(frame sizes hw, support frame counts, engines, repeats)``; ValueError naming a wrong option."""
    sizes = parse_list(args.sizes, "sizes", parse_size_hw)
    counts = sorted(set(parse_list(args.frames, "frames", int)))
    engines = parse_list(args.engines, "engines", str)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; valid engines: {', '.join(ENGINES)}")
    if any(c < 0 for c in counts):
        raise ValueError(f"--frames must be >= 0, got {counts}")
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 10)
    if repeats < 1 or args.warmup < 0 or args.threads < 1:
        raise ValueError("--repeats and --threads must be >= 1 and --warmup >= 0")
    if args.frame_index < max(counts):
        raise ValueError(f"--frame-index {args.frame_index} leaves fewer than {max(counts)} frames before it")
    return (sizes[:1] if args.quick else sizes), counts, engines, repeats


def time_engine(engine: str, model, source: str | None, frames: list[np.ndarray], frame_hw: tuple[int, int],
                where: dict, counts: list[int], args: argparse.Namespace, repeats: int, workdir: Path,
                report: dict) -> list[dict]:
    """One engine at one frame size, for every support frame count (ONNX: exported first)."""
    if engine == "eager":
        return bench_eager(model, frames, counts, args.warmup, repeats)
    mode = ENGINE_MODE[engine]
    path = workdir / f"{PRESET}_{where['frame_size']}_{mode}.onnx"
    export_start = time.perf_counter()
    export_onnx(model, path, mode, frame_size=frame_hw, support_frames=max(counts), weights=source)
    report["exports"].append({
        **where, "mode": mode, "seconds": round(time.perf_counter() - export_start, 1),
        "mib": bench_common.mib(path.stat().st_size), "plugin_nodes": plugin_nodes(path),
    })
    return bench_ort(path, mode, args.threads, frames, counts, args.warmup, repeats)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    sizes, counts, engines, repeats = check_arguments(args)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report = {
        "benchmark": "export", "command": bench_common.command(__file__, argv), "machine": machine(args.threads),
        "preset": PRESET, "roi_extractor": ROI_EXTRACTOR, "weights": None, "heads": None, "threads": args.threads,
        "video": str(args.video), "frame_index": args.frame_index, "timed_region": TIMED_REGION,
        "exports": [], "results": [],
    }
    # Read the video before the slow parts so a missing file fails at once.
    raw_frames = read_video_frames(args.video, args.frame_index, max(counts) + 1)
    log(f"{len(raw_frames)} frame(s) of {args.video} up to index {args.frame_index}")
    log(f"building {PRESET} (roi_extractor={ROI_EXTRACTOR}, "
        f"{'weights ' + args.weights if args.weights else 'random heads, seed 0'})")
    model, source = load_network(args.weights)
    report["weights"] = source
    report["heads"] = "checkpoint" if source else "random (seed 0); ImageNet-pretrained EfficientNet-Lite0 backbone"
    report["roi_extractor"] = model.config.roi_extractor
    with bench_common.workdir(args.workdir, "bench_export_") as (workdir, _):
        for frame_hw in sizes:
            work_hw = working_size(*frame_hw, model.config.min_size, model.config.max_size)
            frames = [prepare(f, frame_hw, work_hw) for f in raw_frames]
            where = {"frame_size": size_text_hw(*frame_hw), "working_size": size_text_hw(*work_hw)}
            for engine in engines:
                log(f"{engine} at frame {where['frame_size']} (working {where['working_size']})")
                try:
                    records = time_engine(engine, model, source, frames, frame_hw, where, counts, args, repeats,
                                          workdir, report)
                except Exception as exc:  # record and go on with the other configurations
                    log(f"{engine} at {where['frame_size']} failed: {type(exc).__name__}: {exc}")
                    records = [{"support_frames": c, "error": f"{type(exc).__name__}: {exc}"} for c in counts]
                for record in records:
                    report["results"].append({"engine": engine, **where, **record})
                    if "median_ms" in record:
                        log(f"  T={record['support_frames']}: median {record['median_ms']:.1f} ms, "
                            f"p90 {record['p90_ms']:.1f} ms, {record['detections']} detections")
    return bench_common.finish(report, started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report, status = bench_common.guarded(run, args, argv)
    if report is None:
        return status
    bench_common.emit(report, args.out)
    failed = [r for r in report["results"] if "error" in r]
    log(f"{len(report['results']) - len(failed)} configuration(s) timed, {len(failed)} failed, "
        f"in {report['wall_s']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
