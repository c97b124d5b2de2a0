"""Runs a TensorRT engine built by ``python -m export.tensorrt`` on numpy feeds.

Owns ``TensorRTRunner``: one deserialized engine and execution context, torch
CUDA tensors as device buffers, outputs allocated through an IOutputAllocator
so data-dependent shapes (detections after NMS) need no guessed sizes.
TensorRT and torch are imported when an engine is created, not at import.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .tensorrt import (
    PLUGIN_OP_TYPE,
    TensorRTSetupError,
    TensorRTUnavailableError,
    import_tensorrt,
    load_plugin_library,
    resolve_plugin_lib,
)


class TensorRTRunner:
    """A deserialized engine with one execution context; ``run`` maps numpy feeds to numpy outputs.

    Inputs are copied to torch CUDA tensors; outputs are allocated by an
    IOutputAllocator when TensorRT knows their shape (also data-dependent
    ones), so no output size has to be guessed beforehand.
    """

    def __init__(self, engine_path: str | os.PathLike, plugin_lib: str | os.PathLike | None = None, device: int = 0):
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise TensorRTUnavailableError("TensorRTRunner needs a CUDA GPU; torch.cuda.is_available() is False")
        path = Path(engine_path)
        if not path.is_file():
            raise TensorRTSetupError(f"engine file not found: {path}")
        lib = resolve_plugin_lib(plugin_lib, required=False)
        if lib is not None:
            load_plugin_library(trt, lib)
        self._trt, self._torch = trt, torch
        self.device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise TensorRTSetupError(
                f"cannot deserialize {path}: built by another TensorRT version or GPU, or it needs the "
                f"{PLUGIN_OP_TYPE} plugin library (loaded: {lib})"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._allocator = _output_allocator(trt, torch, self.device)
        for name in self.output_names:
            self.context.set_output_allocator(name, self._allocator)
        # TensorRT wants a valid address even for an empty tensor.
        self._placeholder = torch.empty(256, dtype=torch.uint8, device=self.device)

    def _numpy_dtype(self, name: str) -> np.dtype:
        return np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        missing = [n for n in self.input_names if n not in feeds]
        unexpected = [n for n in feeds if n not in self.input_names]
        if missing or unexpected:
            raise ValueError(f"feeds must be exactly {self.input_names}; missing {missing}, unexpected {unexpected}")
        device_inputs = []  # kept alive until the stream is done with them
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self._numpy_dtype(name))
            tensor = torch.from_numpy(array).to(self.device)
            device_inputs.append(tensor)
            if not self.context.set_input_shape(name, tuple(array.shape)):
                raise ValueError(f"input {name!r} shape {array.shape} is outside the engine's optimisation profile")
            address = tensor.data_ptr() if tensor.numel() else self._placeholder.data_ptr()
            self.context.set_tensor_address(name, address)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed; its log says why")
        stream.synchronize()
        outputs = {}
        for name in self.output_names:
            shape = self._allocator.shapes[name]
            dtype = self._numpy_dtype(name)
            count = math.prod(shape)
            raw = self._allocator.buffers[name][: count * dtype.itemsize].cpu().numpy()
            outputs[name] = raw.view(dtype).reshape(shape)
        return outputs


def _output_allocator(trt, torch, device):
    """An IOutputAllocator backed by torch CUDA tensors (grown, never shrunk, per output)."""

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, object] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            buffer = self.buffers.get(tensor_name)
            if buffer is None or buffer.numel() < size:
                # torch's caching allocator aligns to 512 bytes, beyond any alignment TensorRT asks for.
                buffer = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
                self.buffers[tensor_name] = buffer
            return buffer.data_ptr()

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(shape)

    return TorchOutputAllocator()
