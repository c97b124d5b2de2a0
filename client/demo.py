"""``cellwatch demo``: the whole product on a video, as a robot cell would run it.

1. ``cellwatch serve`` starts as a subprocess on 127.0.0.1
   (``client.server_process``) with a cell config written to
   ``OUT/demo-cell.yaml`` (``client.demo_setup``: from ``deploy/demo-cell.yaml``,
   one push stream ``demo`` with a hazard zone and its rings; pixel zones are
   scaled to the video's size); its log goes to ``OUT/serve.log``.
2. Once ``/readyz`` says ready, the demo subscribes to ``/v1/alerts`` (with
   masks) and pushes the video into ``/v1/streams/demo/ingest`` at the video's
   frame rate times ``--speed``, as a camera would (``client.demo_replay``).
   Safety state transitions are printed as they arrive.
3. At the end it waits for the last results, stops the server (SIGTERM, then
   kill), prints a summary, writes it to ``OUT/demo-summary.json`` and writes
   ``OUT/demo.mp4`` (``client.demo_video``): the frames it sent with person
   masks, track ids, the zones and a banner with the safety state.

Figures are what the run measured: a frame the service dropped (newest frame
wins) counts as not processed; latencies are capture time to the event's
publication (``emit_ts``) and to its arrival here. Advisory, NOT safety-rated.

``service.cli`` imports this module inside its ``demo`` subcommand only; this
package imports nothing from ``service.cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .demo_replay import Run, format_transition, replay
from .demo_setup import DEMO_CONFIG, DemoError, Video, aspect_note, open_video, resolve_model, say, write_cell_config
from .demo_video import ADVISORY, write_video
from .server_process import HOST, ServeError, ServeProcess, free_port


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "max": round(float(max(values)), 1)}


def summarise(run: Run, video: Video, model: Path, engine: str, speed: float, status: dict, safety: dict,
              out: Path, notes: list[str]) -> dict:
    sent, results = len(run.sent_ts), run.results
    emitted = [r["emit_ts"] for r in results.values()]
    duration = (run.sending_done or time.time()) - run.sent_ts[0] if sent else 0.0
    tracks = sorted({p["track_id"] for r in results.values() for p in r["persons"] if p["track_id"] is not None})
    return {
        "schema": "cellwatch.demo-summary/1",
        "video": {"path": str(video.path), "width": video.width, "height": video.height, "fps": video.fps},
        "model": str(model),
        "engine": engine,
        "speed": speed,
        "frames_sent": sent,
        "send_fps": round((sent - 1) / duration, 2) if sent > 1 and duration > 0 else None,
        "frames_processed": len(results),
        "frames_not_processed": sent - len(results),
        "service_frames": status.get("frames"),
        "processing_fps": (round(len(results) / (max(emitted) - run.sent_ts[0]), 2)
                           if emitted and max(emitted) > run.sent_ts[0] else None),
        "latency_ms": {
            "capture_to_event": _percentiles([(r["emit_ts"] - r["capture_ts"]) * 1000 for r in results.values()]),
            "capture_to_received": _percentiles([(r["received_ts"] - r["capture_ts"]) * 1000
                                                 for r in results.values()]),
        },
        "persons": {"distinct_track_ids": len(tracks), "track_ids": tracks,
                    "max_in_one_frame": max((len(r["persons"]) for r in results.values()), default=0),
                    "frames_with_persons": sum(1 for r in results.values() if r["persons"])},
        "transition_count": len(run.transitions),
        "transitions": run.transitions,
        "final_state": run.state,
        "frames_rejected": len(run.ingest_errors),
        "separation": {k: safety.get(k) for k in ("measured_p99_ms", "reaction_time_s", "protective_separation_mm")},
        "outputs": {"video": str(out / "demo.mp4"), "summary": str(out / "demo-summary.json"),
                    "config": str(out / "demo-cell.yaml"), "service_log": str(out / "serve.log")},
        "notes": notes,
        "safety_rated": False,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def print_summary(summary: dict) -> None:
    s, lat, fmt = summary, summary["latency_ms"], _fmt
    dropped = (s["service_frames"] or {}).get("dropped")
    print(f"cellwatch demo: {s['frames_sent']} frames sent ({fmt(s['send_fps'])} fps), {s['frames_processed']} "
          f"processed ({fmt(s['processing_fps'])} fps), {s['frames_not_processed']} not processed "
          f"({dropped} dropped by the service: newest frame wins)")
    print(f"  end-to-end latency, capture to event: p50 {fmt(lat['capture_to_event']['p50'])} ms, "
          f"p99 {fmt(lat['capture_to_event']['p99'])} ms; capture to this client: "
          f"p50 {fmt(lat['capture_to_received']['p50'])} ms, p99 {fmt(lat['capture_to_received']['p99'])} ms")
    print(f"  persons: {s['persons']['distinct_track_ids']} distinct track ids, up to "
          f"{s['persons']['max_in_one_frame']} in one frame, in {s['persons']['frames_with_persons']} frames")
    print(f"  safety state transitions: {s['transition_count']}; final state {s['final_state']}")
    for transition in s["transitions"]:
        print(format_transition(transition))
    separation = s["separation"].get("protective_separation_mm")
    if separation is not None:
        print(f"  ISO/TS 15066 protective separation with the measured p99 in the reaction time: {separation:.0f} mm")
    for note in s["notes"]:
        print(f"  note: {note}")
    print(f"  wrote {s['outputs']['video']} and {s['outputs']['summary']}; {ADVISORY}")



# ------------------------------------------------------------------ the run
def run_demo(args: argparse.Namespace) -> int:
    """``cellwatch demo``'s exit status: 0 when frames were processed, 1 when the
    service failed or processed none, 2 on bad input; the reason on stderr."""
    try:
        return _run(args)
    except DemoError as exc:
        say(f"error: {exc}")
        return exc.status
    except ServeError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def _run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.speed) and args.speed > 0):
        raise DemoError(f"--speed must be > 0, got {args.speed}", 2)
    if args.max_frames is not None and args.max_frames < 1:
        raise DemoError(f"--max-frames must be >= 1, got {args.max_frames}", 2)
    video = open_video(args.video)
    model = resolve_model(args.model)
    out = Path(args.out).resolve()
    base = Path(args.config) if args.config else DEMO_CONFIG
    port = args.port or free_port()
    config, zones = write_cell_config(base, out, model, port, video, scale=args.config is None)
    notes = [n for n in (aspect_note(video, model),) if n]
    for note in notes:
        say(f"note: {note}")
    say(f"starting the service: {model.name} on {HOST}:{port} (config {config}, log {out / 'serve.log'})")
    server = ServeProcess(out / "serve.log", config=config, port=port)
    try:
        engine, run, status, safety = _replay(server, video, args)
    finally:
        exit_status = server.stop()
    if exit_status not in (0, -signal.SIGTERM):
        say(f"note: the service exited with status {exit_status} (log: {server.log_path})")
    summary = summarise(run, video, model, engine, args.speed, status, safety, out, notes)
    try:
        written = write_video(out / "demo.mp4", video, run, zones)
    except OSError as exc:
        raise DemoError(str(exc)) from exc
    if written != len(run.sent_ts):
        summary["notes"].append(f"demo.mp4 has {written} of the {len(run.sent_ts)} frames sent "
                                "(the video could not be read again to the end)")
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary)
    if not summary["frames_processed"]:
        raise DemoError(f"no frame was processed (see {server.log_path})")
    return 0


def _replay(server: ServeProcess, video: Video, args: argparse.Namespace) -> tuple[str, Run, dict, dict]:
    """Once the service is ready, the video pushed into it: (engine, run, stream status, safety status)."""
    engine = str(server.wait_ready(args.ready_timeout).get("engine"))
    total = min((n for n in (args.max_frames, video.frames) if n), default=None)
    fps = video.fps * args.speed
    say(f"ready ({engine}); pushing {video.path.name} ({video.width}x{video.height}, "
        f"{total or 'all'} frames) at {fps:g} fps; {ADVISORY}")
    progress = tqdm(total=total, desc="demo", unit="frame", file=sys.stderr, mininterval=0.5)
    run = Run(progress)
    try:
        status, safety = asyncio.run(replay(server, video, run, fps, args.max_frames))
    finally:
        progress.close()
    return engine, run, status, safety
