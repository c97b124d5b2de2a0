"""Smoke test of ``bench/bench_alerts.py`` (frame capture -> event at /v1/alerts subscribers)."""

from __future__ import annotations

import json

import pytest

import bench_alerts as alerts  # bench/ is on sys.path (pyproject's pytest pythonpath), as for the script
import bench_common
from bench_subscribers import Subscriber, analyse


def _event(stream: str, seq: int, kind: str, capture_ts: float | None, emit_ts: float, **fields) -> str:
    return json.dumps({"schema": "cellwatch.event/1", "type": kind, "stream_id": stream, "seq": seq,
                       "capture_ts": capture_ts, "emit_ts": emit_ts, "state": "CLEAR", "persons": [], **fields})


def test_bad_arguments_are_refused(tmp_path, capsys) -> None:
    assert alerts.main(["--subscribers", "0"]) == 2
    assert alerts.main(["--streams", "1,x"]) == 2
    assert alerts.main(["--zones", '{"units": "furlongs", "hazard": [[0, 0], [1, 0], [1, 1]]}']) == 2
    assert alerts.main(["--model", str(tmp_path / "m.onnx")]) == 2
    missing = tmp_path / "nothing.avi"
    assert alerts.main(["--seconds", "1", "--video", str(missing), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--subscribers" in err and "--streams" in err and "--zones" in err and "no such ONNX file" in err
    assert str(missing) in err


def test_analyse_pools_subscribers_and_finds_the_worst_one() -> None:
    fast, slow = Subscriber(0), Subscriber(1)
    for k in range(1, 11):  # persons events: capture at k, emitted 0.1 s later
        capture = float(k)
        fast.received.append((capture + 0.11, _event("a", k, "persons", capture, capture + 0.1)))
        slow.received.append((capture + 0.1 + 0.05 * k, _event("a", k, "persons", capture, capture + 0.1)))
    fast.received.append((20.2, _event("a", 11, "state", 20.0, 20.1)))
    fast.received.append((21.0, _event("a", 12, "state", None, 21.0)))  # a watchdog transition
    slow.received.append((20.5, _event("a", 11, "state", 20.0, 20.1)))  # seq 12 never came
    out = analyse([fast, slow], ["a"], {"a": 11})

    persons = out["persons_latency_ms"]
    assert persons["n"] == 20 and persons["max"] == pytest.approx(600.0)
    pooled = [110.0] * 10 + [100.0 + 50 * k for k in range(1, 11)]
    assert persons["p50"] == pytest.approx(bench_common.summary(pooled)["p50"])
    worst = out["persons_latency_worst_subscriber"]
    assert worst["subscriber"] == 1 and worst["max"] == pytest.approx(600.0)
    assert out["persons_p99_per_subscriber"][0] == pytest.approx(110.0)
    assert out["state_latency_ms"]["n"] == 2 and out["state_latency_ms"]["max"] == pytest.approx(500.0)
    assert out["state_events_without_capture_ts"] == 1
    breakdown = out["persons_breakdown_ms"]
    assert breakdown["server"]["max"] == pytest.approx(100.0) and breakdown["delivery"]["p50"] > 0
    assert out["events_per_subscriber"] == {"min": 11, "mean": 11.5, "max": 12, "counts": [12, 11]}
    assert out["events_by_type_per_subscriber"] == {"persons": 10.0, "state": 1.5}
    # 11 frames processed, 10 persons events each: one missing per subscriber
    assert out["missing_persons_events"] == 2 and out["seq_gaps"] == 0 and out["seq_duplicates"] == 0
    assert bench_common.summary([]) == {"n": 0, "p50": None, "p99": None, "max": None}


@pytest.mark.skipif(not bench_common.DEFAULT_VIDEO.is_file(),
                    reason=f"{bench_common.DEFAULT_VIDEO} is missing (apt-get install opencv-doc)")
def test_one_stream_two_subscribers_smoke_run(tmp_path, capsys, lite_roialign_onnx) -> None:
    # The session's shared lite export (roialign, random heads, 768x576).
    argv = ["--streams", "1", "--subscribers", "2", "--seconds", "2", "--workdir", str(tmp_path),
            "--model", str(lite_roialign_onnx)]
    assert alerts.main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "summary" in captured.err.splitlines()[-1]

    assert report["benchmark"] == "alerts"
    assert {"cpu_count", "load_average_at_start", "load_average_at_end"} <= set(report["machine"])
    model = report["model"]
    assert model["preset"] == "lite" and model["roi_extractor"] == "roialign" and model["frame_size"] == "768x576"
    assert report["zones"] == alerts.DEFAULT_ZONES and report["masks"] is False
    assert report["server"]["exit_status"] in (0, -15)  # stopped by SIGTERM, not killed

    [row] = report["table"]
    [result] = report["results"]
    assert row["streams"] == result["streams"] == 1 and row["subscribers"] == result["subscribers"] == 2
    assert result["idle"] and result["drained"] and result["frames"]["errors"] == 0
    assert result["frames"]["sent"] == result["frames"]["received"] == 20
    processed = result["frames"]["processed"]
    assert processed >= 1

    persons = result["persons_latency_ms"]
    assert persons["n"] == 2 * processed  # every processed frame's event at both subscribers
    assert 0 < persons["p50"] <= persons["p99"] <= persons["max"]
    assert (row["persons_p50_ms"], row["persons_p99_ms"], row["persons_max_ms"]) == (
        persons["p50"], persons["p99"], persons["max"])
    worst = result["persons_latency_worst_subscriber"]
    assert worst["subscriber"] in (0, 1) and worst["p99"] == max(result["persons_p99_per_subscriber"])
    assert row["worst_subscriber_p99_ms"] == worst["p99"]
    breakdown = result["persons_breakdown_ms"]
    assert breakdown["server"]["n"] == breakdown["delivery"]["n"] == persons["n"]
    assert breakdown["delivery"]["p50"] >= 0
    # Transitions decided on a frame carry its capture_ts; both subscribers see the same ones.
    state = result["state_latency_ms"]
    assert state["n"] % 2 == 0 and (state["n"] == 0 or 0 < state["p50"] <= state["p99"] <= state["max"])
    assert set(result["server_end_to_end_ms"]) == {"p50", "p95", "p99", "max"}

    events = result["events_per_subscriber"]
    assert len(events["counts"]) == 2 and events["min"] >= processed
    assert result["events_by_type_per_subscriber"]["persons"] == processed
    assert result["events_by_type_per_subscriber"]["heartbeat"] > 0
    assert result["missing_persons_events"] == 0 and result["seq_gaps"] == 0 and result["seq_duplicates"] == 0
    assert result["closed_by_server"] == [] and result["closed_1013"] == [] and row["closed_1013"] == 0
    seen = result["events_seen_by_subscriber_0"]
    assert 0 <= seen["persons_with_distance"] <= seen["persons"]
    assert sum(seen["state_in_persons_events"].values()) == processed
    assert result["client_loop_lag_ms"]["n"] > 0 and result["server_cpu_percent"] > 0
    assert len(result["load_average_before"]) == 3 and len(result["load_average_after"]) == 3
