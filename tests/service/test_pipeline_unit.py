"""service.pipeline.StreamPipeline on one event loop with a scripted engine: newest frame
wins, results in order, the latest JSON made on demand, engine and source faults.

Each test runs its own loop (``asyncio.run``); the engine sits behind a real
``BatchingEngine``; waits poll the pipeline's counters for at most a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import numpy as np

from service import pipeline as pipeline_module
from service.config import PipelineSettings
from service.engines.batching import BatchingEngine
from service.pipeline import StreamPipeline
from service.results import RESULT_SCHEMA, FrameResult

from .fake_engine import FRAME_HW, ScriptedEngine, feature_value, frame_image

STREAM = "cam-1"
WAIT_S = 5.0


async def until(predicate, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def running(engine: ScriptedEngine, on_result=None, on_error=None):
    batching = BatchingEngine(engine, max_batch=1, max_wait_ms=0)
    pipeline = StreamPipeline(STREAM, "push", engine, batching, PipelineSettings(), on_result, None, on_error)
    pipeline.start()
    try:
        yield pipeline
    finally:
        if engine.gate is not None:
            engine.gate.set()
        await pipeline.stop()
        batching.close()


async def process(pipeline: StreamPipeline, number: int, capture_ts: float | None = None) -> np.ndarray:
    """Offer frame ``number`` and wait until the stream has dealt with it (result or error)."""
    done = pipeline.processed + pipeline.errors
    image = frame_image(number)
    pipeline.offer(image, time.time() if capture_ts is None else capture_ts)
    await until(lambda: pipeline.processed + pipeline.errors > done, f"frame {number}")
    return image


def cached_numbers(item, level: int = 0) -> list[float]:
    return [float(np.unique(entry)[0]) for entry in item.cache[level]]


def test_results_reach_on_result_in_order_as_frame_results():
    received: list[tuple[StreamPipeline, FrameResult]] = []

    async def scenario():
        engine = ScriptedEngine()
        async with running(engine, on_result=lambda p, r: received.append((p, r))) as pipeline:
            offered = []
            for number in range(1, 5):
                before = time.time()
                image = await process(pipeline, number)
                offered.append((image, before))
            return engine, pipeline, offered

    engine, pipeline, offered = asyncio.run(scenario())
    assert [r.frame for _, r in received] == [1, 2, 3, 4]
    ids = set()
    for (owner, result), (image, before), number in zip(received, offered, range(1, 5)):
        assert owner is pipeline and isinstance(result, FrameResult)
        assert result.stream_id == STREAM and result.image is image and result.classes == ["person", "forklift"]
        assert before <= result.capture_ts <= time.time()
        detections = result.detections
        assert detections.frame_hw == FRAME_HW and len(detections) == 1
        x = 2 * (4.0 + 2.0 * number)  # the walker's box, working pixels x2
        np.testing.assert_allclose(detections.boxes[0], [x, 20, x + 24, 80])
        ids.add(int(detections.track_ids[0]))
        assert set(result.timing) >= {"capture_ts", "received_ts", "queue_ms", "preprocess_ms", "inference_ms",
                                      "postprocess_ms", "end_to_end_ms", "since_arrival_ms"}
        assert result.timing["capture_ts"] == result.capture_ts and result.timing["end_to_end_ms"] >= 0
    assert len(ids) == 1  # one person, one id
    assert engine.numbers == [1, 2, 3, 4]
    assert cached_numbers(engine.seen[3]) == [2.0, 3.0]  # the stream's step keeps the cache
    status = pipeline.status()
    assert status["frames"] == {"received": 4, "processed": 4, "dropped": 0, "errors": 0}
    assert status["support_frames"] == {"kept": 2, "max": 2} and status["tracks"] == 1
    assert status["memory_bytes"] == pipeline.step.memory_bytes() > 0
    assert status["latency_ms"]["p50"] is not None and status["safety_rated"] is False
    assert status["state"] == "online" and status["last_error"] is None


def test_newest_frame_wins_while_the_engine_is_busy():
    received: list[FrameResult] = []

    async def scenario():
        engine = ScriptedEngine(gate=threading.Event())
        async with running(engine, on_result=lambda p, r: received.append(r)) as pipeline:
            pipeline.offer(frame_image(1), time.time())
            await until(engine.entered.is_set, "frame 1 in the engine")

            def camera():  # offers come from another thread, as pull sources' do
                for number in range(2, 7):
                    pipeline.offer(frame_image(number), time.time())

            await asyncio.to_thread(camera)
            assert (pipeline.received, pipeline.processed, pipeline.dropped) == (6, 0, 4)
            waiting = pipeline._pending
            assert waiting is not None and int(waiting.image[0, 0, 0]) == 6  # the newest waits
            engine.gate.set()
            await until(lambda: pipeline.processed == 2, "two results")
            await asyncio.sleep(0.02)  # nothing else is on its way
            return engine, pipeline

    engine, pipeline = asyncio.run(scenario())
    assert engine.numbers == [1, 6]
    assert [int(r.image[0, 0, 0]) for r in received] == [1, 6] and [r.frame for r in received] == [1, 2]
    assert pipeline._pending is None
    assert pipeline.received == pipeline.processed + pipeline.dropped == 6
    assert pipeline.status()["frames"]["dropped"] == 4


def test_latest_json_is_made_on_demand_and_kept_for_the_same_result(monkeypatch):
    calls: list[FrameResult] = []
    real = pipeline_module.result_json

    def counting(result, *args, **kwargs):
        calls.append(result)
        return real(result, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "result_json", counting)

    async def scenario():
        async with running(ScriptedEngine()) as pipeline:
            assert pipeline.latest is None and pipeline.latest_image is None
            await process(pipeline, 1, capture_ts=1_700_000_000.5)
            assert calls == []  # nothing is made until asked for
            first = pipeline.latest
            assert pipeline.latest is first and len(calls) == 1
            image = await process(pipeline, 2)
            second = pipeline.latest
            assert second is not first and len(calls) == 2 and calls[1] is pipeline.latest_result
            assert pipeline.latest is second and len(calls) == 2
            assert pipeline.latest_image is image
            return first, second

    first, second = asyncio.run(scenario())
    assert first["schema"] == RESULT_SCHEMA and first["stream_id"] == STREAM
    assert (first["frame"], second["frame"]) == (1, 2)
    assert first["capture_ts"] == 1_700_000_000.5 and first["timing"]["capture_ts"] == 1_700_000_000.5
    assert first["frame_size"] == {"height": FRAME_HW[0], "width": FRAME_HW[1]} and first["safety_rated"] is False
    assert first["objects"] == [] and len(first["persons"]) == 1
    person = first["persons"][0]
    assert person["class"] == "person" and person["track_id"] == second["persons"][0]["track_id"]
    assert person["mask"]["size"] == list(FRAME_HW) and person["area"] > 0
    json.dumps(first)


def test_an_engine_failure_is_a_fault_until_the_next_good_frame():
    errors: list[tuple[StreamPipeline, str]] = []
    received: list[FrameResult] = []

    async def scenario():
        engine = ScriptedEngine(fail_on={2})
        async with running(engine, lambda p, r: received.append(r), lambda p, e: errors.append((p, e))) as pipeline:
            await process(pipeline, 1)
            assert pipeline.state == "online"
            await process(pipeline, 2)
            faulty = pipeline.status()
            await process(pipeline, 3)
            return engine, pipeline, faulty

    engine, pipeline, faulty = asyncio.run(scenario())
    reason = "EngineError: scripted failure on frame 2"
    assert faulty["state"] == "fault" and faulty["last_error"] == reason
    assert faulty["frames"] == {"received": 2, "processed": 1, "dropped": 0, "errors": 1}
    assert errors == [(pipeline, reason)]
    # the next good frame: the stream is online again, the count of errors stays
    assert pipeline.state == "online" and not pipeline._failed
    assert (pipeline.processed, pipeline.errors) == (2, 1)
    assert [int(r.image[0, 0, 0]) for r in received] == [1, 3] and [r.frame for r in received] == [1, 2]
    # the failed frame left nothing in the support cache
    assert cached_numbers(engine.seen[2]) == [feature_value(1, 0)]


def test_a_lost_source_reaches_on_error_on_the_loop_once_per_cause_and_connecting_clears_it():
    heard: list[tuple[str, int]] = []

    async def scenario():
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        engine = ScriptedEngine(fail_on={3})
        async with running(engine, on_error=lambda p, reason: heard.append((reason, threading.get_ident()))) \
                as pipeline:

            async def from_source(kind: str, detail: str = "") -> None:
                """The event from a worker thread, then wait until the loop has run what it scheduled."""
                marker = asyncio.Event()

                def worker():
                    pipeline.source_event(kind, detail)
                    loop.call_soon_threadsafe(marker.set)

                await asyncio.to_thread(worker)
                await asyncio.wait_for(marker.wait(), WAIT_S)

            await process(pipeline, 1)
            assert pipeline.step.support_kept == 1 and len(pipeline.step.tracker) == 1
            await from_source("disconnected", "EOF")
            assert heard == [("source disconnected: EOF", loop_thread)]
            assert pipeline.last_error == "source disconnected: EOF" and pipeline.source_state == "disconnected"
            assert pipeline.errors == 0 and pipeline.state != "fault"  # a fault of the source, not the engine
            await from_source("disconnected", "EOF")  # the same cause again: a retry, told once
            assert len(heard) == 1
            await from_source("error", "timeout")
            assert [reason for reason, _ in heard] == ["source disconnected: EOF", "source error: timeout"]
            assert all(thread == loop_thread for _, thread in heard)
            resets = pipeline.resets
            await from_source("connected", "rtsp://cam")
            assert pipeline.last_error is None and pipeline.source_state == "connected"
            assert pipeline.resets == resets + 1  # tracker and cache start afresh
            assert pipeline.step.support_kept == 0 and len(pipeline.step.tracker) == 0
            await from_source("disconnected", "EOF")  # connected in between: the old cause is news again
            assert len(heard) == 3 and pipeline.last_error == "source disconnected: EOF"
            await from_source("connected")
            # an engine error is not the source's to clear
            await process(pipeline, 3)
            assert pipeline.last_error == "EngineError: scripted failure on frame 3"
            await from_source("connected")
            assert pipeline.last_error == "EngineError: scripted failure on frame 3"
            return pipeline

    asyncio.run(scenario())
    assert [reason for reason, _ in heard][-1] == "EngineError: scripted failure on frame 3"


class FakeTime:
    """``time`` for service.pipeline: a wall clock the test sets, the real monotonic clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()


def test_fps_and_online_state_follow_the_processing_times(monkeypatch):
    clock = FakeTime(1_700_000_000.0)
    monkeypatch.setattr(pipeline_module, "time", clock)

    async def scenario():
        async with running(ScriptedEngine()) as pipeline:
            assert pipeline.state == "offline" and pipeline.fps() == 0.0
            for number in range(1, 6):  # 10 frames a second of fake time
                clock.now = 1_700_000_000.0 + 0.1 * (number - 1)
                await process(pipeline, number)
            return pipeline

    pipeline = asyncio.run(scenario())
    assert pipeline.fps() == 10.0 and pipeline.state == "online"
    clock.now += pipeline_module.OFFLINE_AFTER_S  # exactly the limit: still online
    assert pipeline.state == "online"
    clock.now += 0.01
    assert pipeline.state == "offline" and pipeline.fps() == 10.0
    clock.now += 5.0  # every frame older than the 5 s horizon
    assert pipeline.fps() == 0.0
