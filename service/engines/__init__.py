"""Inference engines behind one interface (``base.Engine``) and the factory that picks one.

``create_engine(kind, model)`` opens ``model`` with the engine ``kind`` names.
Engine modules are imported only when asked for, so importing this package
pulls in neither torch nor onnxruntime: the service starts without torch
unless the torch engine is configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Engine, EngineError, FrameInput, FrameOutput

ENGINE_KINDS = ("onnxruntime", "torch", "tensorrt")

# What each kind opens, for the error when the file is not there.
_MODEL_FILES = {
    "onnxruntime": "an exported .onnx file (python -m export.onnx) with its sidecar .json beside it",
    "torch": "a .pt checkpoint (python -m models.train)",
    "tensorrt": "a serialized engine (python -m export.tensorrt) and the sidecar .json of its ONNX file",
}

__all__ = ["ENGINE_KINDS", "Engine", "EngineError", "FrameInput", "FrameOutput", "create_engine"]


def create_engine(kind: str, model: str | Path, *, threads: int | None = None, **options: Any) -> Engine:
    """Open ``model`` with the engine ``kind`` (one of ``ENGINE_KINDS``).

    ``options`` go to the engine's constructor: ``providers`` for onnxruntime;
    ``frame_size``, ``device``, ``support_frames`` for torch; ``sidecar``,
    ``plugin_lib``, ``device`` for tensorrt. Raises ValueError for an unknown
    kind or a missing model file.
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}; valid engines: {', '.join(ENGINE_KINDS)}")
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"model file {str(path)!r} not found; the {kind} engine needs {_MODEL_FILES[kind]}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if kind == "onnxruntime":
        from .onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, threads=threads, **options)
    if kind == "torch":
        from .torch_engine import TorchEngine

        return TorchEngine(path, threads=threads, **options)
    from .tensorrt_engine import TensorRTEngine

    return TensorRTEngine(path, threads=threads, **options)
