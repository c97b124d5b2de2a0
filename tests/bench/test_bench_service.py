"""Smoke test of ``bench/bench_service.py`` (end-to-end latency of the service under pushed streams)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench_live
import bench_service as bench  # bench/ is on sys.path (pyproject's pytest pythonpath), as for the script
from bench_common import DEFAULT_VIDEO


def test_missing_video_names_the_file_and_the_fix(tmp_path, capsys) -> None:
    missing = tmp_path / "nothing.avi"
    # The video is read before anything slow (export, server), so this fails at once.
    assert bench.main(["--streams", "1", "--seconds", "1", "--video", str(missing), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "apt-get install opencv-doc" in err


def test_bad_arguments_are_refused(tmp_path, capsys) -> None:
    assert bench.main(["--streams", "0"]) == 2
    assert bench.main(["--streams", "1", "--temporal", "--model", str(tmp_path / "m.onnx")]) == 2
    assert bench.main(["--streams", "1", "--model", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "--streams" in err and "--temporal" in err and "no such ONNX file" in err


def test_pooling_of_per_stream_percentiles() -> None:
    per_stream = [
        {"processed": 30, "latency_ms": {"p50": 100.0, "p95": 150.0, "p99": 180.0, "max": 200.0}},
        {"processed": 10, "latency_ms": {"p50": 200.0, "p95": 260.0, "p99": 290.0, "max": 300.0}},
        {"processed": 0, "latency_ms": {"p50": None, "p95": None, "p99": None, "max": None}},
    ]
    assert bench_live.pool_latency(per_stream) == {"p50": 125.0, "p95": 260.0, "p99": 290.0, "max": 300.0}
    assert bench_live.pool_latency(per_stream[2:]) == {"p50": None, "p95": None, "p99": None, "max": None}


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = [(0.1, 0.0), (0.2, 50.0), (0.5, 100.0), (float("inf"), 100.0)]
    assert bench.histogram_quantile(buckets, 0.5) == pytest.approx(0.2)
    assert bench.histogram_quantile(buckets, 0.25) == pytest.approx(0.15)
    assert bench.histogram_quantile(buckets, 0.99) == pytest.approx(0.2 + 0.3 * 49 / 50)
    assert bench.histogram_quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    # Beyond the last finite bound: that bound, as histogram_quantile answers.
    assert bench.histogram_quantile([(0.1, 0.0), (float("inf"), 4.0)], 0.5) == pytest.approx(0.1)


@pytest.mark.skipif(not DEFAULT_VIDEO.is_file(),
                    reason=f"{DEFAULT_VIDEO} is missing (apt-get install opencv-doc)")
def test_one_stream_smoke_run(tmp_path, capsys, lite_roialign_onnx) -> None:
    # The session's shared lite export (768x576) stands in for the benchmark's own.
    argv = ["--streams", "1", "--seconds", "2", "--workdir", str(tmp_path), "--model", str(lite_roialign_onnx)]
    assert bench.main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "summary" in captured.err.splitlines()[-1]

    assert report["benchmark"] == "service"
    assert {"cpu_count", "onnxruntime", "load_average_at_start", "load_average_at_end"} <= set(report["machine"])
    model = report["model"]
    assert model["preset"] == "lite" and model["roi_extractor"] == "roialign"
    assert model["exported_by_benchmark"] is False and Path(model["path"]).is_file()
    assert report["threads"] == 2 and report["fps_per_stream"] == 10 and report["seconds"] == 2
    assert report["rss_idle_mb"] > 0
    assert report["server"]["startup_s"] > 0 and (tmp_path / "server.log").is_file()

    [result] = report["results"]
    assert result["streams"] == 1 and result["idle"] is True and result["errors"] == 0
    for key in ("p50", "p95", "p99", "max"):
        assert result["latency_ms"][key] > 0
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"] <= result["latency_ms"]["max"]
    assert result["latency_ms_histogram"]["frames"] >= 1
    assert result["processed_fps_per_stream"] > 0 and result["processed_fps_total"] > 0
    assert 0 <= result["dropped_fraction"] < 1
    assert result["rss_mb"] >= report["rss_idle_mb"]
    assert isinstance(result["rss_per_stream_mb"], float)

    [stream] = result["per_stream"]
    assert stream["sent"] == 20 and stream["received"] == 20
    assert stream["processed"] >= 1 and stream["processed"] + stream["dropped"] == 20
    assert stream["latency_ms"] == result["latency_ms"]  # one stream: the pooled values are its own
    assert stream["memory_bytes"] > 0 and stream["processed_fps"] > 0
