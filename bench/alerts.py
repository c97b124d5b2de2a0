"""Alert latency of the cellwatch service: frame capture -> that frame's event at a /v1/alerts subscriber.

Usage: python bench/alerts.py [--streams 1,4] [--subscribers 1,50] [--seconds 15] [--fps 10]
           [--threads 2] [--model M.onnx] [--frame-size 768x576] [--video vtest.avi]
           [--quality 85] [--zones JSON] [--masks] [--no-deflate] [--aligned]
           [--workdir DIR] [--out FILE]

The server, the model and the pushed frames are those of ``bench/service.py``
(whose functions this script imports): ``python -m service.cli serve`` in a
subprocess on 127.0.0.1, ONNX Runtime on the CPU, the ``lite`` preset exported
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
   frame (``bench/service.py``'s idle poll) and every subscriber holds a
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
  ``bench/service.py``), for comparison.

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
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVICE_BENCH = Path(__file__).resolve().with_name("service.py")
sys.path.insert(0, str(ROOT))  # before bench/, which holds a service.py too


def _service_bench():
    """``bench/service.py`` as a module (bench/ is no package and "service" is the service package)."""
    name = "bench_service_script"
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == SERVICE_BENCH:
        return module
    spec = importlib.util.spec_from_file_location(name, SERVICE_BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


bench = _service_bench()

DEFAULT_STREAMS = "1,4"
DEFAULT_SUBSCRIBERS = "1,50"
DEFAULT_SECONDS = 15.0
DEFAULT_ZONES = {"units": "pixels", "hazard": [[300, 300], [470, 300], [470, 560], [300, 560]],
                 "warning": {"distance": 80}}
SUBSCRIBE_TIMEOUT_S = 15.0
DRAIN_TIMEOUT_S = 15.0
LAG_PERIOD_S = 0.005
HANDLER_EXIT_S = 0.75  # > 2 heartbeat periods (events.heartbeat_ms, default 250)
PROGRESS_EVERY_S = 5.0
STATE_EXAMPLES = 12
LATENCY = ("receive time at the subscriber (time.time() when recv() returns) minus the event's capture_ts "
           "(time.time() just before the frame was sent); same host clock")


def log(message: str) -> None:
    print(f"[bench.alerts] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- statistics
def summary_ms(values) -> dict:
    """``n``, ``p50``, ``p99``, ``max`` of latencies in ms (numpy's linear percentiles); None when empty."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": int(values.size), "p50": round(float(np.percentile(values, 50)), 2),
            "p99": round(float(np.percentile(values, 99)), 2), "max": round(float(values.max()), 2)}


def parse_counts(text: str, flag: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise ValueError(f"{flag} {text!r}: {exc}") from exc
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"{flag} {text!r}: expected positive counts, e.g. 1,4")
    return counts


# ----------------------------------------------------------------- subscribers
@dataclass
class Subscriber:
    index: int
    websocket: Any = None
    received: list[tuple[float, Any]] = field(default_factory=list)  # (receive time, raw message)
    events: list[tuple[float, dict]] = field(default_factory=list)  # the same, parsed (after the run)
    persons_seqs: dict[str, set[int]] = field(default_factory=dict)
    deflate: bool | None = None
    closing: bool = False  # the benchmark closed it
    close_code: int | None = None
    close_reason: str | None = None
    closed_at: float | None = None

    @property
    def closed_by_server(self) -> bool:
        return self.closed_at is not None and not self.closing

    def parse_new(self) -> None:
        for received_at, message in self.received[len(self.events):]:
            text = message.decode(errors="replace") if isinstance(message, bytes) else message
            try:
                event = json.loads(text)
            except ValueError:
                event = {"type": "(not JSON)", "text": text[:200]}
            if not isinstance(event, dict):
                event = {"type": "(not an object)"}
            self.events.append((received_at, event))
            if event.get("type") == "persons" and isinstance(event.get("seq"), int):
                self.persons_seqs.setdefault(event.get("stream_id"), set()).add(event["seq"])


async def listen(subscriber: Subscriber) -> None:
    """Stamp and keep every message; nothing else, so receipts stay prompt."""
    from websockets.exceptions import ConnectionClosed

    websocket, received = subscriber.websocket, subscriber.received
    try:
        while True:
            message = await websocket.recv()
            received.append((time.time(), message))
    except ConnectionClosed as exc:
        subscriber.closed_at = time.time()
        if exc.rcvd is not None:
            subscriber.close_code, subscriber.close_reason = exc.rcvd.code, exc.rcvd.reason
        else:
            subscriber.close_code, subscriber.close_reason = None, "closed without a close frame"


async def connect_subscribers(port: int, stream_ids: list[str], count: int, masks: bool,
                              deflate: bool) -> tuple[list[Subscriber], list[asyncio.Task]]:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/v1/alerts?streams={','.join(stream_ids)}&masks={int(masks)}"
    subscribers, readers = [], []
    for index in range(count):
        websocket = await connect(url, compression="deflate" if deflate else None, proxy=None,
                                  max_size=2**24, open_timeout=10)
        extensions = websocket.response.headers.get("Sec-WebSocket-Extensions") or ""
        subscriber = Subscriber(index, websocket, deflate="permessage-deflate" in extensions)
        subscribers.append(subscriber)
        readers.append(asyncio.create_task(listen(subscriber)))
    # A subscription is registered after the handshake; its first event (a
    # heartbeat, 4 a second per stream) shows it is.
    deadline = time.perf_counter() + SUBSCRIBE_TIMEOUT_S
    while any(not s.received and s.closed_at is None for s in subscribers):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"a subscriber got no event within {SUBSCRIBE_TIMEOUT_S:.0f} s of connecting")
        await asyncio.sleep(0.05)
    for subscriber in subscribers:
        if subscriber.closed_at is not None:
            subscriber.parse_new()
            first = subscriber.events[0][1] if subscriber.events else {}
            raise RuntimeError(f"subscriber {subscriber.index} was closed at once ({subscriber.close_code} "
                               f"{subscriber.close_reason}): {first}")
    for subscriber in subscribers:  # what arrived before the first frame is not measured
        subscriber.received.clear()
    return subscribers, readers


async def close_subscribers(subscribers: list[Subscriber], readers: list[asyncio.Task]) -> None:
    for subscriber in subscribers:
        if subscriber.closed_at is None:
            subscriber.closing = True
            await subscriber.websocket.close()
    for reader in readers:
        try:
            await asyncio.wait_for(reader, timeout=5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            reader.cancel()


async def drain(subscribers: list[Subscriber], processed: dict[str, int], timeout: float) -> tuple[bool, float]:
    """Wait until every open subscriber holds a persons event for each processed frame."""
    started = time.perf_counter()
    await asyncio.sleep(0.2)
    while True:
        complete = True
        for subscriber in subscribers:
            subscriber.parse_new()
            if subscriber.closed_at is None and any(len(subscriber.persons_seqs.get(stream_id, ())) < count
                                                    for stream_id, count in processed.items()):
                complete = False
            await asyncio.sleep(0)
        waited = time.perf_counter() - started
        if complete or waited > timeout:
            return complete, waited
        await asyncio.sleep(0.1)


async def loop_lag(samples: list[float]) -> None:
    """How late this process's event loop wakes a 5 ms sleep (s)."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_PERIOD_S)
        samples.append(loop.time() - before - LAG_PERIOD_S)


async def progress(senders, subscribers: list[Subscriber], count: int, label: str) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        sent = min(s.sent for s in senders)
        messages = [len(s.received) for s in subscribers]
        closed = sum(s.closed_by_server for s in subscribers)
        log(f"  {label}: {sent}/{count} frames sent per stream; messages per subscriber "
            f"{min(messages)}..{max(messages)}" + (f"; {closed} subscriber(s) closed by the server" if closed else ""))


# ----------------------------------------------------------------- one combination
def analyse(subscribers: list[Subscriber], stream_ids: list[str], processed: dict[str, int]) -> dict:
    """Latencies and counts from what the subscribers received."""
    persons_all, state_all, server_part, delivery_part = [], [], [], []
    per_subscriber = []
    types_total: Counter = Counter()
    missing = gaps = duplicates = state_without_capture = 0
    wanted = set(stream_ids)
    for subscriber in subscribers:
        subscriber.parse_new()
        persons, state = [], []
        types: Counter = Counter()
        seqs: dict[str, list[int]] = {}
        for received_at, event in subscriber.events:
            kind = event.get("type")
            types[kind] += 1
            if event.get("stream_id") not in wanted:
                continue
            if isinstance(event.get("seq"), int):
                seqs.setdefault(event["stream_id"], []).append(event["seq"])
            capture_ts, emit_ts = event.get("capture_ts"), event.get("emit_ts")
            if kind == "persons" and capture_ts is not None:
                persons.append((received_at - capture_ts) * 1000.0)
                if emit_ts is not None:
                    server_part.append((emit_ts - capture_ts) * 1000.0)
                    delivery_part.append((received_at - emit_ts) * 1000.0)
            elif kind == "state":
                if capture_ts is not None:
                    state.append((received_at - capture_ts) * 1000.0)
                else:
                    state_without_capture += 1
        for values in seqs.values():
            distinct = set(values)
            duplicates += len(values) - len(distinct)
            gaps += max(values) - min(values) + 1 - len(distinct)
        missing_here = sum(max(0, count - len(subscriber.persons_seqs.get(stream_id, ())))
                           for stream_id, count in processed.items())
        missing += missing_here
        persons_all.extend(persons)
        state_all.extend(state)
        types_total.update(types)
        per_subscriber.append({"events": len(subscriber.events), "types": dict(types), "missing_persons": missing_here,
                               "persons": summary_ms(persons), "state": summary_ms(state)})

    def worst(key: str) -> dict | None:
        rows = [(i, row[key]) for i, row in enumerate(per_subscriber) if row[key]["n"]]
        if not rows:
            return None
        index, stats = max(rows, key=lambda r: r[1]["p99"])
        return {"subscriber": index, **stats}

    events = [row["events"] for row in per_subscriber]
    count = len(subscribers)
    return {
        "persons_latency_ms": summary_ms(persons_all),
        "persons_latency_worst_subscriber": worst("persons"),
        "persons_p99_per_subscriber": [row["persons"]["p99"] for row in per_subscriber],
        "state_latency_ms": summary_ms(state_all),
        "state_latency_worst_subscriber": worst("state"),
        "state_events_without_capture_ts": state_without_capture,
        "persons_breakdown_ms": {"server": summary_ms(server_part), "delivery": summary_ms(delivery_part)},
        "events_per_subscriber": {"min": min(events), "mean": round(sum(events) / count, 1), "max": max(events),
                                  "counts": events},
        "events_by_type_per_subscriber": {kind: round(n / count, 1) for kind, n in sorted(types_total.items(),
                                                                                           key=lambda kv: str(kv[0]))},
        "missing_persons_events": missing,
        "seq_gaps": gaps,
        "seq_duplicates": duplicates,
    }


def content(subscriber: Subscriber) -> dict:
    """What one subscriber's events held: persons, distances, zones and states."""
    frames_with_persons = persons = with_distance = 0
    zones: Counter = Counter()
    states: Counter = Counter()
    closest = None
    transitions = []
    for received_at, event in subscriber.events:
        kind = event.get("type")
        if kind == "persons":
            people = event.get("persons") or []
            frames_with_persons += bool(people)
            states[event.get("state")] += 1
            for person in people:
                persons += 1
                zones[person.get("zone") or "none"] += 1
                if person.get("distance") is not None:
                    with_distance += 1
                    closest = person["distance"] if closest is None else min(closest, person["distance"])
        elif kind == "state" and len(transitions) < STATE_EXAMPLES:
            capture_ts = event.get("capture_ts")
            transitions.append({
                "stream_id": event.get("stream_id"), "state": event.get("state"), "latched": event.get("latched"),
                "reason": (event.get("reason") or "")[:120],
                "latency_ms": None if capture_ts is None else round((received_at - capture_ts) * 1000.0, 1),
            })
    return {"subscriber": subscriber.index, "persons_events_with_persons": frames_with_persons, "persons": persons,
            "persons_with_distance": with_distance, "closest_distance": closest, "zones": dict(zones),
            "state_in_persons_events": {str(k): v for k, v in states.items()}, "state_events": transitions}


async def run_combination(server, n_streams: int, n_subscribers: int, frames: list[bytes], fps: float, seconds: float,
                          zones: dict, masks: bool, deflate: bool, aligned: bool, drain_timeout: float) -> dict:
    from websockets.asyncio.client import connect

    period = 1.0 / fps
    frame_count = max(1, round(seconds * fps))
    label = (f"{n_streams} stream{'s' if n_streams > 1 else ''} x "
             f"{n_subscribers} subscriber{'s' if n_subscribers > 1 else ''}")
    senders = [
        bench.Sender(f"alerts-{n_streams}s{n_subscribers}x-{i}", first_frame=(i * len(frames)) // n_streams,
                     offset_s=0.0 if aligned else i * period / n_streams)
        for i in range(n_streams)
    ]
    stream_ids = [s.stream_id for s in senders]
    for sender in senders:
        await asyncio.to_thread(server.request, "POST", "/v1/streams",
                                {"id": sender.stream_id, "source": "push", "zones": zones})
    subscribers, readers = [], []
    websockets, ingest_readers, tasks = [], [], []
    lag: list[float] = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        subscribers, readers = await connect_subscribers(server.port, stream_ids, n_subscribers, masks, deflate)
        websockets = [
            await connect(f"ws://127.0.0.1:{server.port}/v1/streams/{s.stream_id}/ingest",
                          compression=None, proxy=None, max_size=2**20, open_timeout=10)
            for s in senders
        ]
        ingest_readers = [asyncio.create_task(bench.collect_replies(ws, s)) for ws, s in zip(websockets, senders)]
        tasks = [asyncio.create_task(loop_lag(lag)),
                 asyncio.create_task(progress(senders, subscribers, frame_count, label))]
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2
        server_cpu, client_cpu, wall_start = server.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(bench.push(ws, s, frames, frame_count, period, start)
                               for ws, s in zip(websockets, senders)))
        wall = time.perf_counter() - wall_start
        server_cpu, client_cpu = server.cpu_seconds() - server_cpu, time.process_time() - client_cpu
        tasks[1].cancel()
        statuses, idle, idle_wait = await bench.wait_idle(server, senders, bench.IDLE_TIMEOUT_S)
        processed = {s.stream_id: st["frames"]["processed"] for s, st in zip(senders, statuses)}
        drained, drain_wait = await drain(subscribers, processed, drain_timeout)
        for task in tasks:
            task.cancel()
        await close_subscribers(subscribers, readers)
    finally:
        for task in tasks:
            task.cancel()
        if subscribers:
            await close_subscribers(subscribers, readers)
        for websocket in websockets:
            await websocket.close()
        for reader in ingest_readers:
            try:
                await asyncio.wait_for(reader, timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                reader.cancel()
        if subscribers:
            # The server's /v1/alerts handler only sends, so it learns of a
            # client's close when its next send fails: wait for a heartbeat of
            # the still existing streams. Deleting them first leaves the handler
            # waiting for an event that never comes (and uvicorn's graceful
            # shutdown waiting for the handler).
            await asyncio.sleep(HANDLER_EXIT_S)
        for sender in senders:
            try:
                await asyncio.to_thread(server.request, "DELETE", f"/v1/streams/{sender.stream_id}")
            except (OSError, bench.HttpError) as exc:
                log(f"  could not delete {sender.stream_id}: {exc}")
    load_after = [round(x, 2) for x in os.getloadavg()]
    if not idle:
        log(f"  {label}: not idle {idle_wait:.0f} s after the last frame; recording the status as it is")
    if not drained:
        log(f"  {label}: some subscriber still lacked persons events {drain_wait:.0f} s after idle")

    per_stream = []
    for sender, status in zip(senders, statuses):
        counts = status["frames"]
        duration = (sender.last_send - sender.first_send) + period if sender.sent else 0.0
        per_stream.append({
            "id": sender.stream_id, "sent": sender.sent, "late_sends": sender.late,
            "received": counts["received"], "processed": counts["processed"], "dropped": counts["dropped"],
            "errors": counts["errors"],
            "processed_fps": round(counts["processed"] / duration, 2) if duration else 0.0,
            "latency_ms": status["latency_ms"], "last_error": status["last_error"],
            "server_messages": sender.server_errors[:5],
        })
    closed = [{"subscriber": s.index, "code": s.close_code, "reason": s.close_reason,
               "after_s": round(s.closed_at - wall_start, 2)} for s in subscribers if s.closed_by_server]
    received = sum(s["received"] for s in per_stream)
    result = {
        "streams": n_streams,
        "subscribers": n_subscribers,
        "idle": idle,
        "idle_wait_s": round(idle_wait, 2),
        "drained": drained,
        "drain_wait_s": round(drain_wait, 2),
        "frames": {key: sum(s[key] for s in per_stream)
                   for key in ("sent", "received", "processed", "dropped", "errors")},
        "dropped_fraction": round(sum(s["dropped"] for s in per_stream) / received, 4) if received else None,
        "processed_fps_per_stream": round(sum(s["processed_fps"] for s in per_stream) / n_streams, 2),
        **analyse(subscribers, stream_ids, processed),
        "server_end_to_end_ms": bench.pool_latency(per_stream),
        "closed_by_server": closed,
        "closed_1013": [c["subscriber"] for c in closed if c["code"] == 1013],
        "deflate_negotiated": all(s.deflate for s in subscribers),
        "events_seen_by_subscriber_0": content(subscribers[0]),
        "per_stream": per_stream,
        "client_loop_lag_ms": summary_ms(np.asarray(lag) * 1000.0),
        "client_cpu_percent": round(100.0 * client_cpu / wall, 1) if wall else None,
        "server_cpu_percent": round(100.0 * server_cpu / wall, 1) if wall else None,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    return result


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


# ----------------------------------------------------------------- report
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
    p = argparse.ArgumentParser(prog="python bench/alerts.py", description=__doc__.splitlines()[0])
    p.add_argument("--streams", default=DEFAULT_STREAMS, help=f"stream counts (default {DEFAULT_STREAMS})")
    p.add_argument("--subscribers", default=DEFAULT_SUBSCRIBERS,
                   help=f"subscriber counts, each run with every stream count (default {DEFAULT_SUBSCRIBERS})")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                   help=f"sending time per combination (default {DEFAULT_SECONDS:g})")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per stream (default 10)")
    p.add_argument("--threads", type=int, default=2, help="the server's inference threads (default 2)")
    p.add_argument("--model", type=Path, help="an exported ONNX file (sidecar beside it); default: export lite "
                                              "(roialign, random heads)")
    p.add_argument("--frame-size", help=f"camera frame WIDTHxHEIGHT for the export and the frames sent "
                                        f"(default {bench.DEFAULT_FRAME_SIZE}; with --model, the model's)")
    p.add_argument("--video", type=Path, default=bench.DEFAULT_VIDEO, help=f"footage (default {bench.DEFAULT_VIDEO})")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality of the frames sent (default 85)")
    p.add_argument("--zones", help="each stream's zone set: JSON text or a JSON file (default: "
                                   + json.dumps(DEFAULT_ZONES, separators=(",", ":")) + ")")
    p.add_argument("--masks", action="store_true", help="subscribe with masks=1 (default masks=0)")
    p.add_argument("--no-deflate", action="store_true", help="subscribers offer no permessage-deflate "
                                                             "(default: offered, as websockets and browsers do)")
    p.add_argument("--aligned", action="store_true", help="all streams send at the same instants")
    p.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_S,
                   help=f"seconds to wait after idle for subscribers' last events (default {DRAIN_TIMEOUT_S:g})")
    p.add_argument("--workdir", type=Path, help="where the export and the server log go (default: a temporary "
                                                "directory, removed)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    stream_counts = parse_counts(args.streams, "--streams")
    subscriber_counts = parse_counts(args.subscribers, "--subscribers")
    if args.seconds <= 0 or args.fps <= 0 or args.threads < 1 or args.drain_timeout < 0:
        raise ValueError("--seconds and --fps must be > 0, --threads >= 1 and --drain-timeout >= 0")
    if not 1 <= args.quality <= 100:
        raise ValueError("--quality must be within 1-100")
    if args.model is not None and not args.model.is_file():
        raise FileNotFoundError(f"{args.model}: no such ONNX file")
    zones = parse_zones(args.zones)
    from service.zones import ZoneError, ZoneSet

    try:
        ZoneSet.from_spec(zones)
    except ZoneError as exc:
        raise ValueError(f"--zones: {exc}") from exc
    info = bench.sidecar_info(args.model) if args.model is not None else None
    if args.frame_size:
        frame_hw = bench.parse_size(args.frame_size)
    elif info is not None:
        frame_hw = bench.parse_size(info["frame_size"])
    else:
        frame_hw = bench.parse_size(bench.DEFAULT_FRAME_SIZE)

    started = time.perf_counter()
    frame_count = max(1, round(args.seconds * args.fps))
    frames = bench.encoded_frames(args.video, frame_count, frame_hw, args.quality)
    log(f"{len(frames)} frame(s) of {args.video} at {bench.size_text(*frame_hw)}, JPEG quality {args.quality}")

    report = {
        "benchmark": "alerts",
        "command": " ".join(["python", "bench/alerts.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": bench.machine(args.threads),
        "model": None,
        "threads": args.threads,
        "fps_per_stream": args.fps,
        "seconds": args.seconds,
        "frame_size": bench.size_text(*frame_hw),
        "video": str(args.video),
        "jpeg_quality": args.quality,
        "zones": zones,
        "masks": args.masks,
        "deflate_offered": not args.no_deflate,
        "phases": "aligned" if args.aligned else "staggered",
        "latency": LATENCY,
        "server": None,
        "table": [],
        "results": [],
    }
    temporary = None
    workdir = args.workdir
    if workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_alerts_")
        workdir = Path(temporary.name)
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if args.model is not None:
            model_path = args.model
            report["model"] = {**info, "exported_by_benchmark": False}
        else:
            log(f"exporting {bench.PRESET} (roi_extractor=roialign, random heads) at {bench.size_text(*frame_hw)}")
            model_path, export_s = bench.export_lite(workdir, "roialign", frame_hw)
            log(f"exported in {export_s:.0f} s")
            report["model"] = {**bench.sidecar_info(model_path), "exported_by_benchmark": True,
                               "export_s": round(export_s, 1)}
            if temporary is not None:
                report["model"]["path"] = f"(temporary) {model_path.name}"

        server = bench.Server(model_path, args.threads, workdir / "server.log")
        log(f"starting the server: {server.command}")
        ready_s = server.wait_ready()
        report["server"] = {"startup_s": round(ready_s, 1), "pid": server.pid,
                            "log": str(server.log_path) if temporary is None else None}
        log(f"ready in {ready_s:.1f} s")

        for n_streams in stream_counts:
            for n_subscribers in subscriber_counts:
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
