"""The one interface every inference engine implements.

An engine runs the exported per-frame network (see ``export.graph``): a batch
of frames, each from its own stream with its own support-feature cache, in;
per frame the detections and this frame's cache entry out. Engines are
synchronous and not thread-safe; ``service.engines.batching.BatchingEngine``
puts one behind a queue that the streams share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from export.spec import CACHE_LEVELS, Sidecar

# The frame containers are the per-stream step's (models.stream_step): the
# engines produce what it consumes.
from models.stream_step import FrameInput, FrameOutput

__all__ = ["Engine", "EngineError", "FrameInput", "FrameOutput", "SidecarEngine", "output_from_graph"]


class EngineError(RuntimeError):
    """The engine failed on a frame (the stream goes to FAULT, others go on)."""


class Engine(ABC):
    name: str = "engine"

    @property
    @abstractmethod
    def input_size(self) -> tuple[int, int]:
        """(height, width) of ``FrameInput.image``."""

    @property
    @abstractmethod
    def classes(self) -> list[str]:
        """Class names, label 1 first."""

    @property
    @abstractmethod
    def support_frames(self) -> int:
        """How many past frames the model wants in its cache (0: none)."""

    @property
    @abstractmethod
    def cache_shapes(self) -> list[tuple[int, int, int]]:
        """Per cache level, one frame's ``(C, H_l, W_l)``."""

    @abstractmethod
    def infer(self, batch: list[FrameInput]) -> list[FrameOutput]:
        """Run every frame of ``batch``; raise ``EngineError`` on failure."""

    def empty_cache(self) -> list[np.ndarray]:
        return [np.zeros((0, *shape), dtype=np.float32) for shape in self.cache_shapes]

    def close(self) -> None:
        """Release the engine's resources."""


def output_from_graph(out: dict[str, np.ndarray], inference_ms: float) -> FrameOutput:
    """The exported graph's named outputs (``export.graph``) as a ``FrameOutput``."""
    return FrameOutput(
        boxes=out["boxes"],
        scores=out["scores"],
        labels=out["labels"].astype(np.int64, copy=False),
        mask_probs=out["mask_probs"],
        embeddings=out["embeddings"],
        features=[out[f"features_{level}"][0] for level in CACHE_LEVELS],
        timing_ms={"inference": inference_ms},
    )


class SidecarEngine(Engine):
    """An engine over an exported file described by its sidecar (``export.spec``):
    sizes, classes and cache layout come from there, and a batch runs frame
    by frame because the exported graph takes one frame. Subclasses set
    ``sidecar`` and implement ``_run``."""

    sidecar: Sidecar
    _closed: bool = False

    @property
    def input_size(self) -> tuple[int, int]:
        return self.sidecar.input_height, self.sidecar.input_width

    @property
    def classes(self) -> list[str]:
        return list(self.sidecar.classes)

    @property
    def support_frames(self) -> int:
        return int(self.sidecar.support_frames)

    @property
    def cache_shapes(self) -> list[tuple[int, int, int]]:
        return [tuple(int(d) for d in shape) for shape in self.sidecar.cache_shapes]

    def infer(self, batch: list[FrameInput]) -> list[FrameOutput]:
        return [self._infer_one(item) for item in batch]

    def _infer_one(self, item: FrameInput) -> FrameOutput:
        if self._closed:
            raise EngineError(f"{self.name} engine is closed")
        return self._run(item)

    @abstractmethod
    def _run(self, item: FrameInput) -> FrameOutput:
        """One frame; raise ``EngineError`` on failure."""
