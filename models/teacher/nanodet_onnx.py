"""NanoDet-g as one ONNX file for CPU inference, and its ONNX Runtime runner.

This module owns the exported detector's interface and both ends of it:

* :func:`export_nanodet_onnx`: :class:`models.teacher.nanodet.NanoDetEndToEnd`
  (normalisation, network, GFL decoding, per-class NMS) through
  ``torch.export`` and the dynamo ONNX exporter, then the ONNX checker;
* :class:`NanoDetOnnx`: the runner, ``detect(bgr_image, score_thresh)`` with
  the same answer as ``NanoDet.detect``: stretch to 416 (OpenCV), run, scale
  the boxes back.

The file's interface (:data:`INPUT_NAMES`, :data:`OUTPUT_NAMES`):
``image [1, 416, 416, 3]`` uint8 BGR and ``score_threshold []`` float32 ->
``boxes [N, 4]`` float32 xyxy in input pixels, ``scores [N]`` float32,
``labels [N]`` int64 (COCO ids, 0 = person), at most 100, best first.
All 80 classes take part in the NMS; ``detect(classes=...)`` filters after.

The runner needs numpy, OpenCV and onnxruntime only: torch is imported
inside :func:`export_nanodet_onnx`, never at module level, so environments
without torch can label with the ONNX file. No ``service`` or ``export``
imports.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .nanodet_io import (
    DEFAULT_SCORE_THRESH,
    INPUT_SIZE,
    boxes_to_image,
    check_bgr,
    resize_bgr,
)

if TYPE_CHECKING:
    from .nanodet import NanoDet

INPUT_NAMES = ("image", "score_threshold")
OUTPUT_NAMES = ("boxes", "scores", "labels")
DEFAULT_OPSET = 18  # the project's exporter opset (export/onnx.py)


def export_nanodet_onnx(model: NanoDet, out: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write the whole detector (all classes) to ``out``; returns the path."""
    import onnx
    import torch

    from .nanodet import NanoDetEndToEnd

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    detector = NanoDetEndToEnd(model.eval()).eval()
    example = (torch.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8), torch.tensor(0.35))
    # torchvision's NMS meta kernel uses a deprecated symbolic-size call: not ours to fix
    warnings.filterwarnings("ignore", message=".*create_unbacked_symint.*", category=FutureWarning)
    with torch.no_grad():
        program = torch.export.export(detector, example, strict=False)
        exported = torch.onnx.export(program, example, input_names=list(INPUT_NAMES),
                                     output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=True,
                                     verbose=False)
    proto = exported.model_proto
    for output in proto.graph.output:  # the exporter names the count "Min(100, u1)"
        for dim in output.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = "N"
    for key, value in {"cellwatch.model": "nanodet-g", "cellwatch.input": "BGR uint8 416x416, stretched",
                       "cellwatch.safety_rated": "false"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(out))
    onnx.checker.check_model(str(out))
    return out


class NanoDetOnnx:
    """ONNX Runtime session of an :func:`export_nanodet_onnx` file (CPU by default).

    ``threads``: intra-op threads (None: ONNX Runtime's default, all cores).
    """

    def __init__(self, path: str | Path, threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise ValueError(f"{self.path}: inputs {names}, expected {INPUT_NAMES} (make nanodet exports it)")

    def run(self, resized: np.ndarray, score_thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``resized [416, 416, 3]`` uint8 BGR -> boxes (input pixels), scores, labels."""
        feeds = {"image": np.ascontiguousarray(resized[None]),
                 "score_threshold": np.asarray(score_thresh, dtype=np.float32)}
        boxes, scores, labels = self.session.run(list(OUTPUT_NAMES), feeds)
        return boxes, scores, labels

    def detect(self, bgr_image: np.ndarray, score_thresh: float = DEFAULT_SCORE_THRESH,
               classes: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As ``NanoDet.detect``: ``boxes [N, 4]`` in the frame's pixels, ``scores [N]``,
        ``labels [N]``; ``classes`` keeps only those ids (after the all-class NMS)."""
        image_hw = check_bgr(bgr_image)
        boxes, scores, labels = self.run(resize_bgr(bgr_image, INPUT_SIZE), score_thresh)
        if classes is not None:
            keep = np.isin(labels, np.asarray(list(classes), dtype=np.int64))
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return boxes_to_image(boxes, image_hw), scores, labels
