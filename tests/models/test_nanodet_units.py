"""The NanoDet teacher's parts that need no downloaded file: the TF.js reader on
generated model files, and decoding / NMS against straightforward references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.teacher.nanodet import (
    anchor_centers,
    decode_boxes,
    distribution_integral,
    select_detections,
)
from models.teacher.nanodet_io import (
    REG_MAX,
    ImageError,
    boxes_to_image,
    check_bgr,
    normalize_bgr,
)
from models.teacher.tfjs_graph import TfjsFormatError, read_tfjs_graph


def _write_model(tmp_path, specs_and_bytes, shards=2, fmt="graph-model"):
    """A model.json whose weights are ``specs_and_bytes`` back to back, cut into ``shards`` files."""
    blob = b"".join(raw for _, raw in specs_and_bytes)
    cut = len(blob) // shards
    pieces = [blob[i * cut:(i + 1) * cut if i < shards - 1 else len(blob)] for i in range(shards)]
    paths = []
    for index, piece in enumerate(pieces):
        (tmp_path / f"group1-shard{index + 1}of{shards}.bin").write_bytes(piece)
        paths.append(f"group1-shard{index + 1}of{shards}.bin")
    model = {"format": fmt, "modelTopology": {"node": [
        {"name": "x", "op": "Placeholder"},
        {"name": "y", "op": "Conv2D", "input": ["x", "w"], "attr": {"strides": {"list": {"i": ["1", "2", "2", "1"]}},
                                                              "padding": {"s": "VkFMSUQ="}}}]},
        "weightsManifest": [{"paths": paths, "weights": [spec for spec, _ in specs_and_bytes]}]}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    return path


def test_tfjs_reader_dequantises_every_storage_kind(tmp_path):
    rng = np.random.default_rng(0)
    plain = rng.standard_normal((2, 3)).astype("<f4")
    ints = np.array([[-5, 7, 2**30]], dtype="<i4")
    halves = rng.standard_normal(5).astype(np.float16)
    codes = np.array([0, 1, 200, 255], dtype=np.uint8)
    codes16 = np.array([0, 40000, 65535], dtype="<u2")
    flags = np.array([1, 0, 1], dtype=np.uint8)
    scale, low = 0.0123, -1.5
    path = _write_model(tmp_path, [
        ({"name": "w", "shape": [2, 3], "dtype": "float32"}, plain.tobytes()),
        ({"name": "i", "shape": [1, 3], "dtype": "int32"}, ints.tobytes()),
        ({"name": "h", "shape": [5], "dtype": "float32",
          "quantization": {"dtype": "float16", "original_dtype": "float32"}}, halves.astype("<f2").tobytes()),
        ({"name": "q", "shape": [2, 2], "dtype": "float32",
          "quantization": {"dtype": "uint8", "scale": scale, "min": low}}, codes.tobytes()),
        ({"name": "q16", "shape": [3], "dtype": "float32",
          "quantization": {"dtype": "uint16", "scale": scale, "min": low}}, codes16.tobytes()),
        ({"name": "b", "shape": [3], "dtype": "bool"}, flags.tobytes()),
    ], shards=3)
    graph = read_tfjs_graph(path)
    assert list(graph.weights) == ["w", "i", "h", "q", "q16", "b"]
    np.testing.assert_array_equal(graph.weights["w"], plain)
    np.testing.assert_array_equal(graph.weights["i"], ints)
    np.testing.assert_array_equal(graph.weights["h"], halves.astype(np.float32))
    # tfjs: v * scale + min in float64, stored as float32
    np.testing.assert_array_equal(graph.weights["q"], (codes * scale + low).astype(np.float32).reshape(2, 2))
    np.testing.assert_array_equal(graph.weights["q16"], (codes16 * scale + low).astype(np.float32))
    np.testing.assert_array_equal(graph.weights["b"], flags.astype(bool))
    assert {k: v.dtype for k, v in graph.weights.items()} == {
        "w": np.float32, "i": np.int32, "h": np.float32, "q": np.float32, "q16": np.float32, "b": np.bool_}
    assert graph.quantization == {"h": "float16", "q": "uint8", "q16": "uint16"}
    conv = graph.nodes["y"]
    assert conv.inputs == ("x", "w")
    assert conv.attr_ints("strides") == (1, 2, 2, 1) and conv.attr_str("padding") == "VALID"
    assert [n.name for n in graph.consumers("x")] == ["y"]


def test_tfjs_reader_names_the_file_when_bytes_do_not_add_up(tmp_path):
    path = _write_model(tmp_path, [({"name": "w", "shape": [4], "dtype": "float32"}, b"\0" * 12)], shards=1)
    with pytest.raises(TfjsFormatError, match="model.json.*needs bytes"):
        read_tfjs_graph(path)
    path = _write_model(tmp_path, [({"name": "w", "shape": [1], "dtype": "float32"}, b"\0" * 8)], shards=1)
    with pytest.raises(TfjsFormatError, match="accounts for 4 bytes"):
        read_tfjs_graph(path)
    path = _write_model(tmp_path, [({"name": "s", "shape": [1], "dtype": "string"}, b"")], shards=1)
    with pytest.raises(TfjsFormatError, match="dtype 'string'"):
        read_tfjs_graph(path)
    path = _write_model(tmp_path, [({"name": "w", "shape": [1], "dtype": "float32"}, b"\0" * 4)], fmt="layers-model")
    with pytest.raises(TfjsFormatError, match="not 'graph-model'"):
        read_tfjs_graph(path)


def test_anchor_centres_are_cell_centres_in_raster_order():
    centers = anchor_centers(2, 3, 8)
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert centers.tolist() == expected


def test_distribution_integral_is_the_expected_bin():
    bins = torch.full((2, 4, REG_MAX + 1), -1e4)
    for side, index in enumerate((0, 3, 7, 10)):
        bins[0, side, index] = 0.0  # one-hot: the integral is that bin's index
    bins[1] = 0.0  # uniform: the mean of 0..REG_MAX
    result = distribution_integral(bins.flatten(1))
    torch.testing.assert_close(result[0], torch.tensor([0.0, 3.0, 7.0, 10.0]))
    torch.testing.assert_close(result[1], torch.full((4,), REG_MAX / 2))


def test_decode_boxes_matches_a_hand_computed_box_and_clips():
    bins = torch.full((1, 4, 4 * (REG_MAX + 1)), -1e4)
    sides = {0: (1, 2, 3, 4), 3: (10, 10, 10, 10)}  # cell 0: l, t, r, b in strides; cell 3: huge
    for cell, distances in sides.items():
        for side, d in enumerate(distances):
            bins[0, cell, side * (REG_MAX + 1) + d] = 0.0
    scores = torch.rand((1, 4, 2))
    boxes, flat_scores = decode_boxes([(scores, bins)], (16, 16), strides=(8,))
    # cell 0 centre (4, 4), stride 8: (4 - 8, 4 - 16, 4 + 24, 4 + 32) clipped to 16x16
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 16.0, 16.0]))
    # cell 3 centre (12, 12) +- 80 -> the whole input
    torch.testing.assert_close(boxes[3], torch.tensor([0.0, 0.0, 16.0, 16.0]))
    bins[0, 0] = -1e4
    for side, d in enumerate((0, 0, 1, 1)):
        bins[0, 0, side * (REG_MAX + 1) + d] = 0.0
    boxes, _ = decode_boxes([(scores, bins)], (16, 16), strides=(8,))
    torch.testing.assert_close(boxes[0], torch.tensor([4.0, 4.0, 12.0, 12.0]))
    torch.testing.assert_close(flat_scores, scores[0])


def test_select_detections_is_per_class_nms_with_threshold_and_class_filter():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.8], [0.7, 0.1], [0.2, 0.6]])  # columns: class 0, class 1
    out_boxes, out_scores, out_labels = select_detections(boxes, scores, 0.3, iou_thresh=0.6, input_hw=(64, 64))
    # class 0: box 1 overlaps box 0 (IoU 0.81) and goes; class 1 keeps box 0 although class 0 has it too
    assert out_scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert out_labels.tolist() == [0, 1, 1]
    torch.testing.assert_close(out_boxes, boxes[[0, 0, 2]])
    _, person_scores, person_labels = select_detections(boxes, scores, 0.3, classes=(0,), input_hw=(64, 64))
    assert person_labels.tolist() == [0] and person_scores.tolist() == pytest.approx([0.9])
    _, few_scores, _ = select_detections(boxes, scores, 0.3, max_detections=2, input_hw=(64, 64))
    assert few_scores.tolist() == pytest.approx([0.9, 0.8])
    empty = select_detections(boxes, scores, 0.95, input_hw=(64, 64))
    assert [t.shape[0] for t in empty] == [0, 0, 0]


def test_image_checks_and_box_scaling():
    with pytest.raises(ImageError, match="uint8 BGR"):
        check_bgr(np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageError, match="float32"):
        check_bgr(np.zeros((4, 4, 3), np.float32))
    assert check_bgr(np.zeros((5, 7, 3), np.uint8)) == (5, 7)
    scaled = boxes_to_image(np.array([[0, 0, 416, 208]]), (576, 768))
    np.testing.assert_allclose(scaled, [[0, 0, 768, 288]])
    pixel = np.array([[[103.53 + 57.375, 116.28, 123.675 - 58.395]]], dtype=np.float32).astype(np.uint8)
    normalised = normalize_bgr(pixel)
    assert normalised.shape == (1, 3, 1, 1)
    # (uint8 truncation moves each value by < 1 / std)
    np.testing.assert_allclose(normalised.flatten(), [1.0, 0.0, -1.0], atol=1 / 57)
