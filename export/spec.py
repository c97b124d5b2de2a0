"""What an exported cellwatch model looks like from outside: names, sizes, sidecar.

Everything here is plain Python (no torch, no ONNX Runtime), so runtimes that
only run the ONNX file share it with the exporter:

* the graph's input and output names (see ``export.graph`` for their shapes);
* the Temporal RoIAlign plugin node's identity (op type, ONNX domain,
  ``plugin_version`` / ``plugin_namespace`` as TensorRT's ONNX parser reads them);
* the working-size rule that maps a camera frame to the network's input;
* the sidecar JSON written next to every exported model, and its checks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CACHE_LEVELS = ("p2", "p3", "p4", "p5")
CACHE_STRIDES = (4, 8, 16, 32)
INPUT_NAMES = ("image", *(f"support_{name}" for name in CACHE_LEVELS))
OUTPUT_NAMES = (
    "boxes",
    "scores",
    "labels",
    "mask_probs",
    "embeddings",
    *(f"features_{name}" for name in CACHE_LEVELS),
)
SIZE_DIVISIBLE = 32
MODES = ("standard", "plugin")

# The one non-standard node of plugin-mode graphs. ai.onnx.contrib is the
# domain onnxruntime-extensions serves custom operators from; TensorRT's ONNX
# parser ignores the domain and finds the plugin by op type, version and namespace.
PLUGIN_OP = "TemporalRoIAlign"
PLUGIN_DOMAIN = "ai.onnx.contrib"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "cellwatch"

SIDECAR_FORMAT = "cellwatch.onnx/1"


def working_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(height, width)`` a frame is resized to before the network.

    torchvision's ``GeneralizedRCNNTransform`` rule: the short side goes to
    ``min_size`` unless the long side would then exceed ``max_size``; floored.
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size the network pads its input to (a multiple of 32 each way)."""

    def up(value: int) -> int:
        return (value + SIZE_DIVISIBLE - 1) // SIZE_DIVISIBLE * SIZE_DIVISIBLE

    return up(height), up(width)


def cache_shapes(height: int, width: int, channels: int) -> list[tuple[int, int, int]]:
    """Per cache level, one frame's feature shape ``(C, H_l, W_l)``."""
    padded_h, padded_w = padded_size(height, width)
    return [(channels, padded_h // s, padded_w // s) for s in CACHE_STRIDES]


@dataclass
class Sidecar:
    """The JSON written next to ``model.onnx`` as ``model.json``."""

    preset: str
    mode: str
    opset: int
    input_height: int
    input_width: int
    frame_height: int
    frame_width: int
    classes: list[str]
    image_mean: list[float]
    image_std: list[float]
    channels: int
    cache_shapes: list[list[int]]
    support_frames: int
    temporal: bool
    embedding_dim: int
    mask_size: int
    weights: str | None
    plugin: dict[str, str] | None = None
    format: str = SIDECAR_FORMAT
    inputs: list[str] = field(default_factory=lambda: list(INPUT_NAMES))
    outputs: list[str] = field(default_factory=lambda: list(OUTPUT_NAMES))
    cache_levels: list[str] = field(default_factory=lambda: list(CACHE_LEVELS))
    cache_order: str = "oldest first, one entry per processed frame"
    safety_rated: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def sidecar_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def read_sidecar(onnx_path: str | Path) -> Sidecar:
    """The sidecar of ``onnx_path``; a clear ValueError when missing or wrong."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise ValueError(f"{path}: missing; every exported model needs the sidecar JSON written beside it")
    try:
        values: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(values, dict) or values.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path}: not a {SIDECAR_FORMAT} sidecar")
    try:
        return Sidecar(**values)
    except TypeError as exc:
        raise ValueError(f"{path}: unexpected sidecar fields ({exc})") from exc
