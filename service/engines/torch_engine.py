"""The PyTorch engine: a training checkpoint run through ``export.graph.FrameGraph`` in eager mode.

FrameGraph is exactly what the ONNX and TensorRT files are exported from, so
this engine's outputs match theirs (same inputs, same outputs, same working
size) without an export step. It is the only module of the service that
imports torch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from export.graph import FrameGraph
from export.spec import cache_shapes, working_size
from models.checkpoint import load_model
from models.defaults import DEFAULT_FRAME_HW, DEFAULT_SUPPORT_FRAMES
from models.masktrack_rcnn import MaskTrackRCNN
from models.temporal_roi_align import TemporalRoIAlign

from .base import Engine, EngineError, FrameInput, FrameOutput


class TorchEngine(Engine):
    """``weights``: a ``.pt`` checkpoint; ``frame_size``: the camera's (height, width),
    from which the preset's resize rule gives the working size."""

    name = "torch"

    def __init__(
        self,
        weights: str | Path,
        frame_size: tuple[int, int] = DEFAULT_FRAME_HW,
        threads: int | None = None,
        device: str = "cpu",
        support_frames: int | None = None,
    ) -> None:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"{path}: no such checkpoint")
        model, _ = load_model(path)
        self._setup(model, frame_size, threads, device, support_frames, source=str(path))

    @classmethod
    def from_model(
        cls,
        model: MaskTrackRCNN,
        frame_size: tuple[int, int] = DEFAULT_FRAME_HW,
        threads: int | None = None,
        device: str = "cpu",
        support_frames: int | None = None,
    ) -> TorchEngine:
        """An engine over a model already in memory (shares its weights)."""
        engine = cls.__new__(cls)
        engine._setup(model, frame_size, threads, device, support_frames, source=f"{model.preset} model object")
        return engine

    def _setup(
        self,
        model: MaskTrackRCNN,
        frame_size: tuple[int, int],
        threads: int | None,
        device: str,
        support_frames: int | None,
        source: str,
    ) -> None:
        if threads is not None:
            # Process-wide in PyTorch; the service runs one engine per process.
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch.cuda.is_available() is False")
        self.source = source
        config = model.config
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self._input_size = working_size(*self.frame_size, config.min_size, config.max_size)
        channels = int(model.backbone.out_channels)
        self._cache_shapes = cache_shapes(*self._input_size, channels)
        self._classes = list(config.class_names) or [f"class_{i}" for i in range(1, config.num_classes + 1)]
        temporal = any(isinstance(m, TemporalRoIAlign) for m in model.modules())
        if support_frames is None:
            support_frames = DEFAULT_SUPPORT_FRAMES
        if support_frames < 0:
            raise ValueError(f"support_frames must be >= 0, got {support_frames}")
        # Plain RoIAlign ignores the cache: asking for one would only cost memory.
        self._support_frames = int(support_frames) if temporal else 0
        self.graph = FrameGraph(model.eval()).eval().to(self.device)
        self._closed = False

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def support_frames(self) -> int:
        return self._support_frames

    @property
    def cache_shapes(self) -> list[tuple[int, int, int]]:
        return list(self._cache_shapes)

    def infer(self, batch: list[FrameInput]) -> list[FrameOutput]:
        return [self._infer_one(item) for item in batch]

    def _infer_one(self, item: FrameInput) -> FrameOutput:
        if self._closed:
            raise EngineError("torch engine is closed")
        self._check(item)
        started = time.perf_counter()
        try:
            image = torch.from_numpy(np.ascontiguousarray(item.image, dtype=np.float32))[None].to(self.device)
            support = [torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)).to(self.device) for c in item.cache]
            with torch.inference_mode():
                boxes, scores, labels, mask_probs, embeddings, *features = self.graph(image, *support)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:
            raise EngineError(f"torch engine ({self.source}): {exc}") from exc
        elapsed = (time.perf_counter() - started) * 1000.0
        return FrameOutput(
            boxes=boxes.cpu().numpy(),
            scores=scores.cpu().numpy(),
            labels=labels.cpu().numpy().astype(np.int64, copy=False),
            mask_probs=mask_probs.cpu().numpy(),
            embeddings=embeddings.cpu().numpy(),
            features=[f[0].cpu().numpy() for f in features],
            timing_ms={"inference": elapsed},
        )

    def _check(self, item: FrameInput) -> None:
        """The shape checks the ONNX runtime makes, so both engines refuse the same inputs."""
        expected = (3, *self._input_size)
        if tuple(item.image.shape) != expected:
            raise EngineError(f"torch engine: image must be {expected}, got {tuple(item.image.shape)}")
        if len(item.cache) != len(self._cache_shapes):
            raise EngineError(f"torch engine: cache needs {len(self._cache_shapes)} levels, got {len(item.cache)}")
        frames = {c.shape[0] for c in item.cache}
        if len(frames) != 1:
            raise EngineError(f"torch engine: cache levels hold different frame counts {sorted(frames)}")
        for level, (entry, shape) in enumerate(zip(item.cache, self._cache_shapes)):
            if entry.ndim != 4 or tuple(entry.shape[1:]) != tuple(shape):
                raise EngineError(f"torch engine: cache level {level} is {tuple(entry.shape)}, expected [T, {shape}]")

    def close(self) -> None:
        self._closed = True
        del self.graph
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
