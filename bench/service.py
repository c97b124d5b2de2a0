"""End-to-end latency, throughput and memory of the cellwatch service under pushed camera streams.

Usage: python bench/service.py [--streams 1,2,4] [--seconds 20] [--fps 10] [--threads 2]
           [--model M.onnx | --temporal] [--frame-size 768x576] [--video vtest.avi]
           [--quality 85] [--aligned] [--workdir DIR] [--out FILE]

The service runs as it is deployed: ``python -m service.cli serve --model M.onnx
--port P --threads N`` in a subprocess on 127.0.0.1 (a free port), engine ONNX
Runtime on the CPU. The model is the ``lite`` preset: unless ``--model`` names
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
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from export.spec import parse_size, read_sidecar, working_size  # noqa: E402
from service.framing import encode_frame  # noqa: E402

PRESET = "lite"
DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DEFAULT_FRAME_SIZE = "768x576"  # vtest.avi's own size
DEFAULT_STREAMS = "1,2,4"
READY_TIMEOUT_S = 180.0
IDLE_TIMEOUT_S = 60.0
RSS_SAMPLE_S = 0.25
PROGRESS_EVERY_S = 5.0
HISTOGRAM = "cellwatch_end_to_end_seconds"
LATENCY_KEYS = ("p50", "p95", "p99", "max")
POOLING = ("p50: mean of the streams' p50 weighted by frames processed (exact for one stream); "
           "p95/p99: the largest stream's (an upper bound of the pooled percentile); max: exact. "
           "latency_ms_histogram: pooled estimate from the service's Prometheus histogram "
           "(buckets 5/10/25/50/75/100/150/250/500/1000 ms..., linear interpolation)")


def log(message: str) -> None:
    print(f"[bench.service] {message}", file=sys.stderr, flush=True)


def size_text(height: int, width: int) -> str:
    return f"{width}x{height}"


# ----------------------------------------------------------------- inputs
def encoded_frames(path: Path, count: int, frame_hw: tuple[int, int], quality: int) -> list[bytes]:
    """Up to ``count`` frames of the video from its start, at ``frame_hw``, as JPEG bytes."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: video not found; the default is OpenCV's sample footage "
            "(`apt-get install opencv-doc`), or pass --video PATH"
        )
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: OpenCV cannot open this video")
    height, width = frame_hw
    frames: list[bytes] = []
    try:
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            if frame.shape[:2] != (height, width):
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise ValueError(f"{path}: JPEG encoding failed")
            frames.append(jpeg.tobytes())
    finally:
        capture.release()
    if not frames:
        raise ValueError(f"{path}: no frame could be read")
    return frames


# ----------------------------------------------------------------- model
def sidecar_info(path: Path) -> dict:
    sidecar = read_sidecar(path)
    return {
        "path": str(path),
        "preset": sidecar.preset,
        "mode": sidecar.mode,
        # The sidecar records whether the graph has Temporal RoI Align, not the option's name.
        "roi_extractor": "temporal" if sidecar.temporal else "roialign",
        "weights": sidecar.weights or "random heads",
        "frame_size": size_text(sidecar.frame_height, sidecar.frame_width),
        "working_size": size_text(sidecar.input_height, sidecar.input_width),
        "support_frames": sidecar.support_frames,
        "mib": round(path.stat().st_size / 2**20, 1),
    }


def export_lite(workdir: Path, roi_extractor: str, frame_hw: tuple[int, int]) -> tuple[Path, float]:
    """Export ``lite`` (random heads, seed 0) in standard mode; returns the file and the seconds taken."""
    from export.onnx import export_onnx, resolve_model  # torch: only when exporting

    path = workdir / f"{PRESET}_{roi_extractor}_{size_text(*frame_hw)}.onnx"
    started = time.perf_counter()
    model, _ = resolve_model(PRESET, None, {"roi_extractor": roi_extractor}, random_init=True)
    export_onnx(model, path, "standard", frame_size=frame_hw)
    return path, time.perf_counter() - started


# ----------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/{pid}/status has no VmRSS")


def read_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class HttpError(RuntimeError):
    pass


class Server:
    """``python -m service.cli serve`` in a subprocess, its log in a file."""

    def __init__(self, model: Path, threads: int, log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "service.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
                   "--port", str(self.port), "--threads", str(threads)]
        self.command = " ".join(command)
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0) -> dict | None:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise HttpError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
        return json.loads(text) if text else None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.base + "/metrics", timeout=10.0) as response:
            return response.read().decode()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode} before it was "
                                   f"ready; its log ends:\n{self.log_tail()}")
            try:
                if self.request("GET", "/readyz", timeout=2.0).get("status") == "ready":
                    return time.perf_counter() - started
            except (OSError, HttpError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server was not ready within {timeout:.0f} s; its log ends:\n{self.log_tail()}")

    def rss(self) -> int:
        return read_rss(self.pid)

    def cpu_seconds(self) -> float:
        return read_cpu_seconds(self.pid)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log("the server ignored SIGTERM for 20 s; killing it")
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        return self.process.returncode


# ----------------------------------------------------------------- clients
@dataclass
class Sender:
    stream_id: str
    first_frame: int  # index into the encoded frames this stream starts at
    offset_s: float  # phase within the frame period
    sent: int = 0
    late: int = 0  # sends more than one period behind schedule
    server_errors: list[str] = field(default_factory=list)
    first_send: float | None = None
    last_send: float | None = None


async def collect_replies(websocket, sender: Sender) -> None:
    """The server answers only with JSON text on problems; keep them."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in websocket:
            if isinstance(message, str):
                sender.server_errors.append(message[:300])
    except ConnectionClosed:
        pass


async def push(websocket, sender: Sender, frames: list[bytes], count: int, period: float, start: float) -> None:
    """Send ``count`` frames, the k-th at ``start + offset + k * period`` (event-loop clock)."""
    loop = asyncio.get_running_loop()
    for k in range(count):
        delay = start + sender.offset_s + k * period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > period:
            sender.late += 1
        capture_ts = time.time()
        await websocket.send(encode_frame(capture_ts, frames[(sender.first_frame + k) % len(frames)]))
        sender.sent += 1
        sender.first_send = sender.first_send if sender.first_send is not None else capture_ts
        sender.last_send = capture_ts


class Sampler:
    """Peak and mean server RSS, sampled until stopped."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[int] = []

    async def run(self) -> None:
        while True:
            try:
                self.samples.append(self.server.rss())
            except (OSError, ValueError):
                return
            await asyncio.sleep(RSS_SAMPLE_S)


def stream_done(status: dict, sent: int) -> bool:
    frames = status["frames"]
    settled = frames["processed"] + frames["dropped"] + frames["errors"]
    return frames["received"] >= sent and settled >= frames["received"]


async def wait_idle(server: Server, senders: list[Sender], timeout: float) -> tuple[list[dict], bool, float]:
    started = time.perf_counter()
    while True:
        statuses = await asyncio.gather(
            *(asyncio.to_thread(server.request, "GET", f"/v1/streams/{s.stream_id}") for s in senders)
        )
        idle = all(stream_done(st, s.sent) for st, s in zip(statuses, senders))
        waited = time.perf_counter() - started
        if idle or waited > timeout:
            return list(statuses), idle, waited
        await asyncio.sleep(0.1)


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


def pool_latency(per_stream: list[dict]) -> dict:
    """Per-stream percentiles -> pooled ones (see ``POOLING``)."""
    rows = [(s["processed"], s["latency_ms"]) for s in per_stream
            if s["processed"] and s["latency_ms"]["p50"] is not None]
    if not rows:
        return {key: None for key in LATENCY_KEYS}
    weight = sum(n for n, _ in rows)
    return {
        "p50": round(sum(n * lat["p50"] for n, lat in rows) / weight, 2),
        "p95": max(lat["p95"] for _, lat in rows),
        "p99": max(lat["p99"] for _, lat in rows),
        "max": max(lat["max"] for _, lat in rows),
    }


def mb(value: float) -> float:
    return round(value / 2**20, 1)


# ----------------------------------------------------------------- one stream count
async def run_streams(server: Server, count: int, frames: list[bytes], fps: float, seconds: float,
                      aligned: bool, rss_idle: int) -> dict:
    from websockets.asyncio.client import connect

    period = 1.0 / fps
    frame_count = max(1, round(seconds * fps))
    label = f"{count} stream{'s' if count > 1 else ''}"
    senders = [
        Sender(f"bench-{count}x-{i}", first_frame=(i * len(frames)) // count,
               offset_s=0.0 if aligned else i * period / count)
        for i in range(count)
    ]
    for sender in senders:
        await asyncio.to_thread(server.request, "POST", "/v1/streams", {"id": sender.stream_id, "source": "push"})
    load_before = [round(x, 2) for x in os.getloadavg()]
    rss_before = server.rss()
    websockets = [
        await connect(f"ws://127.0.0.1:{server.port}/v1/streams/{s.stream_id}/ingest",
                      compression=None, max_size=2**20, open_timeout=10)
        for s in senders
    ]
    readers = [asyncio.create_task(collect_replies(ws, s)) for ws, s in zip(websockets, senders)]
    sampler = Sampler(server)
    sampling = asyncio.create_task(sampler.run())
    reporting = asyncio.create_task(progress(senders, frame_count, sampler, label))
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    cpu_start, wall_start = server.cpu_seconds(), time.perf_counter()
    try:
        await asyncio.gather(*(push(ws, s, frames, frame_count, period, start) for ws, s in zip(websockets, senders)))
        cpu_used, wall = server.cpu_seconds() - cpu_start, time.perf_counter() - wall_start
        reporting.cancel()
        statuses, idle, waited = await wait_idle(server, senders, IDLE_TIMEOUT_S)
        metrics_text = await asyncio.to_thread(server.metrics_text)
    finally:
        reporting.cancel()
        sampling.cancel()
        for websocket in websockets:
            await websocket.close()
        for reader in readers:
            try:
                await asyncio.wait_for(reader, timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                reader.cancel()
    load_after = [round(x, 2) for x in os.getloadavg()]
    if not idle:
        log(f"  {label}: not idle {waited:.0f} s after the last frame; recording the status as it is")
    rss_peak = max([rss_before, *sampler.samples])

    per_stream = []
    for sender, status in zip(senders, statuses):
        frames_ = status["frames"]
        duration = (sender.last_send - sender.first_send) + period if sender.sent else 0.0
        per_stream.append({
            "id": sender.stream_id,
            "sent": sender.sent,
            "send_fps": round(sender.sent / duration, 2) if duration else 0.0,
            "late_sends": sender.late,
            "duration_s": round(duration, 2),
            "received": frames_["received"],
            "processed": frames_["processed"],
            "dropped": frames_["dropped"],
            "errors": frames_["errors"],
            "processed_fps": round(frames_["processed"] / duration, 2) if duration else 0.0,
            "latency_ms": status["latency_ms"],
            "memory_bytes": status["memory_bytes"],
            "support_frames_kept": status["support_frames"]["kept"],
            "tracks": status["tracks"],
            "last_error": status["last_error"],
            "server_messages": sender.server_errors[:5],
        })
    for sender in senders:
        await asyncio.to_thread(server.request, "DELETE", f"/v1/streams/{sender.stream_id}")

    received = sum(s["received"] for s in per_stream)
    fps_each = [s["processed_fps"] for s in per_stream]
    return {
        "streams": count,
        "idle": idle,
        "idle_wait_s": round(waited, 2),
        "latency_ms": pool_latency(per_stream),
        "latency_ms_histogram": pooled_histogram_ms(histogram_buckets(metrics_text, {s.stream_id for s in senders})),
        "per_stream": per_stream,
        "processed_fps_per_stream": round(sum(fps_each) / len(fps_each), 2),
        "processed_fps_per_stream_min": min(fps_each),
        "processed_fps_total": round(sum(fps_each), 2),
        "dropped_fraction": round(sum(s["dropped"] for s in per_stream) / received, 4) if received else None,
        "errors": sum(s["errors"] for s in per_stream),
        "rss_before_mb": mb(rss_before),
        "rss_mb": mb(rss_peak),
        "rss_mean_mb": mb(sum(sampler.samples) / len(sampler.samples)) if sampler.samples else None,
        "rss_per_stream_mb": round((rss_peak - rss_idle) / 2**20 / count, 1),
        "stream_memory_mb": round(sum(s["memory_bytes"] for s in per_stream) / len(per_stream) / 2**20, 2),
        "server_cpu_percent": round(100.0 * cpu_used / wall, 1) if wall else None,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }


# ----------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine(threads: int) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "device": "cpu",
        "engine": "onnxruntime",
        "ort_intra_op_threads": threads,
        **{name.replace("-", "_"): version(name) for name in
           ("onnxruntime", "fastapi", "uvicorn", "websockets", "numpy", "opencv-python-headless")},
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise ValueError(f"--streams {text!r}: {exc}") from exc
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"--streams {text!r}: expected positive stream counts, e.g. 1,2,4")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/service.py", description=__doc__.splitlines()[0])
    p.add_argument("--streams", default=DEFAULT_STREAMS, help=f"stream counts, run in turn (default {DEFAULT_STREAMS})")
    p.add_argument("--seconds", type=float, default=20.0, help="sending time per stream count (default 20)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per stream (default 10)")
    p.add_argument("--threads", type=int, default=2, help="the server's inference threads (default 2)")
    p.add_argument("--model", type=Path, help="an exported ONNX file (sidecar beside it); default: export lite")
    p.add_argument("--temporal", action="store_true", help="export lite with roi_extractor=temporal (not roialign)")
    p.add_argument("--frame-size", help=f"camera frame WIDTHxHEIGHT for the export and the frames sent "
                                        f"(default {DEFAULT_FRAME_SIZE}; with --model, the model's)")
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help=f"footage to send (default {DEFAULT_VIDEO})")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality of the frames sent (default 85)")
    p.add_argument("--aligned", action="store_true", help="all streams send at the same instants (default: "
                                                          "phases spread over one frame period)")
    p.add_argument("--workdir", type=Path, help="where the export and the server log go (default: a temporary "
                                                "directory, removed)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    counts = parse_counts(args.streams)
    if args.seconds <= 0 or args.fps <= 0 or args.threads < 1:
        raise ValueError("--seconds and --fps must be > 0 and --threads >= 1")
    if not 1 <= args.quality <= 100:
        raise ValueError("--quality must be within 1-100")
    if args.model is not None and args.temporal:
        raise ValueError("--temporal chooses what the benchmark exports; it does not apply with --model")
    if args.model is not None and not args.model.is_file():
        raise FileNotFoundError(f"{args.model}: no such ONNX file")
    info = sidecar_info(args.model) if args.model is not None else None
    if args.frame_size:
        frame_hw = parse_size(args.frame_size)
    elif info is not None:
        frame_hw = parse_size(info["frame_size"])
    else:
        frame_hw = parse_size(DEFAULT_FRAME_SIZE)

    started = time.perf_counter()
    frame_count = max(1, round(args.seconds * args.fps))
    # Read the video before the slow parts so a missing file fails at once.
    frames = encoded_frames(args.video, frame_count, frame_hw, args.quality)
    log(f"{len(frames)} frame(s) of {args.video} at {size_text(*frame_hw)}, JPEG quality {args.quality}, "
        f"{sum(map(len, frames)) / len(frames) / 1024:.0f} KiB each on average")

    report = {
        "benchmark": "service",
        "command": " ".join(["python", "bench/service.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(args.threads),
        "model": None,
        "threads": args.threads,
        "fps_per_stream": args.fps,
        "seconds": args.seconds,
        "frame_size": size_text(*frame_hw),
        "video": str(args.video),
        "jpeg_quality": args.quality,
        "jpeg_kib_mean": round(sum(map(len, frames)) / len(frames) / 1024, 1),
        "phases": "aligned" if args.aligned else "staggered",
        "latency": "server end_to_end_ms: result available minus capture_ts, capture_ts = time.time() at send "
                   "(same host clock)",
        "latency_pooling": POOLING,
        "server": None,
        "rss_idle_mb": None,
        "results": [],
    }
    temporary = None
    workdir = args.workdir
    if workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_service_")
        workdir = Path(temporary.name)
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if args.model is not None:
            model_path = args.model
            report["model"] = {**info, "exported_by_benchmark": False}
        else:
            roi_extractor = "temporal" if args.temporal else "roialign"
            log(f"exporting {PRESET} (roi_extractor={roi_extractor}, random heads) at {size_text(*frame_hw)}")
            model_path, export_s = export_lite(workdir, roi_extractor, frame_hw)
            log(f"exported in {export_s:.0f} s")
            report["model"] = {**sidecar_info(model_path), "exported_by_benchmark": True,
                               "export_s": round(export_s, 1)}
            if temporary is not None:
                report["model"]["path"] = f"(temporary) {model_path.name}"
        model = report["model"]
        if model["preset"] != PRESET:
            log(f"warning: {model_path} is preset {model['preset']!r}, not {PRESET!r}")

        server = Server(model_path, args.threads, workdir / "server.log")
        log(f"starting the server: {server.command}")
        ready_s = server.wait_ready()
        time.sleep(1.0)  # let start-up allocations settle
        rss_idle = server.rss()
        report["server"] = {"startup_s": round(ready_s, 1), "pid": server.pid,
                            "log": str(server.log_path) if temporary is None else None}
        report["rss_idle_mb"] = mb(rss_idle)
        log(f"ready in {ready_s:.1f} s; idle RSS {mb(rss_idle):.0f} MB")

        for count in counts:
            log(f"{count} stream(s) at {args.fps:g} fps for {args.seconds:g} s")
            result = asyncio.run(run_streams(server, count, frames, args.fps, args.seconds, args.aligned, rss_idle))
            report["results"].append(result)
            lat = result["latency_ms"]
            log(f"  {count} stream(s): latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms; "
                f"processed {result['processed_fps_per_stream']} fps/stream ({result['processed_fps_total']} total), "
                f"dropped {100 * (result['dropped_fraction'] or 0):.1f}%, RSS {result['rss_mb']} MB "
                f"(+{result['rss_per_stream_mb']} MB/stream), server CPU {result['server_cpu_percent']}%")
    finally:
        if server is not None:
            status = server.stop()
            if report["server"] is not None:
                report["server"]["exit_status"] = status
            if temporary is None:
                log(f"server log: {server.log_path}")
        if temporary is not None:
            temporary.cleanup()
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args, argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:  # the server failed, or talking to it did
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    parts = []
    for r in report["results"]:
        lat = r["latency_ms"]
        parts.append(f"{r['streams']}x: p50 {lat['p50']} / p99 {lat['p99']} ms, "
                     f"{r['processed_fps_per_stream']} fps/stream, +{r['rss_per_stream_mb']} MB/stream")
    log(f"summary ({report['model']['roi_extractor']}, {report['frame_size']}, "
        f"{report['fps_per_stream']:g} fps/stream, idle RSS {report['rss_idle_mb']} MB): "
        + "; ".join(parts) + f"; {report['wall_s']:.0f} s")
    failed = [r for r in report["results"] if not r["idle"] or r["errors"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
