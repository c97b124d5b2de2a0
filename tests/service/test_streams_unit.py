"""service.streams.StreamManager with a scripted engine and the real supervisor and bus:
adding and removing streams, the requests it refuses (and that they change nothing),
zones, and pulled sources' workers (a recording stand-in for ``PullSource``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import ClassVar

import pytest

from service import streams as streams_module
from service.alerts import SafetyConfig
from service.config import LimitSettings, PipelineSettings
from service.engines.batching import BatchingEngine
from service.events import EventBus
from service.streams import StreamError, StreamManager
from service.supervisor import SafetySupervisor
from service.zones import ZoneSet

from .fake_engine import ScriptedEngine, frame_image

WAIT_S = 5.0
ZONES = {"units": "pixels", "hazard": [[40, 40], [80, 40], [80, 80], [40, 80]], "warning": {"distance": 20}}


async def until(predicate, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def managed(max_streams: int = 4, supervised: bool = True, **callbacks):
    engine = ScriptedEngine()
    batching = BatchingEngine(engine, max_batch=4, max_wait_ms=0)
    bus = EventBus()
    supervisor = SafetySupervisor(bus, SafetyConfig()) if supervised else None
    manager = StreamManager(engine, batching, PipelineSettings(), LimitSettings(max_streams=max_streams),
                            supervisor=supervisor, **callbacks)
    try:
        yield manager, bus
    finally:
        await manager.close()
        batching.close()


def stream_tasks() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("stream-") and not t.done())


class FakeSource:
    """Stands in for ``PullSource``: records how it was made, started and stopped."""

    made: ClassVar[list[FakeSource]] = []

    def __init__(self, stream_id, spec, on_frame, on_event) -> None:
        self.stream_id, self.spec, self.on_frame, self.on_event = stream_id, spec, on_frame, on_event
        self.started = False
        self.stopped: list[float] = []
        FakeSource.made.append(self)

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 5.0) -> bool:
        self.stopped.append(timeout)
        return True


@pytest.fixture
def fake_sources(monkeypatch) -> list[FakeSource]:
    FakeSource.made = []
    monkeypatch.setattr(streams_module, "PullSource", FakeSource)
    return FakeSource.made


# -------------------------------------------------------------- add/remove
def test_streams_are_added_and_removed_one_by_one():
    async def scenario():
        async with managed() as (manager, bus):
            a = await manager.add("cam-a")
            b = await manager.add("cam_b.2")
            assert manager.get("cam-a") is a and manager.get("cam_b.2") is b
            assert (a.stream_id, a.source) == ("cam-a", "push")
            assert set(manager.supervisor.watches) == {"cam-a", "cam_b.2"}
            assert stream_tasks() == ["stream-cam-a", "stream-cam_b.2"]
            assert manager.supervisor.watches["cam-a"].zones is None
            task = a._task
            feed = bus.subscribe(["cam-a"])
            await manager.remove("cam-a")
            assert task.cancelled() and a._task is None
            assert list(manager.pipelines) == ["cam_b.2"] and stream_tasks() == ["stream-cam_b.2"]
            assert "cam-a" not in manager.supervisor.watches
            deleted = await asyncio.wait_for(feed.get(), WAIT_S)
            assert (deleted["type"], deleted["state"], deleted["reason"]) == ("fault", "FAULT", "stream deleted")
            assert bus.events_since("cam-a", 0) == ([], None)  # its history is gone
            with pytest.raises(StreamError) as unknown:
                manager.get("cam-a")
            assert unknown.value.status == 404 and "unknown stream 'cam-a'" in str(unknown.value)
            with pytest.raises(StreamError) as again:
                await manager.remove("cam-a")
            assert again.value.status == 404
            # the other stream goes on
            b.offer(frame_image(1), time.time())
            await until(lambda: b.processed == 1, "a frame on the remaining stream")
            # the id can be used again
            again_a = await manager.add("cam-a")
            assert again_a is not a and again_a.processed == 0
        assert manager.pipelines == {}  # close() removed them all

    asyncio.run(scenario())


@pytest.mark.parametrize("stream_id", ["", "-cam", "cam a", "cam/a", "cam\n", "x" * 65, "ü", 7, None])
def test_invalid_ids_are_refused_with_422(stream_id):
    async def scenario():
        async with managed() as (manager, _):
            with pytest.raises(StreamError, match="invalid stream id") as refused:
                await manager.add(stream_id)
            assert refused.value.status == 422
            assert manager.pipelines == {} and manager.supervisor.watches == {} and stream_tasks() == []

    asyncio.run(scenario())


def test_refused_requests_change_nothing(fake_sources):
    async def scenario():
        async with managed(max_streams=2) as (manager, bus):
            await manager.add("a")

            async def refused(status: int, match: str, *args, **kwargs):
                before = (dict(manager.pipelines), dict(manager.supervisor.watches), stream_tasks())
                with pytest.raises(StreamError, match=match) as error:
                    await manager.add(*args, **kwargs)
                assert error.value.status == status
                assert (dict(manager.pipelines), dict(manager.supervisor.watches), stream_tasks()) == before
                assert bus.last_seq(args[0]) == (1 if args[0] == "a" else 0)  # no event for a refused stream

            await refused(409, "stream 'a' already exists", "a")
            await refused(422, r"push streams take no options, got \['fps'\]", "b", options={"fps": 5})
            await refused(422, "option push_only does not apply to pulled sources", "b",
                          "http://127.0.0.1:9/video.mjpg", {"push_only": True})
            await refused(422, "bad source 'ftp://127.0.0.1/x'", "b", "ftp://127.0.0.1/x")
            await refused(422, "bad source .*unknown source option", "b", "http://127.0.0.1:9/v", {"colour": 1})
            await refused(422, "bad source", "b", "/tmp/clip.avi")  # no file_dirs: no file is accepted
            await refused(422, "zones: hazard is required", "b", zones={"units": "pixels"})
            await refused(422, "zones: hazard: self-intersecting polygon", "b",
                          zones={"units": "pixels", "hazard": [[0, 0], [10, 10], [10, 0], [0, 10]]})
            await refused(422, "zones: zones must be a JSON object", "b", zones=[[0, 0], [1, 0], [1, 1]])
            assert fake_sources == []  # no worker was made for a refused pulled source
            await manager.add("b")
            await refused(409, r"stream limit reached \(limits.max_streams=2\)", "c")
            await manager.remove("b")
            await manager.add("c")  # room again
            assert sorted(manager.pipelines) == ["a", "c"]

    asyncio.run(scenario())


# -------------------------------------------------------------------- zones
def test_validated_zones_are_in_force_for_the_new_stream():
    async def scenario():
        async with managed() as (manager, bus):
            await manager.add("z", zones=ZONES)
            watch = manager.supervisor.watches["z"]
            expected = ZoneSet.from_spec(ZONES)
            assert watch.zones.crc_hex == expected.crc_hex and watch.zones.to_dict() == expected.to_dict()
            first = bus.events_since("z", 0)[0][0]
            assert first["type"] == "state" and first["config_crc"] == expected.crc_hex

    asyncio.run(scenario())


def test_without_a_supervisor_zones_are_still_validated():
    async def scenario():
        async with managed(supervised=False) as (manager, _):
            with pytest.raises(StreamError, match="zones: hazard is required") as refused:
                await manager.add("z", zones={"units": "pixels"})
            assert refused.value.status == 422 and manager.pipelines == {}
            await manager.add("z", zones=ZONES)
            assert list(manager.pipelines) == ["z"]

    asyncio.run(scenario())


# ------------------------------------------------------------ pulled sources
def test_a_pulled_stream_gets_a_worker_feeding_its_pipeline_and_remove_stops_it(fake_sources):
    results, errors = [], []

    async def scenario():
        async with managed(on_result=lambda p, r: results.append((p.stream_id, r.frame)),
                           on_error=lambda p, reason: errors.append((p.stream_id, reason))) as (manager, bus):
            pipeline = await manager.add("cam", "http://127.0.0.1:9/video.mjpg", {"read_timeout_s": 2})
            [source] = fake_sources
            assert source.started and source.stream_id == "cam" and manager.sources == {"cam": source}
            assert source.spec.url == "http://127.0.0.1:9/video.mjpg" and source.spec.read_timeout_s == 2.0
            assert source.on_frame == pipeline.offer and source.on_event == pipeline.source_event
            # frames from the worker reach the supervisor (a persons event) and on_result
            await asyncio.to_thread(source.on_frame, frame_image(1), time.time())
            await until(lambda: results, "the first result")
            assert results == [("cam", 1)]
            persons = [e for e in bus.events_since("cam", 0)[0] if e["type"] == "persons"]
            assert len(persons) == 1 and len(persons[0]["persons"]) == 1
            # a lost source is a fault event at once, and on_error hears it
            await asyncio.to_thread(source.on_event, "disconnected", "EOF")
            await until(lambda: errors, "the source's fault")
            assert errors == [("cam", "source disconnected: EOF")]
            faults = [e for e in bus.events_since("cam", 0)[0] if e["type"] == "fault"]
            assert [(f["state"], f["reason"]) for f in faults] == [("FAULT", "source disconnected: EOF")]
            await manager.remove("cam")
            assert source.stopped == [5.0] and manager.sources == {} and stream_tasks() == []

    asyncio.run(scenario())
