"""Prometheus metrics of one service instance (its own registry, so several
apps in one process, as in the tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_received = Counter(
            "cellwatch_frames_received", "Frames received per stream", ["stream"], registry=r
        )
        self.frames_processed = Counter(
            "cellwatch_frames_processed", "Frames processed per stream", ["stream"], registry=r
        )
        self.frames_dropped = Counter(
            "cellwatch_frames_dropped", "Frames replaced by a newer one before processing", ["stream"], registry=r
        )
        self.frames_rejected = Counter(
            "cellwatch_frames_rejected", "Frames refused as bad input", ["stream"], registry=r
        )
        self.decode_seconds = Histogram(
            "cellwatch_decode_seconds", "Frame decode time", ["stream"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "cellwatch_inference_seconds", "Inference time per frame (batching wait included)", ["stream"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "cellwatch_end_to_end_seconds", "Capture to result", ["stream"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "cellwatch_engine_batch_size", "Frames per engine batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=r
        )
        self.batch_seconds = Histogram(
            "cellwatch_engine_batch_seconds", "Engine time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.streams = Gauge("cellwatch_streams", "Configured streams", registry=r)

    def received(self, stream: str, decode_ms: float) -> None:
        self.frames_received.labels(stream).inc()
        if decode_ms > 0:
            self.decode_seconds.labels(stream).observe(decode_ms / 1000.0)

    def dropped(self, stream: str) -> None:
        self.frames_dropped.labels(stream).inc()

    def rejected(self, stream: str) -> None:
        self.frames_rejected.labels(stream).inc()

    def processed(self, stream: str, inference_s: float, end_to_end_s: float) -> None:
        self.frames_processed.labels(stream).inc()
        self.inference_seconds.labels(stream).observe(inference_s)
        self.end_to_end_seconds.labels(stream).observe(end_to_end_s)

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def forget(self, stream: str) -> None:
        """Drop a deleted stream's series."""
        for metric in (self.frames_received, self.frames_processed, self.frames_dropped, self.frames_rejected,
                       self.decode_seconds, self.inference_seconds, self.end_to_end_seconds):
            try:
                metric.remove(stream)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
