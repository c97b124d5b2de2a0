"""Test-session setup that must happen before any test module imports torch or triton."""

import os
from pathlib import Path

# Without an NVIDIA device, Triton kernels run on the CPU interpreter; the
# variable is read when triton is first imported (torchvision imports it), so
# it is set here, before collection.
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def lite_temporal(tmp_path_factory):
    """``(model, onnx_path)``: lite with Temporal RoI Align and random heads
    (seed 0) in PyTorch, and the same network exported through the CLI to a
    standard-mode ONNX file for vtest's 768x576 frames. Exporting takes about
    a minute, so the test modules share this one file."""
    from export.onnx import main, resolve_model

    path = tmp_path_factory.mktemp("lite") / "lite.onnx"
    code = main(["--preset", "lite", "--mode", "standard", "--out", str(path), "--frame-size", "768x576",
                 "--random-init", "--set", "roi_extractor=temporal"])
    assert code == 0, "python -m export.onnx failed"
    model, _ = resolve_model("lite", None, {"roi_extractor": "temporal"}, random_init=True)
    return model.eval(), path


@pytest.fixture(scope="session")
def lite_roialign_onnx(tmp_path_factory):
    """lite without Temporal RoI Align (random heads, seed 0), exported for
    768x576 frames: the fast model the service benchmarks' smoke runs share."""
    from export.onnx import export_onnx, resolve_model

    model, _ = resolve_model("lite", None, {}, random_init=True)
    path = tmp_path_factory.mktemp("lite_roialign") / "lite.onnx"
    export_onnx(model, path, "standard", (576, 768))
    return path
