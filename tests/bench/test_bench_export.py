"""Smoke test of ``bench/bench_export.py`` (per-frame latency of eager vs ONNX Runtime)."""

from __future__ import annotations

import json

import pytest

import bench_export as bench  # bench/ is on sys.path (pyproject's pytest pythonpath), as for the script
from bench_common import DEFAULT_VIDEO


def test_missing_video_names_the_file_and_the_fix(tmp_path, capsys) -> None:
    missing = tmp_path / "nothing.avi"
    assert bench.main(["--quick", "--engines", "eager", "--video", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "apt-get install opencv-doc" in err and "--video PATH" in err


@pytest.mark.skipif(not DEFAULT_VIDEO.is_file(),
                    reason=f"{DEFAULT_VIDEO} is missing (apt-get install opencv-doc)")
def test_quick_run_reports_positive_latencies(tmp_path, capsys) -> None:
    # Eager only: the ONNX Runtime engines need an export (over a minute each),
    # and test_onnx_export.py already runs both exported modes.
    argv = ["--quick", "--engines", "eager", "--frames", "0,2", "--repeats", "1", "--warmup", "0",
            "--workdir", str(tmp_path)]
    assert bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "export"
    assert report["preset"] == "lite" and report["roi_extractor"] == "temporal"
    assert report["weights"] is None and report["threads"] == 2
    assert {"cpu_count", "torch", "onnxruntime"} <= set(report["machine"])
    assert report["exports"] == []
    assert [(r["engine"], r["support_frames"]) for r in report["results"]] == [("eager", 0), ("eager", 2)]
    for result in report["results"]:
        assert result["frame_size"] == "640x360" and result["working_size"] == "640x360"
        for key in ("median_ms", "p90_ms", "min_ms", "max_ms"):
            assert isinstance(result[key], float) and result[key] > 0
        assert result["min_ms"] <= result["median_ms"] <= result["p90_ms"] <= result["max_ms"]
        assert isinstance(result["detections"], int) and result["detections"] >= 0
