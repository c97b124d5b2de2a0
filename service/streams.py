"""The set of streams one service runs: creation, removal, their sources.

``StreamManager`` owns the pipelines (``service.pipeline``) and, for pulled
streams, their source workers (``service.sources``). Adding a stream that
fails validation changes nothing; removing one stops its source and its task
and leaves every other stream running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .config import STREAM_ID, STREAM_ID_RULE, LimitSettings, PipelineSettings, SourceSettings
from .engines.base import Engine
from .engines.batching import BatchingEngine
from .pipeline import StreamPipeline
from .results import FrameResult
from .sources import PullSource, parse_source

log = logging.getLogger("cellwatch.streams")

PUSH = "push"


class StreamError(ValueError):
    """A stream request that cannot be honoured; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class StreamManager:
    def __init__(
        self,
        engine: Engine,
        batching: BatchingEngine,
        pipeline_settings: PipelineSettings,
        limits: LimitSettings,
        metrics: Any = None,
        on_result=None,
        on_error=None,
        supervisor: Any = None,
        source_settings: SourceSettings | None = None,
    ) -> None:
        self.engine = engine
        self.batching = batching
        self.pipeline_settings = pipeline_settings
        self.limits = limits
        self.metrics = metrics
        self.on_result = on_result
        self.on_error = on_error
        self.supervisor = supervisor
        self.source_settings = source_settings or SourceSettings()  # none given: no file source is accepted
        self.pipelines: dict[str, StreamPipeline] = {}
        self.sources: dict[str, PullSource] = {}
        self._lock = asyncio.Lock()

    def get(self, stream_id: str) -> StreamPipeline:
        pipeline = self.pipelines.get(stream_id)
        if pipeline is None:
            raise StreamError(f"unknown stream {stream_id!r}", status=404)
        return pipeline

    async def add(
        self, stream_id: str, source: str = PUSH, options: dict[str, Any] | None = None, zones: dict | None = None
    ) -> StreamPipeline:
        options = dict(options or {})
        if not isinstance(stream_id, str) or not STREAM_ID.fullmatch(stream_id):
            raise StreamError(f"invalid stream id {stream_id!r}: {STREAM_ID_RULE}")
        async with self._lock:
            if stream_id in self.pipelines:
                raise StreamError(f"stream {stream_id!r} already exists", status=409)
            if len(self.pipelines) >= self.limits.max_streams:
                raise StreamError(f"stream limit reached (limits.max_streams={self.limits.max_streams})", status=409)
            spec = None
            if source != PUSH:
                if options.pop("push_only", None):
                    raise StreamError("option push_only does not apply to pulled sources")
                try:
                    spec = parse_source(source, options, file_dirs=self.source_settings.file_dirs)
                except (ValueError, TypeError) as exc:
                    raise StreamError(f"bad source {source!r}: {exc}") from exc
            elif options:
                raise StreamError(f"push streams take no options, got {sorted(options)}")
            zone_set = None
            if zones is not None:
                from .zones import ZoneError, ZoneSet

                validate = self.supervisor.validate_zones if self.supervisor is not None else ZoneSet.from_spec
                try:  # CPU-bound for large polygons: off the event loop
                    zone_set = await asyncio.to_thread(validate, zones)
                except ZoneError as exc:
                    raise StreamError(f"zones: {exc}") from exc
            pipeline = StreamPipeline(
                stream_id, source, self.engine, self.batching, self.pipeline_settings, self._result, self.metrics,
                self._error,
            )
            if self.supervisor is not None:
                self.supervisor.add(stream_id, zone_set)
            pipeline.start()
            self.pipelines[stream_id] = pipeline
            if spec is not None:
                puller = PullSource(stream_id, spec, pipeline.offer, pipeline.source_event)
                self.sources[stream_id] = puller
                puller.start()
            if self.metrics is not None:
                self.metrics.streams.set(len(self.pipelines))
        log.info("stream added", extra={"stream": stream_id, "source": source})
        return pipeline

    async def remove(self, stream_id: str) -> None:
        async with self._lock:
            pipeline = self.get(stream_id)
            del self.pipelines[stream_id]
            puller = self.sources.pop(stream_id, None)
        if puller is not None:
            await asyncio.to_thread(puller.stop, 5.0)
        await pipeline.stop()
        if self.supervisor is not None:
            self.supervisor.remove(stream_id)
        if self.metrics is not None:
            self.metrics.forget(stream_id)
            self.metrics.streams.set(len(self.pipelines))
        log.info("stream removed", extra={"stream": stream_id})

    async def close(self) -> None:
        for stream_id in list(self.pipelines):
            await self.remove(stream_id)

    def _result(self, pipeline: StreamPipeline, result: FrameResult) -> None:
        if self.supervisor is not None:
            self.supervisor.on_result(pipeline.stream_id, result)
        if self.on_result is not None:
            self.on_result(pipeline, result)

    def _error(self, pipeline: StreamPipeline, reason: str) -> None:
        if self.supervisor is not None:
            self.supervisor.on_error(pipeline.stream_id, reason)
        if self.on_error is not None:
            self.on_error(pipeline, reason)
