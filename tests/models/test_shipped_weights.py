"""The shipped person model: it loads, and it finds people on held-out real footage."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.checkpoint import WEIGHTS_DIR, load_model, read_checkpoint, shipped_weights
from models.geometry import box_iou

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
HELDOUT = Path(__file__).resolve().parents[1] / "data" / "vtest_heldout_people.json"
MIN_HEIGHT = 40.0
# Floors well above chance (a model that finds nobody scores 0) and below what the
# model card reports for the whole held-out range, so that a broken file, a wrong
# preprocessing or a mis-loaded checkpoint fails here.
RECALL_FLOOR = 0.7
PRECISION_FLOOR = 0.6

WEIGHTS = shipped_weights("lite")
pytestmark = pytest.mark.skipif(WEIGHTS is None, reason="models/weights/person-lite.pt is not in this checkout")


def test_shipped_file_is_small_documented_and_loads():
    assert WEIGHTS.stat().st_size <= 30 * 2**20
    card = (WEIGHTS_DIR / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "not safety-rated" in card.lower()
    payload = read_checkpoint(WEIGHTS)
    assert payload["storage"] == "float16" and "optimizer" not in payload
    assert [c["name"] for c in payload["categories"]] == ["person"]
    model, _ = load_model(WEIGHTS, "lite")
    assert model.config.roi_extractor == "temporal"
    assert model.config.class_names == ("person",)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.skipif(not VTEST.is_file(), reason="vtest.avi missing (Debian opencv-doc)")
def test_shipped_model_finds_people_on_held_out_frames():
    labels = json.loads(HELDOUT.read_text(encoding="utf-8"))["frames"]
    wanted = {int(k): np.array(v, np.float64).reshape(-1, 4) for k, v in labels.items()}
    model, _ = load_model(WEIGHTS, "lite")
    model.eval()
    torch.set_num_threads(2)
    capture = cv2.VideoCapture(str(VTEST))
    tp = positives = counted = 0
    index = 0
    try:
        while wanted and index <= max(wanted):
            ok, frame = capture.read()
            assert ok, f"vtest.avi ended before frame {index}"
            if index in wanted:
                image = torch.from_numpy(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float() / 255
                with torch.no_grad():
                    out = model([image])[0]
                keep = out["scores"] >= 0.5
                boxes = out["boxes"][keep].numpy().astype(np.float64)
                scores = out["scores"][keep].numpy()
                truth = wanted[index]
                tall = (truth[:, 3] - truth[:, 1]) >= MIN_HEIGHT
                taken = np.zeros(len(truth), bool)
                ious = box_iou(boxes, truth)
                for d in np.argsort(-scores):
                    row = np.where(taken, -1.0, ious[d]) if len(truth) else np.array([-1.0])
                    g = int(np.argmax(row))
                    if row[g] >= 0.5:
                        taken[g] = True
                        if tall[g]:
                            tp += 1
                            counted += 1
                    elif boxes[d, 3] - boxes[d, 1] >= MIN_HEIGHT:
                        counted += 1
                positives += int(tall.sum())
            index += 1
    finally:
        capture.release()
    assert positives >= 50  # the label file covers the held-out range
    recall, precision = tp / positives, tp / max(counted, 1)
    assert recall >= RECALL_FLOOR, f"recall {recall:.3f} ({tp}/{positives})"
    assert precision >= PRECISION_FLOOR, f"precision {precision:.3f} ({tp}/{counted})"
