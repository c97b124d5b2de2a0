"""The whole offline loop on synthetic data: generate -> train -> resume -> infer -> evaluate."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from models import evaluate, infer, synthetic, train

FIGURES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(root, videos=3, seed=7, frames=8, width=160, height=96)
    return root


def _train(split, out, *extra: str) -> int:
    return train.main([
        "--preset", "lite", "--roi-extractor", "temporal", "--data", str(split), "--out", str(out),
        "--input-size", "160x96", "--workers", "0", "--warmup-iters", "5",
        # A lr per image that lets a few CPU steps show learning.
        "--base-lr", "0.005", "--base-batch", "1", "--set", "rpn_pre_nms_top_n_train=300",
        "--set", "rpn_post_nms_top_n_train=300", *extra,
    ])


def test_train_resume_infer_evaluate(split, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(split, run, "--epochs", "1", "--max-iters", "12", "--log-every", "1") == 0
    assert "stopped at 12/" in capsys.readouterr().err
    # Resume picks up at iteration 12 and finishes the epoch.
    assert _train(split, run, "--epochs", "1", "--resume", "--log-every", "1") == 0
    assert "finished" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    iterations = [r["iter"] for r in records]
    assert iterations == list(range(1, len(iterations) + 1)), "resume must continue without gaps or repeats"
    # The detection losses must fall; the track loss is noisy over so few
    # steps (one new pairing of instances can cost a lot) and must stay finite.
    def detection(r: dict) -> float:
        return r["loss_classifier"] + r["loss_box_reg"] + r["loss_mask"]

    first = statistics.median(detection(r) for r in records[:3])
    last = statistics.median(detection(r) for r in records[-3:])
    assert last < 0.7 * first, (first, last)
    assert all(math.isfinite(r["loss_track"]) for r in records)
    assert (run / "final.pt").is_file()

    results = tmp_path / "results.json"
    # Two dozen steps do not make confident detections: keep every one.
    command = ["--weights", str(run / "final.pt"), "--data", str(split), "--out", str(results), "--zip"]
    assert infer.main([*command, "--score-thresh", "0"]) == 0
    entries = json.loads(results.read_text())
    assert entries, "the model must produce some tracks"
    gt = json.loads((split / "instances.json").read_text())
    lengths = {v["id"]: v["length"] for v in gt["videos"]}
    for entry in entries:
        assert len(entry["segmentations"]) == lengths[entry["video_id"]]
        assert 0 < entry["score"] <= 1
    with zipfile.ZipFile(results.with_suffix(".zip")) as archive:
        assert archive.namelist() == ["results.json"]

    metrics = tmp_path / "metrics.json"
    assert evaluate.main(["--gt", str(split / "instances.json"), "--results", str(results), "--out", str(metrics)]) == 0
    figures = json.loads(metrics.read_text())
    for name in FIGURES:
        value = figures["metrics"][name] if "metrics" in figures else figures[name]
        assert value == -1 or 0 <= value <= 1


def test_train_refuses_bad_input_with_the_file_named(split, tmp_path, capsys) -> None:
    assert _train(tmp_path / "missing", tmp_path / "run") == 2
    assert "missing" in capsys.readouterr().err
    assert _train(split, tmp_path / "run2", "--resume") == 2
    assert "latest.pt" in capsys.readouterr().err


def test_two_process_ddp_training_with_torchrun(split, tmp_path) -> None:
    """The multi-GPU path, run on the CPU with the gloo backend."""
    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "models.train",
        "--preset", "lite", "--data", str(split), "--out", str(run), "--input-size", "160x96",
        "--workers", "0", "--threads", "1", "--max-iters", "2", "--log-every", "1", "--warmup-iters", "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # One log (rank 0 only), and the rate scaled to the two-process batch.
    assert [r["iter"] for r in records] == [1, 2]
    assert records[1]["lr"] == pytest.approx(0.005 * 2 / 32)
    assert (run / "latest.pt").is_file()


def test_resnet_without_imagenet_weights_is_warned_about(split, tmp_path, capsys) -> None:
    args = ["--preset", "r50", "--data", str(split), "--out", str(tmp_path / "r50"), "--max-iters", "0", "--workers", "0"]
    assert train.main(args) == 0
    err = capsys.readouterr().err
    assert "r50 starts from random weights" in err and "stopped at 0/" in err
