"""The TensorRT engine: a serialized engine (``python -m export.tensorrt``) plus
the sidecar of the ONNX file it was built from.

The engine file holds no sizes or class names of its own that the service can
trust, so they come from the sidecar (``sidecar=``, by default the ``.json``
beside the engine with the same stem). TensorRT, torch and CUDA are needed
only when an engine is opened; without them the error names what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from export.spec import INPUT_NAMES, OUTPUT_NAMES, read_sidecar, sidecar_path
from export.trt_runner import TensorRTRunner

from .base import EngineError, FrameInput, FrameOutput, SidecarEngine, output_from_graph


class TensorRTEngine(SidecarEngine):
    name = "tensorrt"

    def __init__(
        self,
        path: str | Path,
        sidecar: str | Path | None = None,
        threads: int | None = None,  # accepted for a uniform factory; TensorRT runs on the GPU
        plugin_lib: str | Path | None = None,
        device: int = 0,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such TensorRT engine file")
        if sidecar is None:
            json_path = path.with_suffix(".json")
        else:  # the sidecar itself, or the ONNX file it sits beside
            json_path = Path(sidecar) if Path(sidecar).suffix == ".json" else sidecar_path(sidecar)
        if not json_path.is_file():
            raise ValueError(
                f"{json_path}: missing; the TensorRT engine needs the sidecar JSON of the ONNX file it was "
                "built from (pass it with --sidecar / model.sidecar)"
            )
        self.sidecar = read_sidecar(json_path)  # looks up json_path.with_suffix(".json"): itself
        try:
            # Raises TensorRTSetupError / TensorRTUnavailableError (RuntimeErrors) whose
            # message names what is missing: TensorRT, a CUDA GPU, the plugin library, the file.
            self.runner = TensorRTRunner(path, plugin_lib=plugin_lib, device=device)
        except ImportError as exc:  # torch, which holds the device buffers
            raise EngineError(f"tensorrt engine needs the {exc.name or 'missing'} package to run: {exc}") from exc
        inputs, outputs = list(self.runner.input_names), list(self.runner.output_names)
        if sorted(inputs) != sorted(INPUT_NAMES) or sorted(outputs) != sorted(OUTPUT_NAMES):
            raise ValueError(
                f"{path}: not a cellwatch frame engine: inputs {inputs} and outputs {outputs}, "
                f"expected inputs {list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}"
            )
        self.path = path
        self._closed = False

    def _run(self, item: FrameInput) -> FrameOutput:
        expected = (3, *self.input_size)
        if tuple(item.image.shape) != expected:
            raise EngineError(f"tensorrt engine: image must be {expected}, got {tuple(item.image.shape)}")
        if len(item.cache) != len(self.cache_shapes):
            raise EngineError(f"tensorrt engine: cache needs {len(self.cache_shapes)} levels, got {len(item.cache)}")
        feeds = {"image": np.ascontiguousarray(item.image[None], dtype=np.float32)}
        for name, entry in zip(INPUT_NAMES[1:], item.cache):
            feeds[name] = np.ascontiguousarray(entry, dtype=np.float32)
        started = time.perf_counter()
        try:
            out = self.runner.run(feeds)
        except Exception as exc:
            raise EngineError(f"tensorrt engine ({self.path.name}): {exc}") from exc
        return output_from_graph(out, (time.perf_counter() - started) * 1000.0)

    def close(self) -> None:
        self._closed = True
        self.runner = None
