"""Packing a training checkpoint into a shippable weights file."""

from __future__ import annotations

import torch

from models.checkpoint import load_model, read_checkpoint, save_checkpoint
from models.pack import main, pack
from models.presets import build_model


def _training_checkpoint(path):
    torch.manual_seed(0)
    model = build_model("lite", roi_extractor="temporal", temporal_heads=("track",))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(path, model, [{"id": 1, "name": "person"}], optimizer=optimizer.state_dict(), iteration=42,
                    epoch=1, args={"preset": "lite", "data": "/data/x", "copy_paste": True})
    return model


def test_pack_keeps_what_inference_needs_in_half_precision(tmp_path):
    source = tmp_path / "latest.pt"
    model = _training_checkpoint(source)
    summary = pack(source, tmp_path / "shipped.pt")
    packed = read_checkpoint(tmp_path / "shipped.pt")
    assert "optimizer" not in packed and packed["storage"] == "float16"
    assert packed["training"] == {"args": {"preset": "lite", "data": "/data/x", "copy_paste": True},
                                  "iteration": 42, "epoch": 1}
    assert all(t.dtype == torch.float16 for t in packed["model"].values() if t.is_floating_point())
    assert summary["bytes"] < 0.6 * source.stat().st_size and len(summary["sha256"]) == 64

    loaded, _ = load_model(tmp_path / "shipped.pt", "lite")
    assert loaded.config.roi_extractor == "temporal" and loaded.config.temporal_heads == ("track",)
    assert next(loaded.parameters()).dtype == torch.float32
    for (name, ours), theirs in zip(model.state_dict().items(), loaded.state_dict().values()):
        if ours.is_floating_point():
            assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-4), name
    image = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.backbone(image)
        theirs = loaded.backbone(image)
    for level in ours:
        scale = ours[level].abs().max().item()
        assert (ours[level] - theirs[level]).abs().max().item() <= 0.02 * scale + 1e-4, level


def test_pack_cli_errors(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(junk), "--out", str(tmp_path / "x.pt")]) == 2
    assert "junk.pt" in capsys.readouterr().err
    no_config = tmp_path / "bare.pt"
    torch.save({"model": {}}, no_config)
    assert main(["--checkpoint", str(no_config), "--out", str(tmp_path / "x.pt")]) == 2
    assert "missing preset" in capsys.readouterr().err
    source = tmp_path / "latest.pt"
    _training_checkpoint(source)
    assert main(["--checkpoint", str(source), "--out", str(tmp_path / "x.pt"), "--set", "fpn_channels=64"]) == 2
    assert "only inference options" in capsys.readouterr().err
    assert main(["--checkpoint", str(source), "--out", str(tmp_path / "x.pt"), "--set", "score_thresh=high"]) == 2
    assert "takes a number" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_pack_sets_inference_options(tmp_path):
    source = tmp_path / "latest.pt"
    _training_checkpoint(source)
    assert main(["--checkpoint", str(source), "--out", str(tmp_path / "x.pt"), "--set", "score_thresh=0.3",
                 "--set", "detections_per_img=16"]) == 0
    model, _ = load_model(tmp_path / "x.pt", "lite")
    assert model.config.score_thresh == 0.3 and model.config.detections_per_img == 16
    assert model.roi_heads.detections_per_img == 16
