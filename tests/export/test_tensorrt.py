"""export.tensorrt: the CLI's errors and optimisation profile (run everywhere), the
TemporalRoIAlign plugin against the CPU reference (needs TensorRT and a GPU),
and a syntax check of the plugin source (needs TensorRT's headers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from export import tensorrt as trt_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SOURCE = REPO / "export/tensorrt_plugin/temporal_roi_align_plugin.cpp"
NO_TENSORRT = (
    "TensorRT is not installable on this machine (no NVIDIA GPU; PyPI's tensorrt packages download from NVIDIA)"
)


def troia_model(path: Path, levels: int = 1, channels: int = 8, k: int = 2) -> Path:
    """A graph holding one plugin-mode TemporalRoIAlign node, with dynamic R and T."""
    inputs = [
        helper.make_tensor_value_info("roi_feats", TensorProto.FLOAT, ["num_rois", channels, 3, 3]),
        helper.make_tensor_value_info("levels", TensorProto.INT64, ["num_rois"]),
        helper.make_tensor_value_info("batch_index", TensorProto.INT64, ["num_rois"]),
    ]
    inputs += [
        helper.make_tensor_value_info(f"support_{l}", TensorProto.FLOAT, [1, "frames", channels, 6 - l, 5 - l])
        for l in range(levels)
    ]
    node = helper.make_node(
        "TemporalRoIAlign",
        [i.name for i in inputs],
        ["support_roi_feats"],
        domain="ai.onnx.contrib",
        num_most_similar=k,
        plugin_version="1",
        plugin_namespace="cellwatch",
    )
    output = helper.make_tensor_value_info("support_roi_feats", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "troia", inputs, [output])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(path))
    return path


def detector_inputs_model(path: Path) -> Path:
    """Inputs shaped like the detector's: images and four levels of support features."""
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])]
    inputs += [
        helper.make_tensor_value_info(f"support_{l}", TensorProto.FLOAT, ["batch", "frames", 256, f"h{l}", f"w{l}"])
        for l in range(4)
    ]
    node = helper.make_node("Identity", ["images"], ["out"])
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    onnx.save(helper.make_model(helper.make_graph([node], "g", inputs, [output])), str(path))
    return path


# troia_model's RoI count is dynamic; the CLI cannot guess its range.
TROIA_SHAPES = ["--shape=roi_feats=1x8x3x3:6x8x3x3:16x8x3x3", "--shape=levels=1:6:16", "--shape=batch_index=1:6:16"]


# --- CLI errors that need no TensorRT ---------------------------------------------------------


def test_missing_onnx_file(tmp_path, capsys):
    code = trt_cli.main(["--onnx", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "m.engine")])
    assert code == 2
    assert f"ONNX file not found: {tmp_path / 'none.onnx'}" in capsys.readouterr().err
    assert not (tmp_path / "m.engine").exists()


def test_unreadable_onnx_file(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\xff\xff\xff not a protobuf")
    assert trt_cli.main(["--onnx", str(broken), "--out", str(tmp_path / "m.engine")]) == 2
    assert f"cannot read ONNX file {broken}" in capsys.readouterr().err


def test_missing_plugin_library(tmp_path, capsys):
    model = troia_model(tmp_path / "troia.onnx")
    missing = tmp_path / "libnone.so"
    argv = ["--onnx", str(model), "--out", str(tmp_path / "m.engine"), "--plugin-lib", str(missing), *TROIA_SHAPES]
    assert trt_cli.main(argv) == 2
    assert f"plugin library not found: {missing}" in capsys.readouterr().err


def test_plugin_graph_without_built_plugin_says_how_to_build(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CELLWATCH_TRT_PLUGIN", raising=False)
    monkeypatch.setattr(trt_cli, "DEFAULT_PLUGIN_LIB", tmp_path / "build/libcellwatch_trt_plugins.so")
    model = troia_model(tmp_path / "troia.onnx")
    assert trt_cli.main(["--onnx", str(model), "--out", str(tmp_path / "m.engine"), *TROIA_SHAPES]) == 2
    err = capsys.readouterr().err
    assert "TemporalRoIAlign nodes but the plugin library is missing" in err and "cmake -S" in err


def test_tensorrt_missing_gives_install_hint(tmp_path, capsys, monkeypatch):
    # None in sys.modules makes `import tensorrt` fail even where it is installed.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    model = troia_model(tmp_path / "troia.onnx")
    plugin = tmp_path / "libplugin.so"
    plugin.write_bytes(b"")  # existence is all the CLI checks before importing TensorRT
    argv = ["--onnx", str(model), "--out", str(tmp_path / "m.engine"), "--plugin-lib", str(plugin), *TROIA_SHAPES]
    code = trt_cli.main(argv)
    assert code == 1
    assert "TensorRT is not installed: pip install tensorrt on a machine with an NVIDIA GPU" in capsys.readouterr().err
    assert not (tmp_path / "m.engine").exists()


def test_cli_entry_point_and_lazy_imports(tmp_path):
    # The real `python -m` entry; importing the module must pull in neither TensorRT nor torch.
    result = subprocess.run(
        [sys.executable, "-m", "export.tensorrt", "--onnx", str(tmp_path / "x.onnx"), "--out", str(tmp_path / "x")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "ONNX file not found" in result.stderr
    probe = "import sys, export.tensorrt; print(sorted({'tensorrt', 'torch'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "[]", imported.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--shape", "images=1x3x32x32:1x3x64"],
        ["--shape", "no-ranges"],
        ["--min-support-frames", "3", "--max-support-frames", "2"],
        ["--opt-image", "640"],
        ["--min-image-side", "700", "--opt-image", "384x640"],
        ["--support-strides", "4,eight"],
    ],
)
def test_bad_arguments_exit_2(tmp_path, extra):
    with pytest.raises(SystemExit) as exit_info:
        trt_cli.parse_args(["--onnx", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "m.engine"), *extra])
    assert exit_info.value.code == 2


# --- the optimisation profile -------------------------------------------------------------------


def test_profile_from_detector_inputs(tmp_path):
    inputs = trt_cli.onnx_inputs(trt_cli.read_onnx(detector_inputs_model(tmp_path / "det.onnx")))
    settings = trt_cli.ProfileSettings(max_batch=2, max_support_frames=3)
    shapes = trt_cli.profile_shapes(inputs, settings)
    assert shapes["images"] == ((1, 3, 32, 32), (1, 3, 384, 640), (2, 3, 1344, 1344))
    # Level l has stride 4 * 2**l; T runs from 0 (a stream's first frame) to the maximum.
    assert shapes["support_0"] == ((1, 0, 256, 8, 8), (1, 3, 256, 96, 160), (2, 3, 256, 336, 336))
    assert shapes["support_3"] == ((1, 0, 256, 1, 1), (1, 3, 256, 12, 20), (2, 3, 256, 42, 42))


def test_profile_from_export_onnx_inputs(tmp_path):
    # export.onnx's layout: a fixed-size image and per-level caches [T, C, H_l, W_l].
    inputs = [
        trt_cli.InputSpec("image", (1, 3, 384, 640), TensorProto.FLOAT),
        *(trt_cli.InputSpec(f"support_p{n}", ("T", 128, 384 >> n, 640 >> n), TensorProto.FLOAT) for n in (2, 3)),
    ]
    shapes = trt_cli.profile_shapes(inputs, trt_cli.ProfileSettings(max_support_frames=2))
    assert "image" not in shapes  # static: no profile needed
    assert shapes["support_p2"] == ((0, 128, 96, 160), (2, 128, 96, 160), (2, 128, 96, 160))
    # A dynamic spatial dim takes its stride from the name (p3: 8), not from the input order.
    inputs[2] = trt_cli.InputSpec("support_p3", ("T", 128, "h", 80), TensorProto.FLOAT)
    shapes = trt_cli.profile_shapes(inputs[2:], trt_cli.ProfileSettings(max_support_frames=2))
    assert shapes["support_p3"] == ((0, 128, 4, 80), (2, 128, 48, 80), (2, 128, 168, 80))


def test_profile_needs_shape_for_unknown_dynamic_inputs(tmp_path):
    inputs = trt_cli.onnx_inputs(trt_cli.read_onnx(troia_model(tmp_path / "troia.onnx")))
    with pytest.raises(trt_cli.TensorRTSetupError, match="pass --shape roi_feats=MIN:OPT:MAX"):
        trt_cli.profile_shapes(inputs, trt_cli.ProfileSettings())
    rois = ((1, 8, 3, 3), (50, 8, 3, 3), (200, 8, 3, 3))
    index = ((1,), (50,), (200,))
    overrides = {"roi_feats": rois, "levels": index, "batch_index": index}
    shapes = trt_cli.profile_shapes(inputs, trt_cli.ProfileSettings(max_support_frames=2), overrides)
    assert shapes["roi_feats"] == rois
    assert shapes["support_0"] == ((1, 0, 8, 6, 5), (1, 2, 8, 6, 5), (1, 2, 8, 6, 5))  # only T is dynamic
    with pytest.raises(trt_cli.TensorRTSetupError, match="--shape names no ONNX input"):
        trt_cli.profile_shapes(inputs, trt_cli.ProfileSettings(), {"rois": rois})


def test_shape_override_parsing():
    assert trt_cli.parse_shape_override("rois=1x2:3x4:5x6") == ("rois", ((1, 2), (3, 4), (5, 6)))
    with pytest.raises(argparse.ArgumentTypeError, match="same rank"):
        trt_cli.parse_shape_override("rois=1x2:3:5x6")


# --- with TensorRT: build and run the plugin ---------------------------------------------------


def _tensorrt_include_dir() -> Path | None:
    roots = [os.environ.get("TENSORRT_ROOT"), "/usr", "/usr/local/tensorrt", "/opt/tensorrt"]
    for root in filter(None, roots):
        for sub in ("include", "include/x86_64-linux-gnu", "include/aarch64-linux-gnu"):
            if (Path(root) / sub / "NvInferRuntime.h").is_file():
                return Path(root) / sub
    return None


@pytest.fixture(scope="module")
def plugin_lib(tmp_path_factory) -> Path:
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU")
    lib = Path(os.environ.get("CELLWATCH_TRT_PLUGIN") or trt_cli.DEFAULT_PLUGIN_LIB)
    if lib.is_file():
        return lib
    include = _tensorrt_include_dir()
    if include is None or shutil.which("cmake") is None:
        pytest.skip("plugin library not built and cmake or TensorRT headers are missing (set TENSORRT_ROOT)")
    build = tmp_path_factory.mktemp("trt_plugin_build")
    source = REPO / "export/tensorrt_plugin"
    configure = ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_CUDA_ARCHITECTURES=native"]
    if os.environ.get("TENSORRT_ROOT"):  # else CMake searches the system paths, as _tensorrt_include_dir did
        configure.append(f"-DTENSORRT_ROOT={os.environ['TENSORRT_ROOT']}")
    for cmd in (configure, ["cmake", "--build", str(build), "-j"]):
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    return build / "libcellwatch_trt_plugins.so"


@pytest.mark.parametrize("frames", [0, 1, 2])
def test_plugin_engine_matches_cpu_reference(tmp_path, plugin_lib, frames):
    from export.kernels.build import most_similar_roi_align_cpu
    from export.trt_runner import TensorRTRunner

    model = troia_model(tmp_path / "troia.onnx", levels=2, channels=8, k=2)
    engine = tmp_path / "troia.engine"
    argv = ["--onnx", str(model), "--out", str(engine), "--plugin-lib", str(plugin_lib), *TROIA_SHAPES]
    assert trt_cli.main(argv) == 0
    rng = np.random.default_rng(frames)
    feeds = {
        "roi_feats": rng.standard_normal((6, 8, 3, 3), dtype=np.float32),
        "levels": rng.integers(0, 2, 6),
        "batch_index": np.zeros(6, dtype=np.int64),
        "support_0": rng.standard_normal((1, frames, 8, 6, 5), dtype=np.float32),
        "support_1": rng.standard_normal((1, frames, 8, 5, 4), dtype=np.float32),
    }
    out = TensorRTRunner(engine, plugin_lib).run(feeds)["support_roi_feats"]
    expected = most_similar_roi_align_cpu(
        feeds["roi_feats"], feeds["levels"], feeds["batch_index"], [feeds["support_0"], feeds["support_1"]], 2
    )
    assert out.shape == (frames, 6, 8, 3, 3)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_plugin_source_compiles_against_tensorrt_headers():
    include = _tensorrt_include_dir()
    if include is None:
        pytest.skip("TensorRT headers (NvInferRuntime.h) not found; set TENSORRT_ROOT. " + NO_TENSORRT)
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    cuda_include = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
    cmd = [compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", f"-I{include}", f"-I{cuda_include}",
           f"-I{REPO / 'export/kernels'}", str(PLUGIN_SOURCE)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
