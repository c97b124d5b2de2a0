"""The ONNX Runtime engine: an exported model (``python -m export.onnx``) and its sidecar.

The exported graph takes one frame at a time, so a batch runs frame by frame
on one session; no torch is needed.
"""

from __future__ import annotations

import time
from pathlib import Path

from .base import EngineError, FrameInput, FrameOutput, SidecarEngine, output_from_graph

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def choose_providers(requested: str | list[str] | None, available: list[str]) -> list[str]:
    """``"auto"``/None: CUDA when this onnxruntime build has it, else CPU;
    ``"cpu"``, ``"cuda"``, or an explicit list of provider names."""
    if requested is None or requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        requested = [CUDA, CPU]
    if isinstance(requested, str):
        raise ValueError(f"providers must be 'auto', 'cpu', 'cuda' or a list of provider names, got {requested!r}")
    missing = [p for p in requested if p not in available]
    if missing:
        raise ValueError(
            f"ONNX Runtime provider(s) {missing} not available in this onnxruntime build; available: {available}"
        )
    return list(requested)


class OnnxRuntimeEngine(SidecarEngine):
    name = "onnxruntime"

    def __init__(
        self, path: str | Path, threads: int | None = None, providers: str | list[str] | None = None
    ) -> None:
        import onnxruntime as ort

        from export.ort_runtime import OnnxFrameModel

        self.providers = choose_providers(providers, ort.get_available_providers())
        self.model = OnnxFrameModel(path, threads=threads, providers=self.providers)
        self.sidecar = self.model.sidecar
        self._closed = False

    def _run(self, item: FrameInput) -> FrameOutput:
        started = time.perf_counter()
        try:
            out = self.model.infer(item.image, item.cache)
        except Exception as exc:  # ORT raises its own types; shape errors are ValueError
            raise EngineError(f"onnxruntime engine ({self.model.path.name}): {exc}") from exc
        return output_from_graph(out, (time.perf_counter() - started) * 1000.0)

    def close(self) -> None:
        # ORT frees the session with the object; later frames fail with EngineError.
        self._closed = True
        self.model.session = None
