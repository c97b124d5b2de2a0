"""ONNX export in both modes, run on ONNX Runtime, against PyTorch on real frames of vtest.avi."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from export.onnx import export_onnx, main
from export.ort_runtime import OnnxFrameModel, paste_masks
from export.spec import INPUT_NAMES, OUTPUT_NAMES, PLUGIN_DOMAIN, PLUGIN_OP, read_sidecar
from models.checkpoint import save_checkpoint
from models.stream_step import prepare_frame

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")
FRAME_SIZE = (576, 768)  # vtest's height, width


@pytest.fixture(scope="module")
def model(lite_temporal):
    return lite_temporal[0]


@pytest.fixture(scope="module")
def exported(lite_temporal, tmp_path_factory):
    """Both modes of the same network: standard from the shared CLI export
    (whose own ONNX Runtime check ran), plugin exported here."""
    model, standard = lite_temporal
    plugin = tmp_path_factory.mktemp("onnx") / "lite_plugin.onnx"
    export_onnx(model, plugin, "plugin", FRAME_SIZE)
    return {"standard": standard, "plugin": plugin}


def _vtest_frames(count, start=120):
    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(count):
        ok, frame = capture.read()
        assert ok, f"{VTEST}: could not read frame"
        frames.append(frame)
    capture.release()
    return frames


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_graph_inputs_outputs_and_sidecar(exported):
    for mode, path in exported.items():
        proto = onnx.load(str(path))
        assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
        assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
        support = proto.graph.input[1].type.tensor_type.shape.dim
        assert support[0].dim_param == "T"
        sidecar = read_sidecar(path)
        assert (sidecar.mode, sidecar.preset, sidecar.classes) == (mode, "lite", ["person"])
        assert (sidecar.input_height, sidecar.input_width) == (360, 480)
        assert sidecar.cache_shapes == [[128, 96, 120], [128, 48, 60], [128, 24, 30], [128, 12, 15]]
        assert sidecar.temporal and sidecar.safety_rated is False and sidecar.opset == 18
        onnx.checker.check_model(proto)


def test_plugin_mode_has_single_plugin_nodes_and_standard_mode_none(exported):
    plugin = onnx.load(str(exported["plugin"]))
    nodes = [n for n in plugin.graph.node if n.op_type == PLUGIN_OP]
    # box and track heads share one Temporal RoI Align; it runs on proposals and on detections
    assert len(nodes) == 2
    for node in nodes:
        assert node.domain == PLUGIN_DOMAIN
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"num_most_similar": 2, "plugin_version": b"1", "plugin_namespace": b"cellwatch"}
        assert len(node.input) == 7
    standard = onnx.load(str(exported["standard"]))
    assert {n.domain for n in standard.graph.node} <= {"", "ai.onnx"}
    ops = {n.op_type for n in standard.graph.node}
    assert {"RoiAlign", "TopK", "MatMul", "NonMaxSuppression", "ScatterND"} <= ops
    roi_align = [n for n in standard.graph.node if n.op_type == "RoiAlign"]
    for node in roi_align:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["coordinate_transformation_mode"] == b"half_pixel"


@needs_vtest
@pytest.mark.parametrize("mode", ["standard", "plugin"])
def test_onnx_runtime_matches_pytorch_on_vtest(model, exported, mode):
    runtime = OnnxFrameModel(exported[mode], threads=2)
    height, width = runtime.input_size
    torch_cache, ort_cache = [], runtime.empty_cache()
    for support_frames, frame in enumerate(_vtest_frames(3)):
        image = prepare_frame(cv2.resize(frame, FRAME_SIZE[::-1]), (height, width))
        support = None
        if torch_cache:
            support = [torch.stack([c[level] for c in torch_cache]).unsqueeze(0) for level in range(4)]
        with torch.no_grad():
            expected = model([torch.from_numpy(image)], support_features=support)[0]
        got = runtime.infer(image, ort_cache)
        label = f"{mode}, T={support_frames}"

        assert len(got["boxes"]) == len(expected["boxes"]) > 0, label
        np.testing.assert_allclose(got["boxes"], expected["boxes"].numpy(), atol=0.01, rtol=0, err_msg=label)
        np.testing.assert_allclose(got["scores"], expected["scores"].numpy(), atol=1e-4, rtol=0, err_msg=label)
        np.testing.assert_array_equal(got["labels"], expected["labels"].numpy(), err_msg=label)
        a, b = got["embeddings"], expected["embeddings"].numpy()
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() >= 0.9999, (label, cosine.min())
        masks = paste_masks(got["mask_probs"], got["boxes"], height, width) > 0.5
        reference = expected["masks"][:, 0].numpy() > 0.5
        ious = [_mask_iou(m, r) for m, r in zip(masks, reference)]
        assert min(ious) >= 0.99, (label, ious)
        for level, name in enumerate(("p2", "p3", "p4", "p5")):
            np.testing.assert_allclose(
                got[f"features_{name}"][0], expected["cache_features"][level].numpy(), atol=1e-4, err_msg=label
            )
        torch_cache.append(expected["cache_features"])
        ort_cache = [np.concatenate([c, got[f"features_{n}"]]) for c, n in zip(ort_cache, ("p2", "p3", "p4", "p5"))]


def test_plugin_model_without_custom_op_says_how_to_register(exported):
    with pytest.raises(ValueError, match="custom_op_session_options") as info:
        OnnxFrameModel(exported["plugin"], custom_ops=False)
    assert PLUGIN_OP in str(info.value)


def test_onnx_file_without_expected_inputs_is_refused(exported, tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 360, 480])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 360, 480])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "other", [x], [y])
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ValueError, match="sidecar JSON"):
        OnnxFrameModel(path)
    path.with_suffix(".json").write_text(read_sidecar(exported["standard"]).to_json())
    with pytest.raises(ValueError, match="not a cellwatch frame model: inputs \\['x'\\]"):
        OnnxFrameModel(path)
    with pytest.raises(ValueError, match="no such ONNX file"):
        OnnxFrameModel(tmp_path / "missing.onnx")


def test_runtime_rejects_wrong_image_and_cache(exported):
    runtime = OnnxFrameModel(exported["standard"])
    with pytest.raises(ValueError, match="image must be"):
        runtime.infer(np.zeros((3, 100, 100), np.float32))
    cache = runtime.empty_cache()
    cache[1] = np.zeros((1, 128, 48, 60), np.float32)
    with pytest.raises(ValueError, match="different frame counts"):
        runtime.infer(np.zeros((3, 360, 480), np.float32), cache)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["--preset", "nope", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "unknown preset 'nope'; valid presets: r50" in capsys.readouterr().err
    assert main(["--preset", "lite", "--out", str(tmp_path / "m.onnx"), "--weights", str(tmp_path / "no.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["--preset", "lite", "--out", str(tmp_path / "m.onnx"), "--frame-size", "big"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_weights_that_do_not_match_the_preset_fail_clearly(model, tmp_path, capsys):
    checkpoint = tmp_path / "lite.pt"
    save_checkpoint(checkpoint, model, [{"id": 1, "name": "person"}])
    assert main(["--preset", "r50", "--weights", str(checkpoint), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "weights are for preset 'lite', not 'r50'" in capsys.readouterr().err
    payload = torch.load(checkpoint, weights_only=True)
    del payload["model"]["roi_heads.box_head.fc6.weight"]
    torch.save(payload, checkpoint)
    assert main(["--preset", "lite", "--weights", str(checkpoint), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "weights do not match preset 'lite'; missing: roi_heads.box_head.fc6.weight" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
