"""Builds the C++/CUDA Most-Similar RoI Align sources and runs the CPU build.

Owns compiling ``troi_cpu.cpp`` with g++ into a shared library (loaded with
ctypes: ``most_similar_roi_align_cpu``) and ``troi_cuda.cu`` with ``nvcc -c``.
Both share the per-cell code of ``troi_cuda.cuh``, so the CPU library checks
what the CUDA kernel computes on machines without a GPU.

Outputs go to a cache directory outside the source tree (``out_dir``, else
``$CELLWATCH_KERNEL_CACHE``, else ``~/.cache/cellwatch/kernels``), named by a
hash of the sources and flags so an edited source is never served stale.
numpy only; torch tensors are accepted and returned when given.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent
HEADER = KERNEL_DIR / "troi_cuda.cuh"
CPU_SOURCE = KERNEL_DIR / "troi_cpu.cpp"
CUDA_SOURCE = KERNEL_DIR / "troi_cuda.cu"

MAX_K = 4  # kTroiMaxK
MAX_LEVELS = 8  # kTroiMaxLevels
CPU_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra")
CUDA_FLAGS = ("-c", "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "--ptxas-options=-v")


class KernelBuildError(RuntimeError):
    """A compiler is missing or failed; the message carries its output."""


def cache_dir(out_dir: str | os.PathLike | None = None) -> Path:
    path = Path(out_dir or os.environ.get("CELLWATCH_KERNEL_CACHE") or Path.home() / ".cache/cellwatch/kernels")
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME or /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin/nvcc").is_file():
            return str(Path(root) / "bin/nvcc")
    return None


def _digest(sources: Sequence[Path], flags: Sequence[str]) -> str:
    h = hashlib.sha256()
    for source in sources:
        h.update(source.read_bytes())
    h.update("\0".join(flags).encode())
    return h.hexdigest()[:16]


def _compile(command: list[str], target: Path, what: str) -> Path:
    """Runs ``command`` with ``{out}`` replaced by a temporary path, then moves it to ``target``.

    The rename makes concurrent builds (pytest-xdist, two services) safe: a
    reader never sees a half-written library.
    """
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        cmd = [tmp_name if part == "{out}" else part for part in command]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as err:
            raise KernelBuildError(f"{what}: cannot run {cmd[0]}: {err}") from err
        if result.returncode != 0:
            raise KernelBuildError(
                f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n{result.stdout}{result.stderr}"
            )
        log = target.with_name(target.name + ".log")
        log.write_text(result.stdout + result.stderr)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def build_cpu_library(out_dir: str | os.PathLike | None = None, compiler: str | None = None) -> Path:
    """Compiles ``troi_cpu.cpp`` (with g++ or ``$CXX``) into a shared library; returns its path."""
    compiler = compiler or os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"C++ compiler {compiler!r} not found; install g++ or set $CXX")
    target = cache_dir(out_dir) / f"libcellwatch_troi_cpu-{_digest([HEADER, CPU_SOURCE], CPU_FLAGS)}.so"
    if target.is_file():
        return target
    command = [compiler, *CPU_FLAGS, f"-I{KERNEL_DIR}", str(CPU_SOURCE), "-o", "{out}"]
    return _compile(command, target, f"{compiler} (CPU Most-Similar RoI Align library)")


def compile_cuda_object(
    out_dir: str | os.PathLike | None = None, arch: str = "sm_80", nvcc: str | None = None
) -> Path:
    """Compiles ``troi_cuda.cu`` with ``nvcc -c -arch=ARCH``; returns the object file's path.

    nvcc's output (ptxas register and stack usage) is kept next to it as ``<object>.log``.
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise KernelBuildError("nvcc not found on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin")
    flags = (*CUDA_FLAGS, f"-arch={arch}")
    target = cache_dir(out_dir) / f"troi_cuda-{arch}-{_digest([HEADER, CUDA_SOURCE], flags)}.o"
    if target.is_file():
        return target
    command = [nvcc, *flags, f"-I{KERNEL_DIR}", str(CUDA_SOURCE), "-o", "{out}"]
    return _compile(command, target, f"nvcc (CUDA Most-Similar RoI Align, {arch})")


@functools.lru_cache(maxsize=None)
def _load(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    i64p = ctypes.POINTER(ctypes.c_int64)
    fp = ctypes.POINTER(ctypes.c_float)
    lib.cellwatch_troi_cpu.restype = ctypes.c_int32
    lib.cellwatch_troi_cpu.argtypes = [
        fp, i64p, i64p, ctypes.POINTER(fp), i64p, i64p, ctypes.c_int32,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int32, fp,
    ]  # fmt: skip
    lib.cellwatch_troi_status_string.restype = ctypes.c_char_p
    lib.cellwatch_troi_status_string.argtypes = [ctypes.c_int32]
    return lib


def load_cpu_library(library: str | os.PathLike | None = None) -> ctypes.CDLL:
    """The CPU library at ``library``, else built (once) into the cache directory."""
    return _load(str(Path(library) if library is not None else build_cpu_library()))


def _as_numpy(name: str, value, dtype: type) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself is not needed here
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if dtype is np.float32 and array.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {array.dtype}")
    if dtype is np.int64:
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got {array.dtype}")
        array = array.astype(np.int64, copy=False)
    return np.ascontiguousarray(array)


def _pointer(array: np.ndarray, ctype):
    return array.ctypes.data_as(ctypes.POINTER(ctype))


def most_similar_roi_align_cpu(roi_feats, levels, batch_index, supports: Sequence, k: int, library=None):
    """Most-Similar RoI Align on the CPU with the kernel's own per-cell code.

    roi_feats ``[R, C, h, w]`` float32, levels and batch_index ``[R]`` integers,
    supports one ``[B, T, C, H_l, W_l]`` float32 map per level; returns
    ``[T, R, C, h, w]`` (a torch tensor when ``roi_feats`` is one, else numpy).
    Raises ValueError on bad shapes or dtypes here, and with the library's
    message on what it checks (k, level and batch indices).
    """
    was_torch = hasattr(roi_feats, "detach")
    feats = _as_numpy("roi_feats", roi_feats, np.float32)
    level_index = _as_numpy("levels", levels, np.int64)
    image_index = _as_numpy("batch_index", batch_index, np.int64)
    maps = [_as_numpy(f"supports[{i}]", s, np.float32) for i, s in enumerate(supports)]
    if feats.ndim != 4:
        raise ValueError(f"roi_feats must be [R, C, h, w], got shape {feats.shape}")
    num_rois, channels, height, width = feats.shape
    for name, index in (("levels", level_index), ("batch_index", image_index)):
        if index.shape != (num_rois,):
            raise ValueError(f"{name} must be [R={num_rois}], got shape {index.shape}")
    if not 1 <= len(maps) <= MAX_LEVELS:
        raise ValueError(f"supports needs 1..{MAX_LEVELS} levels, got {len(maps)}")
    for i, support in enumerate(maps):
        if support.ndim != 5:
            raise ValueError(f"supports[{i}] must be [B, T, C, H, W], got shape {support.shape}")
        if support.shape[:3] != maps[0].shape[:2] + (channels,):
            raise ValueError(
                f"supports[{i}] has shape {support.shape}; every level must be [B, T, C={channels}, H_l, W_l] "
                f"with the B and T of supports[0] {maps[0].shape[:2]}"
            )
    batch, frames = maps[0].shape[:2]
    out = np.zeros((frames, num_rois, channels, height, width), dtype=np.float32)

    pointers = (ctypes.POINTER(ctypes.c_float) * len(maps))(*(_pointer(s, ctypes.c_float) for s in maps))
    heights = np.array([s.shape[3] for s in maps], dtype=np.int64)
    widths = np.array([s.shape[4] for s in maps], dtype=np.int64)
    lib = load_cpu_library(library)
    status = lib.cellwatch_troi_cpu(
        _pointer(feats, ctypes.c_float), _pointer(level_index, ctypes.c_int64), _pointer(image_index, ctypes.c_int64),
        pointers, _pointer(heights, ctypes.c_int64), _pointer(widths, ctypes.c_int64), len(maps),
        num_rois, channels, height, width, batch, frames, int(k), _pointer(out, ctypes.c_float),
    )  # fmt: skip
    if status != 0:
        raise ValueError(f"most_similar_roi_align_cpu: {lib.cellwatch_troi_status_string(status).decode()}")
    if was_torch:
        import torch

        return torch.from_numpy(out)
    return out
