"""End-to-end latency, throughput and memory of the cellwatch service under pushed camera streams.

Usage: python bench/bench_service.py [--streams 1,2,4] [--seconds 20] [--fps 10] [--threads 2]
           [--model M.onnx | --temporal] [--frame-size 768x576] [--video vtest.avi]
           [--quality 85] [--aligned] [--workdir DIR] [--out FILE]

The service runs as it is deployed: ``python -m service.cli serve --model M.onnx
--port P --threads N`` in a subprocess on 127.0.0.1 (a free port; the harness
``client.server_process``), engine ONNX Runtime on the CPU. The model is the ``lite`` preset: unless ``--model`` names
an exported ONNX file (its sidecar beside it), the benchmark exports ``lite``
with randomly initialised heads (seed 0, ImageNet-pretrained backbone) and
``roi_extractor=roialign`` (``--temporal``: ``temporal``) in standard mode at
the camera frame size (default vtest.avi's 768x576) into ``--workdir`` (default
a temporary directory, removed).

For each stream count N of ``--streams``, N push streams are created
(``POST /v1/streams``) and N asyncio WebSocket clients push real frames of
OpenCV's vtest.avi into ``/v1/streams/{id}/ingest`` at ``--fps`` each for
``--seconds``. The frames are read, resized to the frame size and JPEG-encoded
(``--quality``) before the run, so a client only stamps and sends; each
message's capture time is ``time.time()`` just before it is sent, the clock the
server reads too, so the server's ``end_to_end_ms`` is exactly frame sent ->
result available (decode, queueing, inference, tracking, result). Clients are
paced on an absolute schedule, their phases spread evenly over one frame period
(``--aligned``: all streams send at the same instants, the worst case for
queueing); per-message deflate is off (JPEG does not compress). After the last
frame the benchmark polls each stream's status until every sent frame has been
received and every received one processed, dropped (newest-frame-wins) or
failed, then records the stream's counters, latency percentiles and
``memory_bytes`` (support cache + tracker) and deletes the streams.

Reported per N:

* ``latency_ms``: the streams' frames pooled. The service reports percentiles
  per stream, not per frame, so ``p50`` is the mean of the streams' p50
  weighted by frames processed (exact for one stream; an estimate otherwise),
  ``p95``/``p99`` are the largest of the streams' (an upper bound of the pooled
  percentile, which lies between the smallest and the largest stream's) and
  ``max`` is exact. ``latency_ms_histogram`` is a second, truly pooled estimate
  from the service's Prometheus histogram ``cellwatch_end_to_end_seconds``
  summed over the streams (linear interpolation inside its coarse buckets).
* ``processed_fps_per_stream`` (mean over streams) and ``processed_fps_total``:
  frames processed / the stream's sending duration (first send to last send
  plus one frame period); ``dropped_fraction``: dropped / received, all streams.
* ``rss_mb``: the server's peak resident memory (VmRSS, sampled every 0.25 s
  from the first send until idle); ``rss_per_stream_mb`` = (rss_mb -
  rss_idle_mb) / N, where ``rss_idle_mb`` is measured once after /readyz,
  before any stream (all ``*_mb`` values are MiB, 2**20 bytes).
  ``server_cpu_percent``: server CPU time over the sending window (100 = one
  core busy). Each stream's percentiles cover its last
  ``pipeline.latency_window`` (default 1000) frames: every frame unless
  ``--seconds * --fps`` exceeds that.

Prints one JSON object on stdout; progress and a one-line summary go to stderr.
Exit status: 0 when every stream count ran and went idle, 1 otherwise, 2 on bad
arguments, a missing video or model.
"""


from __future__ import annotations

import argparse
import asyncio
import time

import bench_common
import bench_live
from bench_live import PRESET, Sender, read_cpu_seconds, read_rss
from client.server_process import ServeProcess

RSS_SAMPLE_S = 0.25
PROGRESS_EVERY_S = 5.0
HISTOGRAM = "cellwatch_end_to_end_seconds"
LATENCY = ("server end_to_end_ms: result available minus capture_ts, capture_ts = time.time() at send "
           "(same host clock)")
POOLING = ("p50: mean of the streams' p50 weighted by frames processed (exact for one stream); "
           "p95/p99: the largest stream's (an upper bound of the pooled percentile); max: exact. "
           "latency_ms_histogram: pooled estimate from the service's Prometheus histogram "
           "(buckets 5/10/25/50/75/100/150/250/500/1000 ms..., linear interpolation)")

log = bench_common.logger("service")
mib = bench_common.mib


# ----------------------------------------------------------------- sampling
class Sampler:
    """Peak and mean server RSS, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []

    async def run(self) -> None:
        while True:
            try:
                self.samples.append(read_rss(self.pid))
            except (OSError, ValueError):
                return
            await asyncio.sleep(RSS_SAMPLE_S)


async def progress(senders: list[Sender], count: int, sampler: Sampler, label: str) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        sent = min(s.sent for s in senders)
        rss = sampler.samples[-1] / 2**20 if sampler.samples else float("nan")
        log(f"  {label}: {sent}/{count} frames sent per stream, server RSS {rss:.0f} MB")


# ----------------------------------------------------------------- statistics
def histogram_buckets(text: str, streams: set[str]) -> list[tuple[float, float]]:
    """``(upper bound in s, cumulative count)`` of ``cellwatch_end_to_end_seconds``, summed over ``streams``."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            if sample.name == HISTOGRAM + "_bucket" and sample.labels.get("stream") in streams:
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return sorted(counts.items())


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: linear inside the bucket; beyond the last finite bound, that bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            if cumulative == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (cumulative - below)
        lower, below = bound, cumulative
    return lower


def pooled_histogram_ms(buckets: list[tuple[float, float]]) -> dict:
    out = {}
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        value = histogram_quantile(buckets, q)
        out[name] = None if value is None else round(value * 1000.0, 1)
    out["frames"] = int(buckets[-1][1]) if buckets else 0
    return out


# ----------------------------------------------------------------- one stream count
async def send_all(server: ServeProcess, senders: list[Sender], frames: list[bytes], frame_count: int,
                   period: float, sampler: Sampler, label: str) -> dict:
    """Push every stream's frames, then wait until the service is idle: the server's CPU
    over the sending window, the streams' statuses and the Prometheus text."""
    from websockets.asyncio.client import connect

    websockets = [
        await connect(f"{server.ws_url}/v1/streams/{s.stream_id}/ingest",
                      compression=None, max_size=2**20, open_timeout=10)
        for s in senders
    ]
    readers = [asyncio.create_task(bench_live.collect_replies(ws, s)) for ws, s in zip(websockets, senders)]
    sampling = asyncio.create_task(sampler.run())
    reporting = asyncio.create_task(progress(senders, frame_count, sampler, label))
    start = asyncio.get_running_loop().time() + 0.2
    cpu_start, wall_start = read_cpu_seconds(server.pid), time.perf_counter()
    try:
        await asyncio.gather(*(bench_live.push(ws, s, frames, frame_count, period, start)
                               for ws, s in zip(websockets, senders)))
        cpu_used, wall = read_cpu_seconds(server.pid) - cpu_start, time.perf_counter() - wall_start
        reporting.cancel()
        statuses, idle, waited = await bench_live.wait_idle(server, senders, bench_live.IDLE_TIMEOUT_S)
        metrics_text = await asyncio.to_thread(bench_live.metrics_text, server)
    finally:
        reporting.cancel()
        sampling.cancel()
        await bench_live.close_all(websockets, readers)
    return {"cpu_percent": round(100.0 * cpu_used / wall, 1) if wall else None, "statuses": statuses,
            "idle": idle, "waited": waited, "metrics_text": metrics_text}


def stream_record(sender: Sender, status: dict, period: float) -> dict:
    frames = status["frames"]
    duration = sender.duration(period)
    return {
        "id": sender.stream_id,
        "sent": sender.sent,
        "send_fps": round(sender.sent / duration, 2) if duration else 0.0,
        "late_sends": sender.late,
        "duration_s": round(duration, 2),
        "received": frames["received"],
        "processed": frames["processed"],
        "dropped": frames["dropped"],
        "errors": frames["errors"],
        "processed_fps": round(frames["processed"] / duration, 2) if duration else 0.0,
        "latency_ms": status["latency_ms"],
        "memory_bytes": status["memory_bytes"],
        "support_frames_kept": status["support_frames"]["kept"],
        "tracks": status["tracks"],
        "last_error": status["last_error"],
        "server_messages": sender.server_errors[:5],
    }


async def run_streams(server: ServeProcess, count: int, frames: list[bytes], fps: float, seconds: float,
                      aligned: bool, rss_idle: int) -> dict:
    period = 1.0 / fps
    frame_count = max(1, round(seconds * fps))
    label = f"{count} stream{'s' if count > 1 else ''}"
    senders = bench_live.senders(f"bench-{count}x", count, len(frames), period, aligned)
    for sender in senders:
        await asyncio.to_thread(bench_live.request, server, "POST", "/v1/streams",
                                {"id": sender.stream_id, "source": "push"})
    load_before = bench_common.load_average()
    rss_before = read_rss(server.pid)
    sampler = Sampler(server.pid)
    sent = await send_all(server, senders, frames, frame_count, period, sampler, label)
    load_after = bench_common.load_average()
    if not sent["idle"]:
        log(f"  {label}: not idle {sent['waited']:.0f} s after the last frame; recording the status as it is")
    rss_peak = max([rss_before, *sampler.samples])
    per_stream = [stream_record(sender, status, period) for sender, status in zip(senders, sent["statuses"])]
    for sender in senders:
        await asyncio.to_thread(bench_live.request, server, "DELETE", f"/v1/streams/{sender.stream_id}")

    received = sum(s["received"] for s in per_stream)
    fps_each = [s["processed_fps"] for s in per_stream]
    buckets = histogram_buckets(sent["metrics_text"], {s.stream_id for s in senders})
    return {
        "streams": count,
        "idle": sent["idle"],
        "idle_wait_s": round(sent["waited"], 2),
        "latency_ms": bench_live.pool_latency(per_stream),
        "latency_ms_histogram": pooled_histogram_ms(buckets),
        "per_stream": per_stream,
        "processed_fps_per_stream": round(sum(fps_each) / len(fps_each), 2),
        "processed_fps_per_stream_min": min(fps_each),
        "processed_fps_total": round(sum(fps_each), 2),
        "dropped_fraction": round(sum(s["dropped"] for s in per_stream) / received, 4) if received else None,
        "errors": sum(s["errors"] for s in per_stream),
        "rss_before_mb": mib(rss_before),
        "rss_mb": mib(rss_peak),
        "rss_mean_mb": mib(sum(sampler.samples) / len(sampler.samples)) if sampler.samples else None,
        "rss_per_stream_mb": round((rss_peak - rss_idle) / 2**20 / count, 1),
        "stream_memory_mb": round(sum(s["memory_bytes"] for s in per_stream) / len(per_stream) / 2**20, 2),
        "server_cpu_percent": sent["cpu_percent"],
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


# ----------------------------------------------------------------- the run
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_common.parser(__file__, __doc__)
    p.add_argument("--streams", default="1,2,4", help="stream counts, run in turn (default 1,2,4)")
    bench_live.add_arguments(p, seconds=20.0, per="stream count")
    p.add_argument("--temporal", action="store_true", help="export lite with roi_extractor=temporal (not roialign)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    counts = bench_live.parse_counts(args.streams, "--streams")
    if args.model is not None and args.temporal:
        raise ValueError("--temporal chooses what the benchmark exports; it does not apply with --model")
    bench_live.check_arguments(args)
    info = bench_live.sidecar_info(args.model) if args.model is not None else None
    frame_hw = bench_live.frame_size_hw(args, info)

    started = time.perf_counter()
    # Read the video before the slow parts so a missing file fails at once.
    frames = bench_live.encoded_frames(args.video, max(1, round(args.seconds * args.fps)), frame_hw, args.quality)
    kib = sum(map(len, frames)) / len(frames) / 1024
    log(f"{len(frames)} frame(s) of {args.video} at {bench_common.size_text_hw(*frame_hw)}, "
        f"JPEG quality {args.quality}, {kib:.0f} KiB each on average")
    report = {**bench_live.report_header("service", __file__, args, argv, frame_hw), "jpeg_kib_mean": round(kib, 1),
              "latency": LATENCY, "latency_pooling": POOLING, "rss_idle_mb": None, "results": []}
    roi_extractor = "temporal" if args.temporal else "roialign"
    with bench_common.workdir(args.workdir, "bench_service_") as (workdir, temporary):
        model_path, report["model"] = bench_live.prepare_model(args, info, workdir, temporary, roi_extractor,
                                                               frame_hw, log)
        if report["model"]["preset"] != PRESET:
            log(f"warning: {model_path} is preset {report['model']['preset']!r}, not {PRESET!r}")
        with bench_live.running_service(model_path, args.threads, workdir, temporary, report, log) as server:
            time.sleep(1.0)  # let start-up allocations settle
            rss_idle = read_rss(server.pid)
            report["rss_idle_mb"] = mib(rss_idle)
            log(f"ready in {report['server']['startup_s']:.1f} s; idle RSS {mib(rss_idle):.0f} MB")
            for count in counts:
                log(f"{count} stream(s) at {args.fps:g} fps for {args.seconds:g} s")
                result = asyncio.run(run_streams(server, count, frames, args.fps, args.seconds, args.aligned,
                                                 rss_idle))
                report["results"].append(result)
                lat = result["latency_ms"]
                log(f"  {count} stream(s): latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; "
                    f"processed {result['processed_fps_per_stream']} fps/stream "
                    f"({result['processed_fps_total']} total), dropped {100 * (result['dropped_fraction'] or 0):.1f}%, "
                    f"RSS {result['rss_mb']} MB (+{result['rss_per_stream_mb']} MB/stream), "
                    f"server CPU {result['server_cpu_percent']}%")
    return bench_common.finish(report, started)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report, status = bench_common.guarded(run, args, argv)
    if report is None:
        return status
    bench_common.emit(report, args.out)
    parts = [f"{r['streams']}x: p50 {r['latency_ms']['p50']} / p99 {r['latency_ms']['p99']} ms, "
             f"{r['processed_fps_per_stream']} fps/stream, +{r['rss_per_stream_mb']} MB/stream"
             for r in report["results"]]
    log(f"summary ({report['model']['roi_extractor']}, {report['frame_size']}, "
        f"{report['fps_per_stream']:g} fps/stream, idle RSS {report['rss_idle_mb']} MB): "
        + "; ".join(parts) + f"; {report['wall_s']:.0f} s")
    failed = [r for r in report["results"] if not r["idle"] or r["errors"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
