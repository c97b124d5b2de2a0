"""The ``/v1/alerts`` subscribers of ``bench_alerts.py``: connecting them, stamping
every message with its receive time, waiting until each holds every persons
event, and what their events say (latencies, counts, seq gaps, contents).

A subscriber only stamps (``time.time()`` as ``recv()`` returns) and keeps the
text; parsing comes after the run, so it does not delay the other subscribers'
receipts. Not a benchmark itself; imported as ``import bench_subscribers`` (see
``bench_common``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import bench_common

SUBSCRIBE_TIMEOUT_S = 15.0
STATE_EXAMPLES = 12


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


async def connect_subscribers(ws_url: str, stream_ids: list[str], count: int, masks: bool,
                              deflate: bool) -> tuple[list[Subscriber], list[asyncio.Task]]:
    from websockets.asyncio.client import connect

    url = f"{ws_url}/v1/alerts?streams={','.join(stream_ids)}&masks={int(masks)}"
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


def seq_gaps(seqs: dict[str, list[int]]) -> tuple[int, int]:
    """``(gaps, duplicates)`` in each stream's received ``seq`` numbers."""
    gaps = duplicates = 0
    for values in seqs.values():
        distinct = set(values)
        duplicates += len(values) - len(distinct)
        gaps += max(values) - min(values) + 1 - len(distinct)
    return gaps, duplicates


def worst(per_subscriber: list[dict], key: str) -> dict | None:
    """The subscriber whose ``key`` latency has the largest p99 (None when none has any)."""
    rows = [(i, row[key]) for i, row in enumerate(per_subscriber) if row[key]["n"]]
    if not rows:
        return None
    index, stats = max(rows, key=lambda r: r[1]["p99"])
    return {"subscriber": index, **stats}


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
        gaps_here, duplicates_here = seq_gaps(seqs)
        gaps, duplicates = gaps + gaps_here, duplicates + duplicates_here
        missing_here = sum(max(0, count - len(subscriber.persons_seqs.get(stream_id, ())))
                           for stream_id, count in processed.items())
        missing += missing_here
        persons_all.extend(persons)
        state_all.extend(state)
        types_total.update(types)
        per_subscriber.append({"events": len(subscriber.events), "types": dict(types), "missing_persons": missing_here,
                               "persons": bench_common.summary(persons), "state": bench_common.summary(state)})

    events = [row["events"] for row in per_subscriber]
    count = len(subscribers)
    return {
        "persons_latency_ms": bench_common.summary(persons_all),
        "persons_latency_worst_subscriber": worst(per_subscriber, "persons"),
        "persons_p99_per_subscriber": [row["persons"]["p99"] for row in per_subscriber],
        "state_latency_ms": bench_common.summary(state_all),
        "state_latency_worst_subscriber": worst(per_subscriber, "state"),
        "state_events_without_capture_ts": state_without_capture,
        "persons_breakdown_ms": {"server": bench_common.summary(server_part),
                                 "delivery": bench_common.summary(delivery_part)},
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
