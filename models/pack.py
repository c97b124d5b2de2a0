"""Pack a training checkpoint into a weights file to ship: ``python -m models.pack``.

    python -m models.pack --checkpoint RUN/latest.pt --out models/weights/person-lite.pt [--fp32]

Keeps what inference needs (the weights, preset, config and categories) and a
record of how they were made (the training arguments and iteration); drops the
optimizer and scaler state. Floating-point tensors are stored in half
precision unless ``--fp32`` is given: ``load_model`` casts them back to the
network's float32 when loading, so a shipped file is about half the size.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import torch

from .checkpoint import config_from_dict, load_weights, read_checkpoint
from .presets import PRESETS, build_model

KEPT = ("preset", "config", "categories")
# Options that only change inference (post-processing and proposal counts), so they may be
# set for the shipped file without retraining.
INFERENCE_OPTIONS = ("score_thresh", "nms_thresh", "detections_per_img", "rpn_pre_nms_top_n_test",
                     "rpn_post_nms_top_n_test")
RECORDED = ("args", "iteration", "epoch")


def pack(checkpoint: str | Path, out: str | Path, half: bool = True,
         inference: dict[str, float | int] | None = None) -> dict[str, Any]:
    """Write the packed file; returns a summary (tensors, bytes, sha256).

    ``inference`` overrides options of ``INFERENCE_OPTIONS`` in the stored config.
    """
    payload = read_checkpoint(checkpoint)
    unknown = sorted(set(inference or {}) - set(INFERENCE_OPTIONS))
    if unknown:
        raise ValueError(f"--set {unknown[0]}: only inference options can be set here ({', '.join(INFERENCE_OPTIONS)})")
    missing = [key for key in KEPT if key not in payload]
    if missing:
        raise ValueError(f"{checkpoint}: not a training checkpoint of this project (missing {', '.join(missing)})")
    if payload["preset"] not in PRESETS:
        raise ValueError(f"{checkpoint}: unknown preset {payload['preset']!r}")
    # The weights must load into the network they claim to be (fails with the keys that differ).
    load_weights(build_model(payload["preset"], **config_from_dict(payload["config"])), payload["model"], checkpoint)
    state = {
        name: tensor.detach().to(torch.float16) if half and tensor.is_floating_point() else tensor.detach()
        for name, tensor in payload["model"].items()
    }
    packed = {"model": state, **{key: payload[key] for key in KEPT}}
    if inference:
        packed["config"] = {**payload["config"], **inference}
        build_model(payload["preset"], **config_from_dict(packed["config"]))  # values the network accepts
    packed["training"] = {key: _plain(payload[key]) for key in RECORDED if key in payload}
    packed["storage"] = "float16" if half else "float32"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(packed, tmp)
    tmp.replace(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"out": str(out), "tensors": len(state), "inference": dict(inference or {}), "bytes": out.stat().st_size, "sha256": digest,
            "storage": packed["storage"], "iteration": packed["training"].get("iteration")}


def _plain(value: Any) -> Any:
    """Training arguments as plain JSON-like values (paths as strings), loadable with ``weights_only``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.pack", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="training checkpoint (RUN/latest.pt)")
    p.add_argument("--out", required=True, type=Path, help="packed weights file")
    p.add_argument("--fp32", action="store_true", help="keep float32 storage")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"inference option for the shipped file ({', '.join(INFERENCE_OPTIONS)})")
    args = p.parse_args(argv)
    try:
        inference = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            try:
                inference[key] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
            except ValueError:
                raise ValueError(f"--set {item!r}: {key} takes a number") from None
        summary = pack(args.checkpoint, args.out, half=not args.fp32, inference=inference)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
