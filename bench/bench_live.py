"""What the benchmarks of a live service share (``bench_service.py``,
``bench_alerts.py``): the model, the frames, the server, the senders.

* the model: an exported ONNX file (``--model``, its sidecar beside it) or the
  ``lite`` preset exported here with random heads (seed 0) at the camera frame
  size;
* the frames: real frames of the video, resized and JPEG-encoded before the
  run, so a sender only stamps and sends;
* the server: ``cellwatch serve`` on 127.0.0.1 through the one harness,
  ``client.server_process.ServeProcess`` (ONNX Runtime on the CPU), with its
  memory and CPU read from ``/proc`` and its REST API called with urllib;
* the senders: push streams paced on an absolute schedule, each message's
  capture time ``time.time()`` just before it is sent (the clock the server
  reads too), and the poll until every sent frame is settled.

Not a benchmark itself; imported as ``import bench_live`` (see ``bench_common``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bench_common
from client.server_process import ServeProcess
from export.spec import read_sidecar
from models.sizes import parse_size_hw
from service.framing import encode_frame

PRESET = "lite"
DEFAULT_FRAME_SIZE = "768x576"  # vtest.avi's own size
READY_TIMEOUT_S = 180.0
IDLE_TIMEOUT_S = 60.0
LATENCY_KEYS = ("p50", "p95", "p99", "max")


# ----------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser, seconds: float, per: str) -> None:
    """The options both live benchmarks have; ``seconds``: the default sending time ``per`` run."""
    p.add_argument("--seconds", type=float, default=seconds, help=f"sending time per {per} (default {seconds:g})")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per stream (default 10)")
    p.add_argument("--threads", type=int, default=2, help="the server's inference threads (default 2)")
    p.add_argument("--model", type=Path, help="an exported ONNX file (sidecar beside it); default: export lite "
                                              "(random heads)")
    p.add_argument("--frame-size", help=f"camera frame WIDTHxHEIGHT for the export and the frames sent "
                                        f"(default {DEFAULT_FRAME_SIZE}; with --model, the model's)")
    bench_common.add_video(p, "footage to send")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality of the frames sent (default 85)")
    p.add_argument("--aligned", action="store_true", help="all streams send at the same instants (default: "
                                                          "phases spread over one frame period)")
    bench_common.add_workdir(p, "the export and the server log")


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError or FileNotFoundError naming the option that is wrong."""
    if args.seconds <= 0 or args.fps <= 0 or args.threads < 1:
        raise ValueError("--seconds and --fps must be > 0 and --threads >= 1")
    if not 1 <= args.quality <= 100:
        raise ValueError("--quality must be within 1-100")
    if args.model is not None and not args.model.is_file():
        raise FileNotFoundError(f"{args.model}: no such ONNX file")


def parse_counts(text: str, flag: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; ValueError naming ``flag`` unless all are positive."""
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise ValueError(f"{flag} {text!r}: {exc}") from exc
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"{flag} {text!r}: expected positive counts, e.g. 1,2,4")
    return counts


def frame_size_hw(args: argparse.Namespace, info: dict | None) -> tuple[int, int]:
    """``--frame-size``, else the model's frame size, else vtest's."""
    return parse_size_hw(args.frame_size or (info["frame_size"] if info is not None else DEFAULT_FRAME_SIZE))


def machine(threads: int) -> dict:
    return bench_common.machine(
        device="cpu", engine="onnxruntime", ort_intra_op_threads=threads,
        **bench_common.versions("onnxruntime", "fastapi", "uvicorn", "websockets", "numpy", "opencv-python-headless"))


# ----------------------------------------------------------------- inputs
def encoded_frames(path: Path, count: int, frame_hw: tuple[int, int], quality: int) -> list[bytes]:
    """Up to ``count`` frames of the video from its start, at ``frame_hw``, as JPEG bytes."""
    import cv2

    capture = bench_common.open_video(path)
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


def sidecar_info(path: Path) -> dict:
    sidecar = read_sidecar(path)
    return {
        "path": str(path),
        "preset": sidecar.preset,
        "mode": sidecar.mode,
        # The sidecar records whether the graph has Temporal RoI Align, not the option's name.
        "roi_extractor": "temporal" if sidecar.temporal else "roialign",
        "weights": sidecar.weights or "random heads",
        "frame_size": bench_common.size_text_hw(sidecar.frame_height, sidecar.frame_width),
        "working_size": bench_common.size_text_hw(sidecar.input_height, sidecar.input_width),
        "support_frames": sidecar.support_frames,
        "mib": bench_common.mib(path.stat().st_size),
    }


def export_lite(workdir: Path, roi_extractor: str, frame_hw: tuple[int, int]) -> tuple[Path, float]:
    """Export ``lite`` (random heads, seed 0) in standard mode; returns the file and the seconds taken."""
    from export.onnx import export_onnx, resolve_model  # torch: only when exporting

    path = workdir / f"{PRESET}_{roi_extractor}_{bench_common.size_text_hw(*frame_hw)}.onnx"
    started = time.perf_counter()
    model, _ = resolve_model(PRESET, None, {"roi_extractor": roi_extractor}, random_init=True)
    export_onnx(model, path, "standard", frame_size=frame_hw)
    return path, time.perf_counter() - started


def prepare_model(args: argparse.Namespace, info: dict | None, workdir: Path, temporary: bool, roi_extractor: str,
                  frame_hw: tuple[int, int], log: Callable[[str], None]) -> tuple[Path, dict]:
    """``--model``, or ``lite`` exported into ``workdir``: its path and its report entry."""
    if args.model is not None:
        return args.model, {**info, "exported_by_benchmark": False}
    size = bench_common.size_text_hw(*frame_hw)
    log(f"exporting {PRESET} (roi_extractor={roi_extractor}, random heads) at {size}")
    path, export_s = export_lite(workdir, roi_extractor, frame_hw)
    log(f"exported in {export_s:.0f} s")
    model = {**sidecar_info(path), "exported_by_benchmark": True, "export_s": round(export_s, 1)}
    if temporary:
        model["path"] = f"(temporary) {path.name}"
    return path, model


# ----------------------------------------------------------------- the server
class HttpError(RuntimeError):
    pass


@contextmanager
def running_service(model: Path, threads: int, workdir: Path, temporary: bool, report: dict,
                    log: Callable[[str], None]) -> Iterator[ServeProcess]:
    """The service on ``model``, ready; ``report["server"]`` says its start-up time, pid,
    log (unless temporary) and, once stopped (SIGTERM), its exit status."""
    server = ServeProcess(workdir / "server.log", model=model, threads=threads)
    log(f"starting the server: {' '.join(server.command)}")
    try:
        started = time.perf_counter()
        server.wait_ready(READY_TIMEOUT_S)
        report["server"] = {"startup_s": round(time.perf_counter() - started, 1), "pid": server.pid,
                            "log": None if temporary else str(server.log_path)}
        yield server
    finally:
        status = server.stop()
        if report.get("server") is not None:
            report["server"]["exit_status"] = status
        if not temporary:
            log(f"server log: {server.log_path}")


def request(server: ServeProcess, method: str, path: str, body: dict | None = None,
            timeout: float = 10.0) -> dict | None:
    """The service's JSON answer; HttpError naming the call on an HTTP error."""
    data = None if body is None else json.dumps(body).encode()
    call = urllib.request.Request(server.url + path, data=data, method=method,
                                  headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as exc:
        raise HttpError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
    return json.loads(text) if text else None


def metrics_text(server: ServeProcess) -> str:
    with urllib.request.urlopen(server.url + "/metrics", timeout=10.0) as response:
        return response.read().decode()


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


# ----------------------------------------------------------------- senders
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

    def duration(self, period: float) -> float:
        """First send to last send plus one frame period (0 when nothing was sent)."""
        return (self.last_send - self.first_send) + period if self.sent else 0.0


def senders(prefix: str, count: int, frames: int, period: float, aligned: bool) -> list[Sender]:
    """``count`` senders starting at spread-out frames, their phases spread over one period unless ``aligned``."""
    return [Sender(f"{prefix}-{i}", first_frame=(i * frames) // count, offset_s=0.0 if aligned else i * period / count)
            for i in range(count)]


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


async def close_all(websockets: list, readers: list[asyncio.Task]) -> None:
    """Close the ingest connections and let their reply readers end (5 s each at most)."""
    for websocket in websockets:
        await websocket.close()
    for reader in readers:
        try:
            await asyncio.wait_for(reader, timeout=5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            reader.cancel()


def stream_done(status: dict, sent: int) -> bool:
    frames = status["frames"]
    settled = frames["processed"] + frames["dropped"] + frames["errors"]
    return frames["received"] >= sent and settled >= frames["received"]


async def wait_idle(server: ServeProcess, senders: list[Sender], timeout: float) -> tuple[list[dict], bool, float]:
    """Each stream's status once every sent frame is received and settled, or at ``timeout``:
    ``(statuses, idle, seconds waited)``."""
    started = time.perf_counter()
    while True:
        statuses = await asyncio.gather(
            *(asyncio.to_thread(request, server, "GET", f"/v1/streams/{s.stream_id}") for s in senders)
        )
        idle = all(stream_done(st, s.sent) for st, s in zip(statuses, senders))
        waited = time.perf_counter() - started
        if idle or waited > timeout:
            return list(statuses), idle, waited
        await asyncio.sleep(0.1)


def pool_latency(per_stream: list[dict]) -> dict:
    """Per-stream percentiles -> pooled ones: p50 weighted by frames processed (exact
    for one stream), p95/p99 the largest stream's (an upper bound), max exact."""
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


def report_header(benchmark: str, script: str, args: argparse.Namespace, argv: list[str] | None,
                  frame_hw: tuple[int, int]) -> dict:
    """The report's first keys, as both live benchmarks write them."""
    return {
        "benchmark": benchmark,
        "command": bench_common.command(script, argv),
        "machine": machine(args.threads),
        "model": None,
        "threads": args.threads,
        "fps_per_stream": args.fps,
        "seconds": args.seconds,
        "frame_size": bench_common.size_text_hw(*frame_hw),
        "video": str(args.video),
        "jpeg_quality": args.quality,
        "phases": "aligned" if args.aligned else "staggered",
        "server": None,
    }
