"""One engine shared by every stream: a queue in front, one worker thread behind.

Engines are synchronous and not thread-safe, so ``BatchingEngine`` gives one
thread sole use of the engine. Streams ``submit`` frames (or ``await infer``)
from any thread; the worker takes the first waiting frame, waits at most
``max_wait_ms`` for more, and runs up to ``max_batch`` frames as one batch.
A failing batch fails only its own frames; the next batch runs as usual.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from .base import Engine, EngineError, FrameInput, FrameOutput

log = logging.getLogger(__name__)

CLOSED_MESSAGE = "the batching engine is closed; the frame was not run"


class BatchingEngine:
    def __init__(
        self,
        engine: Engine,
        max_batch: int = 4,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.engine = engine
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self._pending: deque[tuple[FrameInput, Future]] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"cellwatch-batching-{engine.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------- clients
    def submit(self, item: FrameInput) -> Future[FrameOutput]:
        """Queue one frame; the future resolves to its output or fails with EngineError."""
        future: Future[FrameOutput] = Future()
        with self._condition:
            if self._closed:
                raise EngineError(CLOSED_MESSAGE)
            self._pending.append((item, future))
            self._condition.notify()
        return future

    async def infer(self, item: FrameInput) -> FrameOutput:
        """``submit`` for asyncio; cancelling the awaiting task drops the frame if it has not started."""
        return await asyncio.wrap_future(self.submit(item))

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        with self._condition:
            return len(self._pending)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking frames, fail the queued ones, and wait for the running batch to end."""
        with self._condition:
            if self._closed:
                dropped = []
            else:
                self._closed = True
                dropped = list(self._pending)
                self._pending.clear()
            self._condition.notify_all()
        for _, future in dropped:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineError(CLOSED_MESSAGE))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -------------------------------------------------------------- worker
    def _next_batch(self) -> list[tuple[FrameInput, Future]] | None:
        """Block until frames are waiting, then collect up to ``max_batch`` of them,
        waiting at most ``max_wait_s`` after the first; None once closed."""
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while len(self._pending) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            if self._closed:  # close() has failed everything that was queued
                return None
            count = min(self.max_batch, len(self._pending))
            return [self._pending.popleft() for _ in range(count)]

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                # Frames whose caller gave up (cancelled) are not run.
                batch = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
                if batch:
                    self._run_batch(batch)
        finally:
            # Also when the worker dies of something unexpected: nobody waits forever.
            self.close(timeout=0)

    def _run_batch(self, batch: list[tuple[FrameInput, Future]]) -> None:
        started = time.perf_counter()
        try:
            outputs = self.engine.infer([item for item, _ in batch])
            if len(outputs) != len(batch):
                raise EngineError(f"{self.engine.name} engine returned {len(outputs)} outputs for {len(batch)} frames")
        except BaseException as exc:  # every failure goes to this batch's callers; the worker lives on
            for _, future in batch:
                future.set_exception(_engine_error(exc, self.engine.name))
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop (close() fails the queue)
                raise
        else:
            for (_, future), output in zip(batch, outputs):
                future.set_result(output)
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), time.perf_counter() - started)
            except Exception:  # metrics must never stop inference
                log.exception("on_batch callback failed")


def _engine_error(exc: BaseException, engine: str) -> EngineError:
    """One EngineError per caller (an exception object raised in several tasks gets tangled tracebacks)."""
    error = EngineError(str(exc) if isinstance(exc, EngineError) else f"{engine} engine failed: {exc!r}")
    error.__cause__ = exc
    return error
