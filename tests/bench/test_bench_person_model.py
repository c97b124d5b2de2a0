"""Smoke test of ``bench/bench_person_model.py`` on three real held-out vtest frames."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import bench_person_model as bench  # bench/ is on sys.path (pyproject's pytest pythonpath), as for the script

ROOT = Path(__file__).resolve().parents[2]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
HELDOUT = ROOT / "tests" / "data" / "vtest_heldout_people.json"


def test_frame_matching_counts():
    gt = np.array([[0, 0, 20, 60], [100, 0, 120, 30], [200, 0, 220, 60]], float)  # the middle one is short
    tall = (gt[:, 3] - gt[:, 1]) >= 40
    det = np.array([[1, 1, 20, 60], [100, 0, 121, 30], [300, 0, 320, 60], [400, 0, 410, 20]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    tp, positives, counted, matched = bench.frame_counts(gt, tall, det, scores, (det[:, 3] - det[:, 1]) >= 40, 0.5)
    # one tall person found, one missed; the short match and the short false alarm are ignored
    assert (tp, positives, counted) == (1, 2, 2) and matched == {0: 0, 1: 1}
    assert bench.frame_counts(gt, tall, det, scores, (det[:, 3] - det[:, 1]) >= 40, 0.85)[:3] == (1, 2, 1)


def _clip(tmp_path: Path, frames: dict[str, list]) -> Path:
    """A three-frame YouTube-VIS video of vtest frames with box-shaped masks."""
    from pycocotools import mask as mask_utils

    wanted = sorted(int(k) for k in frames)[:3]
    images = tmp_path / "JPEGImages" / "clip"
    images.mkdir(parents=True)
    capture = cv2.VideoCapture(str(VTEST))
    index, written = 0, 0
    while written < len(wanted):
        ok, frame = capture.read()
        assert ok
        if index == wanted[written]:
            cv2.imwrite(str(images / f"{written:05d}.jpg"), frame)
            written += 1
        index += 1
    capture.release()
    annotations = []
    for n, frame in enumerate(wanted):
        for box in frames[str(frame)]:
            mask = np.zeros((576, 768), np.uint8)
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            mask[y1:y2, x1:x2] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode()
            segmentations = [None] * 3
            segmentations[n] = rle
            bboxes = [None] * 3
            bboxes[n] = [x1, y1, x2 - x1, y2 - y1]
            annotations.append({"id": len(annotations) + 1, "video_id": 1, "category_id": 1, "iscrowd": 0,
                                "segmentations": segmentations, "bboxes": bboxes,
                                "areas": [None if s is None else int(mask.sum()) for s in segmentations]})
    data = {"videos": [{"id": 1, "width": 768, "height": 576, "length": 3,
                        "file_names": [f"clip/{i:05d}.jpg" for i in range(3)]}],
            "categories": [{"id": 1, "name": "person"}], "annotations": annotations}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return tmp_path / "instances.json"


@pytest.mark.skipif(not VTEST.is_file(), reason="vtest.avi missing (Debian opencv-doc)")
def test_bench_runs_and_reports(tmp_path, lite_roialign_onnx, capsys):
    frames = json.loads(HELDOUT.read_text())["frames"]
    ann = _clip(tmp_path, frames)
    out = tmp_path / "report.json"
    assert bench.main(["--ann", str(ann), "--model", str(lite_roialign_onnx), "--warmup", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["frames"] == 3 and report["safety_rated"] is False
    first_three = [frames[k] for k in sorted(frames, key=int)[:3]]
    tall = sum(1 for boxes in first_three for b in boxes if b[3] - b[1] >= 40)
    assert report["frame"]["labelled_people"] == tall
    assert [s["score"] for s in report["sweep"]] == list(bench.SWEEP)
    assert report["speed_ms"]["engine"]["median"] > 0 and report["working_size"] == [360, 480]


def test_bench_refuses_bad_arguments(tmp_path, lite_roialign_onnx, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--ann", str(tmp_path / "none.json"), "--model", str(lite_roialign_onnx)])
    assert "none.json" in capsys.readouterr().err
    ann = tmp_path / "a.json"
    ann.write_text("{}")
    with pytest.raises(SystemExit):
        bench.main(["--ann", str(ann), "--model", str(lite_roialign_onnx),
                    "--out", str(Path(lite_roialign_onnx).with_suffix(".json"))])
    assert "sidecar" in capsys.readouterr().err
