"""service.events: per-stream numbering, replay and gaps, subscriber back-pressure,
mask stripping, and the JSON Schema file against the pydantic model."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from pydantic import ValidationError

from service.alerts import SafetyState
from service.events import EVENT_SCHEMA, EVENT_TYPES, SCHEMA_FILE, Event, EventBus, SubscriptionClosed

RLE = {"size": [4, 6], "counts": "0d05"}
TIMEOUT_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def person(track_id: int = 1, mask: dict | None = RLE) -> dict:
    return {"track_id": track_id, "score": 0.9, "distance": 1.25, "units": "metres", "zone": "approach",
            "box": [1.0, 2.0, 3.0, 4.0], "mask": mask}


def persons_fields(index: int = 0) -> dict:
    return {"capture_ts": 1_700_000_000.0 + index, "state": SafetyState.WARNING, "latched": False,
            "zones": {"approach": [1]}, "persons": [person()], "config_crc": "1a2b3c4d"}


def publish_n(bus: EventBus, stream_id: str, count: int) -> list[dict]:
    return [bus.publish(stream_id, "persons", **persons_fields(i)) for i in range(count)]


async def take(subscription, count: int) -> list[dict]:
    return [await asyncio.wait_for(subscription.get(), TIMEOUT_S) for _ in range(count)]


async def nothing_more(subscription) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(subscription.get(), 0.01)


# ------------------------------------------------------------------ publishing
def test_seq_strictly_increasing_per_stream_and_independent():
    bus = EventBus(clock=FakeClock())
    order = ["a", "b", "a", "a", "c", "b", "a"]
    events = [bus.publish(stream, "state", state="CLEAR", latched=False, reason="r") for stream in order]
    for stream in "abc":
        assert [e["seq"] for e in events if e["stream_id"] == stream] == list(range(1, order.count(stream) + 1))
    assert [e["emit_ts"] for e in events] == sorted(e["emit_ts"] for e in events)
    assert all(e["schema"] == EVENT_SCHEMA and e["safety_rated"] is False for e in events)
    assert events[0]["state"] == "CLEAR" and events[0]["persons"] is None  # every field present
    assert bus.last_seq("a") == 4 and bus.last_seq("zzz") == 0


def test_publish_refuses_what_the_bus_assigns_and_invalid_events_take_no_seq():
    bus = EventBus()
    with pytest.raises(ValueError, match="assigns"):
        bus.publish("a", "state", seq=5, state="CLEAR", latched=False)
    with pytest.raises(ValueError, match="assigns"):
        bus.publish("a", "state", safety_rated=True, state="CLEAR", latched=False)
    with pytest.raises(ValueError, match="synthetic"):
        bus.publish("a", "gap")
    with pytest.raises(ValidationError):
        bus.publish("a", "state", state="GREEN", latched=False)
    with pytest.raises(ValidationError):
        bus.publish("a", "heartbeat", reason="no state")
    with pytest.raises(ValidationError):
        bus.publish("a", "persons", persons=[{**person(), "units": "feet"}])
    with pytest.raises(ValidationError):
        bus.publish("a", "fault", colour="red")
    assert bus.publish("a", "fault", reason="engine error")["seq"] == 1


def test_heartbeat_publishes_the_state():
    bus = EventBus()
    event = bus.heartbeat("cam1", SafetyState.PROTECTIVE_STOP, True, "person in zone", "deadbeef")
    assert (event["type"], event["seq"], event["state"], event["latched"], event["config_crc"]) == (
        "heartbeat", 1, "PROTECTIVE_STOP", True, "deadbeef")


def test_publish_from_many_threads_keeps_seq_gapless():
    bus = EventBus(history=5000)
    threads = [threading.Thread(target=publish_n, args=(bus, "a", 200)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events, gap = bus.events_since("a", 0, limit=5000)
    assert gap is None and [e["seq"] for e in events] == list(range(1, 801))


# ------------------------------------------------------------------ history, replay, gaps
def test_history_is_bounded_and_rest_reports_the_gap():
    bus = EventBus(history=5)
    publish_n(bus, "a", 12)
    events, gap = bus.events_since("a", 0, limit=100)
    assert [e["seq"] for e in events] == [8, 9, 10, 11, 12]
    assert (gap["type"], gap["seq"], gap["missed_from"], gap["missed_to"]) == ("gap", None, 1, 7)
    events, gap = bus.events_since("a", 7, limit=2)  # exactly the oldest kept next: no gap
    assert gap is None and [e["seq"] for e in events] == [8, 9]
    events, gap = bus.events_since("a", 9, limit=100)
    assert gap is None and [e["seq"] for e in events] == [10, 11, 12]
    assert bus.events_since("a", 12, limit=100) == ([], None)
    events, gap = bus.events_since("a", None, limit=2)
    assert gap is None and [e["seq"] for e in events] == [11, 12]
    assert bus.events_since("unknown", 0, limit=10) == ([], None)


def test_replay_since_n_gives_exactly_the_missed_events_then_live():
    async def main():
        bus = EventBus(clock=FakeClock())
        published = publish_n(bus, "a", 10) + publish_n(bus, "b", 3)
        subscription = bus.subscribe({"a"}, since=6)
        replay = await take(subscription, 4)
        assert replay == [e for e in published if e["stream_id"] == "a" and e["seq"] > 6]
        await nothing_more(subscription)
        bus.publish("b", "fault", reason="not wanted")
        live = bus.publish("a", "fault", reason="engine error")
        assert await take(subscription, 1) == [live]

    asyncio.run(main())


def test_gap_event_when_since_is_older_than_the_history():
    async def main():
        bus = EventBus(history=5)
        publish_n(bus, "a", 10)
        publish_n(bus, "b", 3)
        subscription = bus.subscribe(None, since=2)
        events = await take(subscription, 7)
        gap, replay_a, replay_b = events[0], events[1:6], events[6:]
        assert (gap["type"], gap["stream_id"], gap["seq"], gap["missed_from"], gap["missed_to"]) == (
            "gap", "a", None, 3, 5)
        assert [e["seq"] for e in replay_a] == [6, 7, 8, 9, 10] and {e["stream_id"] for e in replay_a} == {"a"}
        assert [(e["stream_id"], e["seq"]) for e in replay_b] == [("b", 3)]  # b: everything after 2 is kept
        await nothing_more(subscription)
        assert bus.publish("a", "fault", reason="x")["seq"] == 11  # the gap took no seq

    asyncio.run(main())


def test_no_since_means_live_only():
    async def main():
        bus = EventBus()
        publish_n(bus, "a", 3)
        subscription = bus.subscribe({"a"})
        await nothing_more(subscription)
        publish_n(bus, "a", 1)
        assert [e["seq"] for e in await take(subscription, 1)] == [4]

    asyncio.run(main())


# ------------------------------------------------------------------ back-pressure
def test_slow_subscriber_overflows_while_a_fast_one_gets_everything():
    async def main():
        bus = EventBus(queue_size=8)
        loop = asyncio.get_running_loop()
        slow = bus.subscribe({"a"})
        fast = bus.subscribe({"a"})
        received, step = [], threading.Semaphore(0)

        def publisher():  # another thread, in step with the fast reader
            for index in range(50):
                bus.publish("a", "persons", **persons_fields(index))
                assert step.acquire(timeout=TIMEOUT_S)

        thread = threading.Thread(target=publisher)
        thread.start()
        for _ in range(50):
            received.append(await asyncio.wait_for(fast.get(), TIMEOUT_S))
            step.release()
        await loop.run_in_executor(None, thread.join)

        assert [e["seq"] for e in received] == list(range(1, 51))
        assert not fast.overflowed and fast in bus._subscriptions
        assert slow.overflowed and slow.closed and bus.subscriber_count == 1
        # what was queued before the overflow is a gapless prefix, then the end
        assert [e["seq"] for e in await take(slow, 8)] == list(range(1, 9))
        with pytest.raises(SubscriptionClosed, match="overflowed"):
            await asyncio.wait_for(slow.get(), TIMEOUT_S)

    asyncio.run(main())


def test_unsubscribe_ends_the_feed_and_a_dead_loop_never_breaks_publish():
    async def main():
        bus = EventBus()
        subscription = bus.subscribe(None)
        bus.unsubscribe(subscription)
        bus.publish("a", "fault", reason="x")
        with pytest.raises(SubscriptionClosed, match="unsubscribed"):
            await asyncio.wait_for(subscription.get(), TIMEOUT_S)
        assert [e async for e in subscription] == []
        return bus

    bus = asyncio.run(main())
    dead_loop = asyncio.new_event_loop()
    orphan = bus.subscribe(None, loop=dead_loop)
    dead_loop.close()
    assert bus.publish("a", "fault", reason="y")["seq"] == 2
    assert orphan.closed and bus.subscriber_count == 0


# ------------------------------------------------------------------ masks
def test_masks_stripped_for_subscribers_that_ask():
    async def main():
        bus = EventBus()
        publish_n(bus, "a", 1)
        bare = bus.subscribe({"a"}, since=0, masks=False)
        full = bus.subscribe({"a"}, since=0, masks=True)
        publish_n(bus, "a", 1)
        bare_events, full_events = await take(bare, 2), await take(full, 2)
        assert all(p["mask"] is None for e in bare_events for p in e["persons"])
        assert all(p["mask"] == RLE for e in full_events for p in e["persons"])
        assert [p["box"] for e in bare_events for p in e["persons"]] == [[1.0, 2.0, 3.0, 4.0]] * 2
        events, _ = bus.events_since("a", 0, limit=10)
        assert events[0]["persons"][0]["mask"] == RLE  # the kept event still has it
        events, _ = bus.events_since("a", 0, limit=10, masks=False)
        assert events[0]["persons"][0]["mask"] is None

    asyncio.run(main())


# ------------------------------------------------------------------ the schema file
def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _same(a, b) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


_TYPES = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def errors(value, schema: dict, root: dict, path: str = "$") -> list[str]:
    """A validator for the JSON Schema subset the event schema uses."""
    schema = _resolve(schema, root)
    found: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return [f"{path}: {value!r} is not {types}"]
    if "const" in schema and not _same(value, schema["const"]):
        found.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        found.append(f"{path}: {value!r} not in {schema['enum']}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{path}: {value} > {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            found.append(f"{path}: {len(value)} items")
        for index, item in enumerate(value):
            found += errors(item, schema.get("items", {}), root, f"{path}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        found += [f"{path}: missing {name}" for name in schema.get("required", []) if name not in value]
        for name, item in value.items():
            if name in properties:
                found += errors(item, properties[name], root, f"{path}.{name}")
            elif schema.get("additionalProperties") is False:
                found.append(f"{path}: unexpected {name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                found += errors(item, schema["additionalProperties"], root, f"{path}.{name}")
    if "anyOf" in schema and all(errors(value, option, root, path) for option in schema["anyOf"]):
        found.append(f"{path}: matches none of anyOf")
    for part in schema.get("allOf", []):
        found += errors(value, part, root, path)
    if "if" in schema:
        branch = "then" if not errors(value, schema["if"], root, path) else "else"
        found += errors(value, schema.get(branch, {}), root, path)
    return found


@pytest.fixture(scope="module")
def schema_file() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def _choices(schema: dict, root: dict) -> set | None:
    """The values a property may take when it is an enum/const (null included), else None."""
    schema = _resolve(schema, root)
    options = schema.get("anyOf", [schema])
    values: set = set()
    for option in options:
        option = _resolve(option, root)
        if "const" in option:
            values.add(option["const"])
        elif "enum" in option:
            values.update(option["enum"])
        elif option.get("type") == "null" or "null" in (option.get("type") or []):
            values.add(None)
            if option.get("type") != "null":
                return None
        else:
            return None
    return values


def test_schema_file_agrees_with_the_model(schema_file):
    model = Event.model_json_schema(mode="serialization")
    assert schema_file["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    pairs = [(model, schema_file)]
    pairs += [(model["$defs"][name], schema_file["$defs"][name]) for name in ("Person", "MaskRLE")]
    for ours, theirs in pairs:
        assert set(ours["required"]) == set(theirs["required"])
        assert set(ours["properties"]) == set(theirs["properties"])
        assert ours["additionalProperties"] is theirs["additionalProperties"] is False
        for name in ours["properties"]:
            assert _choices(ours["properties"][name], model) == _choices(theirs["properties"][name], schema_file), name
    assert _choices(schema_file["properties"]["type"], schema_file) == set(EVENT_TYPES)
    assert _choices(schema_file["properties"]["state"], schema_file) == {s.value for s in SafetyState} | {None}
    assert _choices(schema_file["properties"]["safety_rated"], schema_file) == {False}
    assert _choices(schema_file["$defs"]["Person"]["properties"]["units"], schema_file) == {"metres", "pixels"}


def test_every_event_the_bus_emits_validates_against_the_file(schema_file):
    async def main():
        bus = EventBus(history=2)
        emitted = [
            bus.publish("a", "state", state=SafetyState.PROTECTIVE_STOP, latched=True, reason="track 3 in robot",
                        capture_ts=1.5, config_crc="00ff00ff"),
            bus.publish("a", "persons", **persons_fields()),
            bus.heartbeat("a", SafetyState.CLEAR, False, None, None),
            bus.publish("a", "fault", reason="source lost"),
            bus.publish("a", "persons", persons=[person(None, None)], zones={}, state="CLEAR"),
        ]
        subscription = bus.subscribe({"a"}, since=0, masks=False)
        emitted += await take(subscription, 3)  # gap + 2 kept
        return emitted

    emitted = asyncio.run(main())
    assert {e["type"] for e in emitted} == set(EVENT_TYPES)
    for event in emitted:
        assert errors(event, schema_file, schema_file) == [], event
        assert json.loads(json.dumps(event)) == event


@pytest.mark.parametrize("change", [
    {"safety_rated": True},
    {"schema": "cellwatch.event/2"},
    {"state": "GREEN"},
    {"seq": None},
    {"seq": 0},
    {"missed_from": 3},
    {"type": "gap"},
    {"colour": "red"},
    {"persons": [{**person(), "units": "feet"}]},
    {"persons": [{**person(), "mask": {"size": [4], "counts": "x"}}]},
    {"zones": {"approach": ["one"]}},
    {"latched": None},
])
def test_the_file_and_the_model_refuse_the_same_bad_events(schema_file, change):
    good = EventBus().publish("a", "state", state="WARNING", latched=False, reason="r")
    assert errors(good, schema_file, schema_file) == []
    bad = {**good, **change}
    assert errors(bad, schema_file, schema_file), "the file accepts it"
    with pytest.raises(ValidationError):
        Event.model_validate(bad)
    missing = {k: v for k, v in good.items() if k != "capture_ts"}
    assert errors(missing, schema_file, schema_file) == ["$: missing capture_ts"]
