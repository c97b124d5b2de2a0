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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from export.ort_runtime import prepare_frame
from models.tracker import Tracker

from .config import PipelineSettings
from .engines.base import Engine, EngineError, FrameInput, FrameOutput
from .engines.batching import BatchingEngine
from .results import frame_result

log = logging.getLogger("cellwatch.pipeline")

RESULT_SCHEMA = "cellwatch.result/1"
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
        on_result: Callable[[StreamPipeline, dict[str, Any]], None] | None = None,
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
        self.latest: dict[str, Any] | None = None
        self.latest_image: np.ndarray | None = None
        self.latency = LatencyWindow(settings.latency_window)
        self._processed_times: deque[float] = deque(maxlen=256)
        self._lock = threading.Lock()  # guards the slot, the cache and the tracker
        self._pending: Frame | None = None
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task | None = None
        self._failed = False
        self._cache: list[deque[np.ndarray]] = [deque(maxlen=max(engine.support_frames, 1)) for _ in engine.cache_shapes]
        self.tracker = Tracker(max_age=settings.max_track_age, max_tracks=settings.max_tracks,
                               motion_gate=settings.track_motion_gate)
        self._frame_index = 0

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
        with self._lock:
            self.tracker.reset()
            for level in self._cache:
                level.clear()
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

    def _input(self, frame: Frame) -> FrameInput:
        image = prepare_frame(frame.image, self.engine.input_size)
        with self._lock:
            if self.engine.support_frames == 0:
                cache = self.engine.empty_cache()
            else:
                cache = [np.stack(level) if level else empty for level, empty in zip(self._cache, self.engine.empty_cache())]
        return FrameInput(image, cache)

    async def _process(self, frame: Frame) -> None:
        started = time.time()
        item = await asyncio.to_thread(self._input, frame)
        prepared = time.time()
        try:
            output = await self.batching.infer(item)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(str(exc)) from exc
        inferred = time.time()
        result = await asyncio.to_thread(self._finish, frame, output)
        done = time.time()
        since_arrival_ms = (time.monotonic() - frame.arrived_mono) * 1000.0
        end_to_end_ms = (done - frame.capture_ts) * 1000.0
        if end_to_end_ms < 0 or end_to_end_ms > 3_600_000:  # camera clock far off: use arrival time
            end_to_end_ms = since_arrival_ms
        end_to_end_ms = max(end_to_end_ms, since_arrival_ms)
        result["timing"] = {
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
        self.latency.add(end_to_end_ms)
        self._processed_times.append(done)
        self.processed += 1
        self._failed = False
        self.latest = result
        self.latest_image = frame.image
        if self.metrics is not None:
            self.metrics.processed(self.stream_id, (inferred - prepared), end_to_end_ms / 1000.0)
        if self.on_result is not None:
            self.on_result(self, result)

    def _finish(self, frame: Frame, output: FrameOutput) -> dict[str, Any]:
        keep = output.scores >= self.settings.score_thresh
        kept = replace(
            output,
            boxes=output.boxes[keep],
            scores=output.scores[keep],
            labels=output.labels[keep],
            mask_probs=output.mask_probs[keep],
            embeddings=output.embeddings[keep],
        )
        with self._lock:
            if self.engine.support_frames > 0:  # a model without Temporal RoI Align reads no cache
                for level, feature in zip(self._cache, output.features):
                    level.append(np.array(feature, dtype=np.float32, copy=True))
            ids = self.tracker.update(kept.embeddings, kept.boxes, kept.labels, kept.scores)
            self._frame_index += 1
            index = self._frame_index
        result = frame_result(
            kept,
            [int(i) for i in ids],
            self.engine.classes,
            frame.image.shape[:2],
            self.engine.input_size,
            score_thresh=self.settings.score_thresh,
        )
        result.update(
            schema=RESULT_SCHEMA, stream_id=self.stream_id, frame=index, capture_ts=frame.capture_ts, safety_rated=False
        )
        return result

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
        with self._lock:
            return int(sum(f.nbytes for level in self._cache for f in level) + self.tracker.memory_bytes())

    def tracks(self) -> list[dict]:
        with self._lock:
            return self.tracker.tracks()

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
            "support_frames": {"kept": len(self._cache[0]) if self.engine.support_frames else 0,
                               "max": self.engine.support_frames},
            "tracks": len(self.tracker),
            "resets": self.resets,
            "last_error": self.last_error,
            "safety_rated": False,
        }
