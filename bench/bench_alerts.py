"""Alert latency of the cellwatch service: frame capture -> that frame's event at a /v1/alerts subscriber.

Usage: python bench/bench_alerts.py [--streams 1,4] [--subscribers 1,50] [--seconds 15] [--fps 10]
           [--threads 2] [--model M.onnx] [--frame-size 768x576] [--video vtest.avi]
           [--quality 85] [--zones JSON] [--masks] [--no-deflate] [--aligned]
           [--workdir DIR] [--out FILE]

The server, the model and the pushed frames are those of ``bench_service.py``
(both take them from ``bench_live.py``): ``python -m service.cli serve`` in a
subprocess on 127.0.0.1 (``client.server_process``), ONNX Runtime on the CPU, the ``lite`` preset exported
with random heads and ``roi_extractor=roialign`` at the camera frame size
unless ``--model`` names an ONNX file, and real vtest.avi frames, JPEG-encoded
before the run, pushed over ``/v1/streams/{id}/ingest`` at ``--fps`` per stream
for ``--seconds``, each stamped ``capture_ts = time.time()`` just before it is
sent.

For every combination of N streams (``--streams``) and M subscribers
(``--subscribers``), on the one server, in turn:

1. N push streams are created with a zone set (``--zones``; default a hazard
   rectangle in vtest's frame with an 80 px warning ring), so ``persons``
   events carry distances and zones;
2. M WebSocket clients connect to ``/v1/alerts?streams=<the N ids>&masks=0``
   (``--masks``: masks=1) and each waits for its first event (a heartbeat), so
   every subscription is registered before the first frame;
3. the N senders push; each subscriber only stamps every message with
   ``time.time()`` as ``recv()`` returns it and keeps the text (parsing comes
   after the run, so it does not delay the other subscribers' receipts);
4. after the last frame the benchmark waits until the server has settled every
   frame (``bench_live.wait_idle``) and every subscriber holds a
   ``persons`` event for every processed frame (or ``--drain-timeout``), then
   closes the subscribers and, after a heartbeat period or two (the
   server's alerts handler notices a closed client only when a send fails),
   deletes the streams.

Latency, per event, = receive time - the event's ``capture_ts`` (the sender's
clock, the same host clock), in ms:

* ``persons_latency_ms``: every ``persons`` event (one per processed frame)
  of every subscriber, pooled; ``persons_latency_worst_subscriber``: the
  subscriber whose own p99 is largest (with one subscriber, that one);
* ``state_latency_ms``: ``state`` events that carry a ``capture_ts`` (state
  transitions decided on a frame), pooled; transitions from the watchdog or
  stream creation carry none and are only counted;
* ``persons_breakdown_ms``: the pooled persons latency split at the event's
  ``emit_ts`` (when the server published it): ``server`` = emit - capture
  (decode, queueing, inference, tracking, zones), ``delivery`` = receive -
  emit (fan-out, JSON, WebSocket, the client's loop);
* ``server_end_to_end_ms``: the service's own end-to-end figure (result
  available - capture; pooled from the streams' percentiles as in
  ``bench_service.py``), for comparison.

Also per combination: events received per subscriber (total and by type),
persons events missing (processed frames without an event at a subscriber),
gaps and duplicates in the per-stream ``seq``, every subscriber the server
closed (``closed_1013``: the subscribers closed with 1013, too slow), what the
persons events held (distances, zones, states), the client's event-loop lag
and CPU (every sender and subscriber runs in this one asyncio process: its lag
bounds the error it adds to receive times), the server's CPU and the load
average.

Prints one JSON object on stdout (``table`` sums it up); progress and a
summary go to stderr. Exit status: 0 when every combination ran, went idle
with no failed frame and kept its subscribers connected; 1 otherwise; 2 on bad
arguments, a missing video or model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

import bench_common
import bench_live
from bench_live import Sender, read_cpu_seconds
from bench_subscribers import Subscriber, analyse, close_subscribers, connect_subscribers, content, drain
from client.server_process import ServeProcess

DEFAULT_STREAMS = "1,4"
DEFAULT_SUBSCRIBERS = "1,50"
DEFAULT_SECONDS = 15.0
DEFAULT_ZONES = {"units": "pixels", "hazard": [[300, 300], [470, 300], [470, 560], [300, 560]],
                 "warning": {"distance": 80}}
DRAIN_TIMEOUT_S = 15.0
LAG_PERIOD_S = 0.005
HANDLER_EXIT_S = 0.75  # > 2 heartbeat periods (events.heartbeat_ms, default 250)
PROGRESS_EVERY_S = 5.0
LATENCY = ("receive time at the subscriber (time.time() when recv() returns) minus the event's capture_ts "
           "(time.time() just before the frame was sent); same host clock")

log = bench_common.logger("alerts")


# ----------------------------------------------------------------- progress
async def loop_lag(samples: list[float]) -> None:
    """How late this process's event loop wakes a 5 ms sleep (s)."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_PERIOD_S)
        samples.append(loop.time() - before - LAG_PERIOD_S)


async def progress(senders: list[Sender], subscribers: list[Subscriber], count: int, label: str) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        sent = min(s.sent for s in senders)
        messages = [len(s.received) for s in subscribers]
        closed = sum(s.closed_by_server for s in subscribers)
        log(f"  {label}: {sent}/{count} frames sent per stream; messages per subscriber "
            f"{min(messages)}..{max(messages)}" + (f"; {closed} subscriber(s) closed by the server" if closed else ""))


# ----------------------------------------------------------------- one combination
async def run_combination(server: ServeProcess, n_streams: int, n_subscribers: int, frames: list[bytes],
                          fps: float, seconds: float, zones: dict, masks: bool, deflate: bool, aligned: bool,
                          drain_timeout: float) -> dict:
    period = 1.0 / fps
    frame_count = max(1, round(seconds * fps))
    label = (f"{n_streams} stream{'s' if n_streams > 1 else ''} x "
             f"{n_subscribers} subscriber{'s' if n_subscribers > 1 else ''}")
    senders = bench_live.senders(f"alerts-{n_streams}s{n_subscribers}x", n_streams, len(frames), period, aligned)
    stream_ids = [s.stream_id for s in senders]
    for sender in senders:
        await asyncio.to_thread(bench_live.request, server, "POST", "/v1/streams",
                                {"id": sender.stream_id, "source": "push", "zones": zones})
    subscribers: list[Subscriber] = []
    load_before = bench_common.load_average()
    try:
        subscribers, readers = await connect_subscribers(server.ws_url, stream_ids, n_subscribers, masks, deflate)
        run = await push_and_drain(server, senders, subscribers, readers, frames, frame_count, period, label,
                                   drain_timeout)
    finally:
        if subscribers:
            # The server's /v1/alerts handler only sends, so it learns of a
            # client's close when its next send fails: wait for a heartbeat of
            # the still existing streams. Deleting them first leaves the handler
            # waiting for an event that never comes (and uvicorn's graceful
            # shutdown waiting for the handler).
            await asyncio.sleep(HANDLER_EXIT_S)
        for sender in senders:
            try:
                await asyncio.to_thread(bench_live.request, server, "DELETE", f"/v1/streams/{sender.stream_id}")
            except (OSError, bench_live.HttpError) as exc:
                log(f"  could not delete {sender.stream_id}: {exc}")
    if not run["idle"]:
        log(f"  {label}: not idle {run['idle_wait']:.0f} s after the last frame; recording the status as it is")
    if not run["drained"]:
        log(f"  {label}: some subscriber still lacked persons events {run['drain_wait']:.0f} s after idle")
    return {**combination_result(senders, subscribers, run, period),
            "load_average_before": load_before, "load_average_after": bench_common.load_average()}


async def push_and_drain(server: ServeProcess, senders: list[Sender], subscribers: list[Subscriber],
                         readers: list[asyncio.Task], frames: list[bytes], frame_count: int, period: float,
                         label: str, drain_timeout: float) -> dict:
    """Push every stream's frames while the subscribers listen; wait until the service is
    idle and the subscribers hold every persons event; close the subscribers."""
    from websockets.asyncio.client import connect

    websockets, ingest_readers, tasks, lag = [], [], [], []
    try:
        websockets = [
            await connect(f"{server.ws_url}/v1/streams/{s.stream_id}/ingest",
                          compression=None, proxy=None, max_size=2**20, open_timeout=10)
            for s in senders
        ]
        ingest_readers = [asyncio.create_task(bench_live.collect_replies(ws, s)) for ws, s in zip(websockets, senders)]
        tasks = [asyncio.create_task(loop_lag(lag)),
                 asyncio.create_task(progress(senders, subscribers, frame_count, label))]
        start = asyncio.get_running_loop().time() + 0.2
        server_cpu, client_cpu, wall_start = read_cpu_seconds(server.pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(bench_live.push(ws, s, frames, frame_count, period, start)
                               for ws, s in zip(websockets, senders)))
        wall = time.perf_counter() - wall_start
        server_cpu, client_cpu = read_cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
        tasks[1].cancel()
        statuses, idle, idle_wait = await bench_live.wait_idle(server, senders, bench_live.IDLE_TIMEOUT_S)
        processed = {s.stream_id: st["frames"]["processed"] for s, st in zip(senders, statuses)}
        drained, drain_wait = await drain(subscribers, processed, drain_timeout)
    finally:
        for task in tasks:
            task.cancel()
        await close_subscribers(subscribers, readers)
        await bench_live.close_all(websockets, ingest_readers)
    return {"statuses": statuses, "processed": processed, "idle": idle, "idle_wait": idle_wait, "drained": drained,
            "drain_wait": drain_wait, "wall_start": wall_start, "lag": lag,
            "client_cpu_percent": round(100.0 * client_cpu / wall, 1) if wall else None,
            "server_cpu_percent": round(100.0 * server_cpu / wall, 1) if wall else None}


def combination_result(senders: list[Sender], subscribers: list[Subscriber], run: dict, period: float) -> dict:
    per_stream = []
    for sender, status in zip(senders, run["statuses"]):
        counts = status["frames"]
        duration = sender.duration(period)
        per_stream.append({
            "id": sender.stream_id, "sent": sender.sent, "late_sends": sender.late,
            "received": counts["received"], "processed": counts["processed"], "dropped": counts["dropped"],
            "errors": counts["errors"],
            "processed_fps": round(counts["processed"] / duration, 2) if duration else 0.0,
            "latency_ms": status["latency_ms"], "last_error": status["last_error"],
            "server_messages": sender.server_errors[:5],
        })
    closed = [{"subscriber": s.index, "code": s.close_code, "reason": s.close_reason,
               "after_s": round(s.closed_at - run["wall_start"], 2)} for s in subscribers if s.closed_by_server]
    received = sum(s["received"] for s in per_stream)
    return {
        "streams": len(senders),
        "subscribers": len(subscribers),
        "idle": run["idle"],
        "idle_wait_s": round(run["idle_wait"], 2),
        "drained": run["drained"],
        "drain_wait_s": round(run["drain_wait"], 2),
        "frames": {key: sum(s[key] for s in per_stream)
                   for key in ("sent", "received", "processed", "dropped", "errors")},
        "dropped_fraction": round(sum(s["dropped"] for s in per_stream) / received, 4) if received else None,
        "processed_fps_per_stream": round(sum(s["processed_fps"] for s in per_stream) / len(senders), 2),
        **analyse(subscribers, [s.stream_id for s in senders], run["processed"]),
        "server_end_to_end_ms": bench_live.pool_latency(per_stream),
        "closed_by_server": closed,
        "closed_1013": [c["subscriber"] for c in closed if c["code"] == 1013],
        "deflate_negotiated": all(s.deflate for s in subscribers),
        "events_seen_by_subscriber_0": content(subscribers[0]),
        "per_stream": per_stream,
        "client_loop_lag_ms": bench_common.summary(np.asarray(run["lag"]) * 1000.0),
        "client_cpu_percent": run["client_cpu_percent"],
        "server_cpu_percent": run["server_cpu_percent"],
    }


# ----------------------------------------------------------------- report
def table_row(result: dict) -> dict:
    persons, state = result["persons_latency_ms"], result["state_latency_ms"]
    worst = result["persons_latency_worst_subscriber"] or {}
    return {
        "streams": result["streams"], "subscribers": result["subscribers"],
        "persons_n": persons["n"], "persons_p50_ms": persons["p50"], "persons_p99_ms": persons["p99"],
        "persons_max_ms": persons["max"], "worst_subscriber_p99_ms": worst.get("p99"),
        "state_n": state["n"], "state_p50_ms": state["p50"], "state_p99_ms": state["p99"], "state_max_ms": state["max"],
        "server_p50_ms": result["persons_breakdown_ms"]["server"]["p50"],
        "delivery_p99_ms": result["persons_breakdown_ms"]["delivery"]["p99"],
        "events_per_subscriber": result["events_per_subscriber"]["mean"],
        "missing_persons_events": result["missing_persons_events"],
        "closed_1013": len(result["closed_1013"]),
        "processed_fps_per_stream": result["processed_fps_per_stream"],
        "dropped_fraction": result["dropped_fraction"],
    }


def parse_zones(text: str | None) -> dict:
    if text is None:
        return DEFAULT_ZONES
    path = Path(text)
    try:
        zones = json.loads(path.read_text() if not text.lstrip().startswith("{") and path.is_file() else text)
    except ValueError as exc:
        raise ValueError(f"--zones: not JSON ({exc})") from exc
    if not isinstance(zones, dict):
        raise ValueError("--zones: expected a JSON object (a zone set)")
    return zones


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_common.parser(__file__, __doc__)
    p.add_argument("--streams", default=DEFAULT_STREAMS, help=f"stream counts (default {DEFAULT_STREAMS})")
    p.add_argument("--subscribers", default=DEFAULT_SUBSCRIBERS,
                   help=f"subscriber counts, each run with every stream count (default {DEFAULT_SUBSCRIBERS})")
    bench_live.add_arguments(p, seconds=DEFAULT_SECONDS, per="combination")
    p.add_argument("--zones", help="each stream's zone set: JSON text or a JSON file (default: "
                                   + json.dumps(DEFAULT_ZONES, separators=(",", ":")) + ")")
    p.add_argument("--masks", action="store_true", help="subscribe with masks=1 (default masks=0)")
    p.add_argument("--no-deflate", action="store_true", help="subscribers offer no permessage-deflate "
                                                             "(default: offered, as websockets and browsers do)")
    p.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_S,
                   help=f"seconds to wait after idle for subscribers' last events (default {DRAIN_TIMEOUT_S:g})")
    return p.parse_args(argv)


def check_zones(args: argparse.Namespace) -> dict:
    """The zone set of ``--zones`` (or the default), checked as the service checks it."""
    from service.zones import ZoneError, ZoneSet

    zones = parse_zones(args.zones)
    try:
        ZoneSet.from_spec(zones)
    except ZoneError as exc:
        raise ValueError(f"--zones: {exc}") from exc
    return zones


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    stream_counts = bench_live.parse_counts(args.streams, "--streams")
    subscriber_counts = bench_live.parse_counts(args.subscribers, "--subscribers")
    if args.drain_timeout < 0:
        raise ValueError("--drain-timeout must be >= 0")
    bench_live.check_arguments(args)
    zones = check_zones(args)
    info = bench_live.sidecar_info(args.model) if args.model is not None else None
    frame_hw = bench_live.frame_size_hw(args, info)

    started = time.perf_counter()
    frames = bench_live.encoded_frames(args.video, max(1, round(args.seconds * args.fps)), frame_hw, args.quality)
    log(f"{len(frames)} frame(s) of {args.video} at {bench_common.size_text_hw(*frame_hw)}, "
        f"JPEG quality {args.quality}")
    report = {**bench_live.report_header("alerts", __file__, args, argv, frame_hw), "zones": zones,
              "masks": args.masks, "deflate_offered": not args.no_deflate, "latency": LATENCY, "table": [],
              "results": []}
    with bench_common.workdir(args.workdir, "bench_alerts_") as (workdir, temporary):
        model_path, report["model"] = bench_live.prepare_model(args, info, workdir, temporary, "roialign", frame_hw,
                                                               log)
        with bench_live.running_service(model_path, args.threads, workdir, temporary, report, log) as server:
            log(f"ready in {report['server']['startup_s']:.1f} s")
            for n_streams in stream_counts:
                for n_subscribers in subscriber_counts:
                    run_one(server, n_streams, n_subscribers, frames, zones, args, report)
    return bench_common.finish(report, started)


def run_one(server: ServeProcess, n_streams: int, n_subscribers: int, frames: list[bytes], zones: dict,
            args: argparse.Namespace, report: dict) -> None:
    """One combination of stream and subscriber counts, into the report's results and table."""
    log(f"{n_streams} stream(s) x {n_subscribers} subscriber(s) at {args.fps:g} fps for {args.seconds:g} s")
    result = asyncio.run(run_combination(
        server, n_streams, n_subscribers, frames, args.fps, args.seconds, zones, args.masks,
        not args.no_deflate, args.aligned, args.drain_timeout))
    report["results"].append(result)
    row = table_row(result)
    report["table"].append(row)
    log(f"  persons p50/p99/max {row['persons_p50_ms']}/{row['persons_p99_ms']}/{row['persons_max_ms']} ms "
        f"(n={row['persons_n']}, worst subscriber p99 {row['worst_subscriber_p99_ms']}); state "
        f"p50/p99/max {row['state_p50_ms']}/{row['state_p99_ms']}/{row['state_max_ms']} ms "
        f"(n={row['state_n']}); {row['events_per_subscriber']} events/subscriber, "
        f"{row['closed_1013']} closed with 1013, {row['missing_persons_events']} persons events missing; "
        f"client loop lag p99 {result['client_loop_lag_ms']['p99']} ms, "
        f"load {result['load_average_after'][0]}")
    time.sleep(1.0)  # let the deleted streams' tasks wind down


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report, status = bench_common.guarded(run, args, argv)
    if report is None:
        return status
    bench_common.emit(report, args.out)
    parts = [f"{r['streams']}s x {r['subscribers']}sub: persons p50 {r['persons_p50_ms']} / p99 {r['persons_p99_ms']} "
             f"ms (worst sub p99 {r['worst_subscriber_p99_ms']})" for r in report["table"]]
    log(f"summary ({report['model']['roi_extractor']}, {report['frame_size']}, "
        f"{report['fps_per_stream']:g} fps/stream): "
        + "; ".join(parts) + f"; {report['wall_s']:.0f} s")
    failed = [r for r in report["results"]
              if not r["idle"] or r["frames"]["errors"] or r["closed_by_server"] or not r["drained"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
