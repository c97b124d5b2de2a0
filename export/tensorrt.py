"""Builds TensorRT engines from cellwatch's ONNX export.

``python -m export.tensorrt --onnx model.onnx --out model.engine [--fp16]`` parses
the ONNX file with TensorRT's parser, loads the "TemporalRoIAlign" plugin
library (``export/tensorrt_plugin``), gives every dynamic input one
optimisation profile and writes the serialized engine; ``export.trt_runner``
runs such an engine.

The profile is read off the ONNX inputs' dynamic dims: ``[B, 3, H, W]`` images
get sides from ``--min-image-side`` to ``--max-image-side`` (optimum
``--opt-image``); support inputs (``[B, T, C, H_l, W_l]``, or ``[T, C, H_l, W_l]``
named ``support_*`` as export.onnx writes them) get T from
``--min-support-frames`` to ``--max-support-frames`` and the image sides
divided by their FPN stride (``2**n`` for a name ending in ``p<n>``, else
``--support-strides`` in input order); batch dims 1 to ``--max-batch``.
``--shape NAME=MIN:OPT:MAX`` (dims joined by ``x``) sets any input outright.
Exit status: 0 built, 2 bad arguments or input files, 1 TensorRT missing or
the build failed.

TensorRT is imported only inside functions, so this module imports anywhere.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent / "tensorrt_plugin"
# Where the CMake build in export/tensorrt_plugin/README.md puts the library;
# $CELLWATCH_TRT_PLUGIN overrides it.
DEFAULT_PLUGIN_LIB = PLUGIN_DIR / "build" / "libcellwatch_trt_plugins.so"
PLUGIN_OP_TYPE = "TemporalRoIAlign"
TENSORRT_MISSING = (
    "TensorRT is not installed: pip install tensorrt on a machine with an NVIDIA GPU "
    "(Linux, x86-64 or aarch64, a recent NVIDIA driver); TensorRT 10 or newer is needed for the plugin"
)

Shape = tuple[int, ...]


class TensorRTSetupError(RuntimeError):
    """A missing or unreadable input, library or package; the message says which and what to do."""

    exit_code = 2


class TensorRTUnavailableError(TensorRTSetupError):
    exit_code = 1


class TensorRTBuildError(RuntimeError):
    exit_code = 1


def import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as err:  # OSError: the package is there, its libnvinfer is not
        raise TensorRTUnavailableError(f"{TENSORRT_MISSING} ({err})") from err
    return tensorrt


@dataclass(frozen=True)
class InputSpec:
    """One ONNX graph input: static dims are ints, dynamic ones their symbol or None."""

    name: str
    shape: tuple[int | str | None, ...]
    elem_type: int


def read_onnx(path: str | os.PathLike):
    """The ONNX model at ``path`` (weights left on disk), or TensorRTSetupError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise TensorRTSetupError(f"ONNX file not found: {path}")
    try:
        import onnx
    except ImportError as err:
        raise TensorRTSetupError("reading ONNX inputs needs the onnx package: pip install onnx") from err
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, ValueError, OSError...
        raise TensorRTSetupError(f"cannot read ONNX file {path}: {type(err).__name__}: {err}") from err


def onnx_inputs(model) -> list[InputSpec]:
    """The graph's real inputs (initializers listed as inputs by old exporters are skipped)."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
        )
        specs.append(InputSpec(value.name, dims, tensor.elem_type))
    return specs


@dataclass(frozen=True)
class ProfileSettings:
    max_batch: int = 1
    min_image_side: int = 32
    opt_image: tuple[int, int] = (384, 640)  # the presets' 360x640, padded to a multiple of 32
    max_image_side: int = 1344
    min_support_frames: int = 0
    max_support_frames: int = 2
    support_strides: tuple[int, ...] = (4, 8, 16, 32)


def _dynamic(dim) -> bool:
    return not isinstance(dim, int) or dim <= 0


def profile_shapes(
    inputs: Sequence[InputSpec],
    settings: ProfileSettings,
    overrides: Mapping[str, tuple[Shape, Shape, Shape]] | None = None,
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes for every input with a dynamic dim; see the module docstring."""
    overrides = overrides or {}
    unknown = set(overrides) - {spec.name for spec in inputs}
    if unknown:
        raise TensorRTSetupError(f"--shape names no ONNX input: {sorted(unknown)}; inputs: {[s.name for s in inputs]}")
    sides = (settings.min_image_side, settings.opt_image, settings.max_image_side)
    # The l-th support input is support level l, whatever else comes between.
    support_levels = {spec.name: level for level, spec in enumerate(s for s in inputs if _is_support(s))}
    shapes = {}
    for spec in inputs:
        dims = spec.shape
        if spec.name in overrides:
            shapes[spec.name] = overrides[spec.name]
            continue
        if not any(_dynamic(d) for d in dims):
            continue
        # Per dim: the (min, opt, max) a dynamic dim of that role gets.
        roles: list[tuple[int, int, int] | None] = [None] * len(dims)
        batch = (1, 1, settings.max_batch)
        if len(dims) == 4 and dims[1] == 3:  # images [B, 3, H, W]
            roles = [batch, None, _image_range(sides, 0), _image_range(sides, 1)]
        elif len(dims) == 3 and dims[0] == 3:  # one image [3, H, W]
            roles = [None, _image_range(sides, 0), _image_range(sides, 1)]
        elif spec.name in support_levels:  # support features [B, T, C, H_l, W_l] or [T, C, H_l, W_l]
            stride = _support_stride(spec.name, support_levels[spec.name], settings.support_strides)
            frames = (settings.min_support_frames, settings.max_support_frames, settings.max_support_frames)
            roles = [frames, None, _image_range(sides, 0, stride), _image_range(sides, 1, stride)]
            if len(dims) == 5:
                roles.insert(0, batch)
        unresolved = [i for i, d in enumerate(dims) if _dynamic(d) and roles[i] is None]
        if unresolved:
            raise TensorRTSetupError(
                f"input {spec.name!r} {list(dims)} has dynamic dims at {unresolved} whose range cannot be inferred; "
                f"pass --shape {spec.name}=MIN:OPT:MAX (e.g. 1x256x7x7:100x256x7x7:1000x256x7x7)"
            )
        shapes[spec.name] = tuple(
            tuple(roles[i][j] if _dynamic(d) else d for i, d in enumerate(dims)) for j in range(3)
        )  # type: ignore[assignment]
    return shapes


def _is_support(spec: InputSpec) -> bool:
    """[B, T, C, H, W] inputs, and [T, C, H, W] ones named support_* (export.onnx's per-stream cache)."""
    return len(spec.shape) == 5 or (len(spec.shape) == 4 and spec.name.startswith("support"))


def _support_stride(name: str, level: int, strides: Sequence[int]) -> int:
    """FPN stride of a support input: 2**n for a name ending in ``p<n>``, else ``strides[level]``."""
    suffix = name.rsplit("_", 1)[-1]
    if len(suffix) > 1 and suffix[0] == "p" and suffix[1:].isdigit():
        return 2 ** int(suffix[1:])
    if level >= len(strides):
        raise TensorRTSetupError(
            f"input {name!r} is support level {level}, but --support-strides gives only {len(strides)} strides"
        )
    return strides[level]


def _image_range(sides, axis: int, stride: int = 1) -> tuple[int, int, int]:
    low, opt, high = sides
    return tuple(max(1, math.ceil(side / stride)) for side in (low, opt[axis], high))  # type: ignore[return-value]


def parse_shape_override(text: str) -> tuple[str, tuple[Shape, Shape, Shape]]:
    """``NAME=1x3x32x32:1x3x384x640:1x3x1344x1344`` -> (name, (min, opt, max))."""
    name, sep, ranges = text.rpartition("=")
    parts = ranges.split(":")
    try:
        if not sep or not name or len(parts) != 3:
            raise ValueError
        shapes = tuple(tuple(int(d) for d in part.split("x")) if part else () for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=MIN:OPT:MAX with dims joined by 'x', got {text!r}") from None
    if len({len(s) for s in shapes}) != 1:
        raise argparse.ArgumentTypeError(f"MIN, OPT and MAX must have the same rank in {text!r}")
    return name, shapes  # type: ignore[return-value]


def resolve_plugin_lib(plugin_lib: str | os.PathLike | None, required: bool) -> Path | None:
    """The plugin library to load: the given path (must exist), else the default build path."""
    if plugin_lib is not None:
        path = Path(plugin_lib)
        if not path.is_file():
            raise TensorRTSetupError(f"plugin library not found: {path}")
        return path
    path = Path(os.environ.get("CELLWATCH_TRT_PLUGIN") or DEFAULT_PLUGIN_LIB)
    if path.is_file():
        return path
    if required:
        raise TensorRTSetupError(
            f"the ONNX graph has {PLUGIN_OP_TYPE} nodes but the plugin library is missing: {path}; build it "
            f"(cmake -S {PLUGIN_DIR} -B {PLUGIN_DIR / 'build'} -DTENSORRT_ROOT=... && cmake --build "
            f"{PLUGIN_DIR / 'build'}) or pass --plugin-lib"
        )
    return None


_loaded_plugin_libs: set[str] = set()


def load_plugin_library(trt, path: Path) -> None:
    """Registers the library's creators (its getCreators entry point) with TensorRT, once per process."""
    key = str(path.resolve())
    if key in _loaded_plugin_libs:
        return
    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailableError(f"TensorRT {trt.__version__} is too old for the IPluginV3 plugin: need >= 10")
    if trt.get_plugin_registry().load_library(key) is None:
        raise TensorRTSetupError(f"TensorRT could not load the plugin library {path}")
    _loaded_plugin_libs.add(key)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    shapes: Mapping[str, tuple[Shape, Shape, Shape]],
    plugin_lib: Path | None,
    fp16: bool = False,
    workspace_mb: int = 2048,
) -> int:
    """Parses, builds and writes the engine; returns its size in bytes."""
    trt = import_tensorrt()
    if plugin_lib is not None:
        load_plugin_library(trt, plugin_lib)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):  # releases that build strongly typed networks only
            raise TensorRTBuildError(f"TensorRT {trt.__version__} has no FP16 builder flag; export an FP16 ONNX")
        config.set_flag(trt.BuilderFlag.FP16)
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    profile_inputs = {name: s for name, s in shapes.items() if name in network_inputs}
    if profile_inputs:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile_inputs.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            monitor.close()
    if serialized is None:
        raise TensorRTBuildError("TensorRT failed to build the engine; its log above says why")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(serialized)
    return engine_path.stat().st_size


def _progress_monitor(trt):
    """A tqdm bar over the builder's top-level phases, where TensorRT offers IProgressMonitor."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    from tqdm import tqdm

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, tqdm] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=False)

        def step_complete(self, phase_name, step):
            if phase_name in self.bars:
                self.bars[phase_name].update(1)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

        def close(self) -> None:
            for bar in self.bars.values():
                bar.close()

    return BuildProgress()


def _image_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 384x640, got {text!r}") from None
    return height, width


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export.tensorrt", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path, required=True, help="ONNX model from python -m export.onnx")
    p.add_argument("--out", type=Path, required=True, help="engine file to write")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels (the plugin itself runs FP32)")
    p.add_argument(
        "--plugin-lib",
        type=Path,
        help=f"TemporalRoIAlign plugin library (default: $CELLWATCH_TRT_PLUGIN, else {DEFAULT_PLUGIN_LIB})",
    )
    p.add_argument("--max-support-frames", type=int, default=2, help="largest support frame count T")
    p.add_argument("--min-support-frames", type=int, default=0, help="smallest T (0: the first frame of a stream)")
    p.add_argument("--workspace-mb", type=int, default=2048, help="TensorRT workspace memory pool limit")
    p.add_argument("--max-batch", type=int, default=1, help="largest batch of images")
    p.add_argument("--min-image-side", type=int, default=32)
    p.add_argument("--opt-image", type=_image_size, default=(384, 640), help="HxW the engine is tuned for")
    p.add_argument("--max-image-side", type=int, default=1344)
    p.add_argument("--support-strides", default="4,8,16,32", help="FPN stride of each support input, in order")
    p.add_argument(
        "--shape", type=parse_shape_override, action="append", default=[], metavar="NAME=MIN:OPT:MAX",
        help="profile of one input, dims joined by x (repeatable); overrides the inferred one",
    )  # fmt: skip
    args = p.parse_args(argv)
    if not 0 <= args.min_support_frames <= args.max_support_frames:
        p.error("need 0 <= --min-support-frames <= --max-support-frames")
    if args.workspace_mb <= 0 or args.max_batch < 1:
        p.error("--workspace-mb and --max-batch must be positive")
    if not 1 <= args.min_image_side <= min(args.opt_image) <= max(args.opt_image) <= args.max_image_side:
        p.error("need 1 <= --min-image-side <= each side of --opt-image <= --max-image-side")
    try:
        args.support_strides = tuple(int(s) for s in args.support_strides.split(","))
    except ValueError:
        p.error(f"--support-strides must be comma-separated integers, got {args.support_strides!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        model = read_onnx(args.onnx)
        settings = ProfileSettings(
            max_batch=args.max_batch,
            min_image_side=args.min_image_side,
            opt_image=args.opt_image,
            max_image_side=args.max_image_side,
            min_support_frames=args.min_support_frames,
            max_support_frames=args.max_support_frames,
            support_strides=args.support_strides,
        )
        shapes = profile_shapes(onnx_inputs(model), settings, dict(args.shape))
        needs_plugin = any(node.op_type == PLUGIN_OP_TYPE for node in model.graph.node)
        plugin_lib = resolve_plugin_lib(args.plugin_lib, required=needs_plugin)
        del model
        size = build_engine(args.onnx, args.out, shapes, plugin_lib, args.fp16, args.workspace_mb)
    except (TensorRTSetupError, TensorRTBuildError) as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    profile = "; ".join(f"{name} {'x'.join(map(str, s[0]))}..{'x'.join(map(str, s[2]))}" for name, s in shapes.items())
    print(
        f"wrote {args.out} ({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s, "
        f"fp16={'on' if args.fp16 else 'off'}, plugin={plugin_lib}, profile: {profile or 'static'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
