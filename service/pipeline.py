"""One stream's way from frames to results: newest-frame-wins, cache, tracker.

A ``StreamPipeline`` owns everything that is per stream:

* a one-frame slot: a frame that arrives while the stream is busy replaces
  the waiting one (newest wins) and the replaced frame is counted as dropped;
* the support-feature cache (the last T frames' features for Temporal RoI
  Align) and the tracker's memory (``models.tracker.Tracker``), both bounded;
* counters, latency percentiles and the latest result.

Frames are offered from any thread (pull sources run in threads) or from the
event loop (push ingest); processing runs as one asyncio task per stream,
with the heavy steps in worker threads and inference in the shared
``BatchingEngine``. A failure in one stream is recorded in that stream's
status and never reaches another stream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.stream_step import StreamStep
from models.tracker import Tracker

from .config import PipelineSettings
from .engines.base import Engine, EngineError
from .engines.batching import BatchingEngine
from .results import FrameResult, result_json

log = logging.getLogger("cellwatch.pipeline")

OFFLINE_AFTER_S = 2.0


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8, the camera's size
    capture_ts: float  # seconds since the epoch, from the camera (or when it was read)
    received_ts: float  # the service's wall clock when the frame was offered (after decoding)
    decode_ms: float = 0.0
    # the service's monotonic clock when the frame arrived (before decoding): lateness
    # measured from here holds whatever the camera's clock says
    arrived_mono: float = 0.0


class LatencyWindow:
    """The last ``size`` latencies (ms) and their percentiles."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self.values.append(value_ms)

    def summary(self) -> dict[str, float | None]:
        if not self.values:
            return {"p50": None, "p95": None, "p99": None, "max": None}
        data = np.asarray(self.values)
        p50, p95, p99 = np.percentile(data, [50, 95, 99])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2),
                "max": round(float(data.max()), 2)}


class StreamPipeline:
    """See the module docstring. ``on_result(pipeline, result)`` is called on
    the event loop after every processed frame; ``metrics`` is optional."""

    def __init__(
        self,
        stream_id: str,
        source: str,
        engine: Engine,
        batching: BatchingEngine,
        settings: PipelineSettings,
        on_result: Callable[[StreamPipeline, FrameResult], None] | None = None,
        metrics: Any = None,
        on_error: Callable[[StreamPipeline, str], None] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.source = source
        self.engine = engine
        self.batching = batching
        self.settings = settings
        self.on_result = on_result
        self.on_error = on_error
        self.metrics = metrics
        self.created_ts = time.time()
        self.received = 0
        self.processed = 0
        self.dropped = 0
        self.errors = 0
        self.resets = 0
        self.last_error: str | None = None
        self.source_state = "waiting"
        self.latest_result: FrameResult | None = None
        self.latency = LatencyWindow(settings.latency_window)
        self._processed_times: deque[float] = deque(maxlen=256)
        self._lock = threading.Lock()  # guards the slot (the step guards its cache and tracker)
        self._pending: Frame | None = None
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None
        self._failed = False
        tracker = Tracker(max_age=settings.max_track_age, max_tracks=settings.max_tracks,
                          motion_gate=settings.track_motion_gate)
        self.step = StreamStep(engine, tracker, settings.score_thresh)
        self._latest_json: tuple[FrameResult, dict[str, Any]] | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"stream-{self.stream_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def reset(self, reason: str = "reset") -> None:
        """Forget the tracker's memory and the support cache (ids keep increasing)."""
        self.step.reset()
        self.resets += 1
        log.info("stream reset", extra={"stream": self.stream_id, "reason": reason})

    # --------------------------------------------------------------- intake
    def offer(self, image: np.ndarray, capture_ts: float, decode_ms: float = 0.0) -> None:
        """Hand a decoded frame to the stream; thread-safe, never blocks."""
        frame = Frame(image, capture_ts, time.time(), decode_ms, time.monotonic() - decode_ms / 1000.0)
        with self._lock:
            self.received += 1
            if self._pending is not None:
                self.dropped += 1
                if self.metrics is not None:
                    self.metrics.dropped(self.stream_id)
            self._pending = frame
        if self.metrics is not None:
            self.metrics.received(self.stream_id, decode_ms)
        self._loop.call_soon_threadsafe(self._wake.set)

    # Pull-source events after which the stream sees nothing (an ``ended`` file plays no more).
    SOURCE_LOST = ("error", "disconnected", "ended")
    _source_fault: str | None = None  # the source's last reported loss, until it connects again

    def source_event(self, kind: str, detail: str = "") -> None:
        """From a pull source (its worker thread). A (re)connect resets tracker
        and cache and clears the error the source left. Losing the source
        (``SOURCE_LOST``) leaves the stream blind: ``on_error`` hears it at once,
        on the event loop (a fault, not an engine error: ``errors`` stays)."""
        self.source_state = kind
        if kind == "connected":
            self.reset(f"source connected {detail}".strip())
            if self.last_error is not None and self.last_error == self._source_fault:
                self.last_error = None
            self._source_fault = None
        elif kind in self.SOURCE_LOST:
            reason = f"source {kind}: {detail}" if detail else f"source {kind}"
            self.last_error = reason
            # A dead camera fails every retry alike: one fault per cause, not one per attempt.
            if reason != self._source_fault:
                self._source_fault = reason
                try:
                    self._loop.call_soon_threadsafe(self._source_lost, reason)
                except RuntimeError:  # the loop is closed: the service is gone, nobody is left to tell
                    pass

    def _source_lost(self, reason: str) -> None:
        if self.on_error is not None:
            self.on_error(self, reason)

    # ----------------------------------------------------------- processing
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                frame, self._pending = self._pending, None
            if frame is None:
                continue
            try:
                await self._process(frame)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one stream's failure stays in that stream
                self.errors += 1
                self._failed = True
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("frame failed", extra={"stream": self.stream_id, "error": self.last_error})
                if self.on_error is not None:
                    self.on_error(self, self.last_error)

    async def _process(self, frame: Frame) -> None:
        started = time.time()
        item = await asyncio.to_thread(self.step.prepare, frame.image)
        prepared = time.time()
        try:
            output = await self.batching.infer(item)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(str(exc)) from exc
        inferred = time.time()
        detections = await asyncio.to_thread(self.step.finish, frame.image.shape[:2], output)
        done = time.time()
        since_arrival_ms = (time.monotonic() - frame.arrived_mono) * 1000.0
        end_to_end_ms = (done - frame.capture_ts) * 1000.0
        if end_to_end_ms < 0 or end_to_end_ms > 3_600_000:  # camera clock far off: use arrival time
            end_to_end_ms = since_arrival_ms
        end_to_end_ms = max(end_to_end_ms, since_arrival_ms)
        timing = {
            "capture_ts": frame.capture_ts,
            "received_ts": frame.received_ts,
            "decode_ms": round(frame.decode_ms, 2),
            "queue_ms": round((started - frame.received_ts) * 1000.0, 2),
            "preprocess_ms": round((prepared - started) * 1000.0, 2),
            "inference_ms": round((inferred - prepared) * 1000.0, 2),
            "postprocess_ms": round((done - inferred) * 1000.0, 2),
            "end_to_end_ms": round(end_to_end_ms, 2),
            "since_arrival_ms": round(since_arrival_ms, 2),
        }
        result = FrameResult(self.stream_id, self.step.frames, frame.capture_ts, frame.image, detections,
                             self.engine.classes, timing)
        self.latency.add(end_to_end_ms)
        self._processed_times.append(done)
        self.processed += 1
        self._failed = False
        self.latest_result = result
        if self.metrics is not None:
            self.metrics.processed(self.stream_id, (inferred - prepared), end_to_end_ms / 1000.0)
        if self.on_result is not None:
            self.on_result(self, result)

    # ------------------------------------------------------------ the edge
    @property
    def latest(self) -> dict[str, Any] | None:
        """The latest result as JSON (made on first request, then kept), or None."""
        result = self.latest_result
        if result is None:
            return None
        cached = self._latest_json
        if cached is None or cached[0] is not result:
            cached = (result, result_json(result))
            self._latest_json = cached
        return cached[1]

    @property
    def latest_image(self) -> np.ndarray | None:
        return None if self.latest_result is None else self.latest_result.image

    # --------------------------------------------------------------- status
    @property
    def state(self) -> str:
        if self._failed:
            return "fault"
        if self._processed_times and time.time() - self._processed_times[-1] <= OFFLINE_AFTER_S:
            return "online"
        return "offline"

    def fps(self, horizon_s: float = 5.0) -> float:
        now = time.time()
        recent = [t for t in self._processed_times if now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        return round((len(recent) - 1) / max(recent[-1] - recent[0], 1e-6), 2)

    def memory_bytes(self) -> int:
        """The stream's memory: support cache + tracker (frames and results excluded)."""
        return self.step.memory_bytes()

    def tracks(self) -> list[dict]:
        return self.step.tracks()

    def status(self) -> dict[str, Any]:
        return {
            "id": self.stream_id,
            "source": self.source,
            "state": self.state,
            "source_state": self.source_state,
            "frames": {"received": self.received, "processed": self.processed, "dropped": self.dropped,
                       "errors": self.errors},
            "fps": self.fps(),
            "latency_ms": self.latency.summary(),
            "memory_bytes": self.memory_bytes(),
            "support_frames": {"kept": self.step.support_kept, "max": self.engine.support_frames},
            "tracks": len(self.step.tracker),
            "resets": self.resets,
            "last_error": self.last_error,
            "safety_rated": False,
        }
