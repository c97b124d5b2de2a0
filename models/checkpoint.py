"""Checkpoints: what a trained model is saved as, and how it is built back.

A checkpoint is a plain ``torch.save`` dict, loadable with ``weights_only``:
``model`` (state dict), ``preset``, ``config`` (every ``ModelConfig`` field,
so the network is rebuilt exactly), ``categories`` (the dataset's
[{"id", "name"}] in label order), and for training checkpoints also
``optimizer``, ``scaler``, ``epoch``, ``iteration`` and ``args``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from .masktrack_rcnn import MaskTrackRCNN
from .presets import PRESETS, ModelConfig, build_model

# Weights that ship inside the package, per preset (see weights/MODEL_CARD.md).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_WEIGHTS = {"lite": "person-lite.pt"}


def shipped_weights(preset: str) -> Path | None:
    """The preset's shipped checkpoint, or None when it has none (yet)."""
    name = SHIPPED_WEIGHTS.get(preset)
    if name is None:
        return None
    path = WEIGHTS_DIR / name
    return path if path.is_file() else None


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    if isinstance(out["pretrained_backbone"], os.PathLike):
        out["pretrained_backbone"] = os.fspath(out["pretrained_backbone"])
    return out


def config_from_dict(values: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint config -> ``build_model`` overrides (tuples restored, no ImageNet reload)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields}
    # The checkpoint's own weights replace the backbone's initial ones.
    overrides["pretrained_backbone"] = False if overrides.get("backbone") == "efficientnet_lite0" else None
    return overrides


def save_checkpoint(path: str | Path, model: MaskTrackRCNN, categories: list[dict], **extra: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "preset": model.preset,
        "config": config_to_dict(model.config),
        "categories": categories,
        **extra,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise ValueError(f"{path}: not a cellwatch checkpoint (no 'model' entry)")
    return payload


def load_model(path: str | Path, preset: str | None = None) -> tuple[MaskTrackRCNN, dict[str, Any]]:
    """Build the checkpoint's network and load its weights strictly.

    ``preset``, when given, must agree with the checkpoint's; weights that do
    not fit the network fail with the keys that differ.
    """
    payload = read_checkpoint(path)
    stored = payload.get("preset")
    if stored is not None and stored not in PRESETS:
        raise ValueError(f"{path}: unknown preset {stored!r}; valid presets: {', '.join(PRESETS)}")
    if preset is not None and stored is not None and preset != stored:
        raise ValueError(f"{path}: weights are for preset {stored!r}, not {preset!r}")
    name = preset or stored
    if name is None:
        raise ValueError(f"{path}: the checkpoint names no preset; pass one")
    overrides = config_from_dict(payload.get("config", {}))
    model = build_model(name, **overrides)
    load_weights(model, payload["model"], path)
    return model, payload


def load_weights(model: MaskTrackRCNN, state: dict[str, torch.Tensor], source: str | Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mis_shaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise ValueError(f"{source}: weights do not match preset {model.preset!r}; " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
