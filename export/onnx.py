"""ONNX export: ``python -m export.onnx --preset P [--weights W] --mode standard|plugin --out model.onnx``.

Exports ``export.graph.FrameGraph`` (one frame, explicit support cache, see
there for inputs and outputs) with ``torch.export`` and the dynamo ONNX
exporter at a fixed working size and a dynamic number of support frames T
(0 and up). The one non-standard operator, Most-Similar RoI Align
(``torch.ops.cellwatch.most_similar_roi_align``), is written as

* ``standard``: its decomposition into standard ONNX operators (NonZero,
  MatMul, TopK, Softmax, Gather, ScatterND), runnable by any ONNX runtime;
* ``plugin``: one ``TemporalRoIAlign`` node in domain ``ai.onnx.contrib`` with
  ``plugin_version`` / ``plugin_namespace`` attributes, for TensorRT's plugin
  (``export/tensorrt_plugin``) and onnxruntime-extensions
  (``export.ort_runtime``).

Then the file is checked with the ONNX checker, a sidecar ``model.json`` is
written beside it (preset, sizes, classes, cache layout, opset) and, unless
``--no-verify``, ONNX Runtime's outputs are compared with PyTorch's on a
frame with 0 and 1 support frames.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_model, shipped_weights
from models.defaults import DEFAULT_FRAME_HW, DEFAULT_FRAME_SIZE, DEFAULT_SUPPORT_FRAMES
from models.masktrack_rcnn import MaskTrackRCNN
from models.presets import PRESETS, build_model
from models.sizes import parse_size_hw
from models.temporal_roi_align import TemporalRoIAlign

from .graph import FrameGraph, most_similar_standard
from .spec import (
    INPUT_NAMES,
    MODES,
    OUTPUT_NAMES,
    PLUGIN_DOMAIN,
    PLUGIN_NAMESPACE,
    PLUGIN_OP,
    PLUGIN_VERSION,
    Sidecar,
    cache_shapes,
    sidecar_path,
    working_size,
)

DEFAULT_OPSET = 18
MAX_SUPPORT_FRAMES = 64  # upper bound of the T axis declared to the exporter


def log(message: str) -> None:
    print(f"[export.onnx] {message}", file=sys.stderr, flush=True)


def _register_plugin_schema() -> None:
    """Declare the plugin node to ONNX so the exporter and checker know its signature."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has(PLUGIN_OP, PLUGIN_DOMAIN):
        return
    param = OpSchema.FormalParameter
    attr = OpSchema.Attribute
    schema = OpSchema(
        PLUGIN_OP,
        PLUGIN_DOMAIN,
        1,
        doc="Most-Similar RoI Align of Temporal RoI Align (cellwatch): [T, R, C, h, w] from each RoI's "
        "support level of its image's support frames.",
        inputs=[
            param("roi_feats", "T"),
            param("levels", "tensor(int64)"),
            param("batch_index", "tensor(int64)"),
            *(param(f"support_{name}", "T") for name in ("p2", "p3", "p4", "p5")),
        ],
        outputs=[param("found", "T")],
        type_constraints=[("T", ["tensor(float)"], "float32 features")],
        attributes=[
            attr("num_most_similar", OpSchema.AttrType.INT, "k most similar positions per frame"),
            attr("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version"),
            attr("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
        ],
    )
    onnx.defs.register_schema(schema)


def _plugin_translation():
    import onnxscript

    _register_plugin_schema()
    contrib = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)

    def temporal_roi_align(roi_feats, levels, batch_index, support, num_most_similar: int, memory_budget_mb=256.0):
        if len(support) != 4:
            raise ValueError(f"the plugin node takes 4 support levels, got {len(support)}")
        return getattr(contrib, PLUGIN_OP)(
            roi_feats,
            levels,
            batch_index,
            *support,
            num_most_similar=num_most_similar,
            plugin_version=PLUGIN_VERSION,
            plugin_namespace=PLUGIN_NAMESPACE,
        )

    return {torch.ops.cellwatch.most_similar_roi_align.default: temporal_roi_align}


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings -> model option overrides (JSON values, else strings)."""
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
        if isinstance(overrides[key], list):
            overrides[key] = tuple(overrides[key])
    return overrides


def resolve_model(
    preset: str, weights: str | None, overrides: dict[str, object] | None = None, *, random_init: bool = False
) -> tuple[MaskTrackRCNN, str | None]:
    """The network to export and where its weights came from (None: random).

    ``random_init`` builds a randomly initialised network (seed 0; the
    pretrained backbone where the preset has one) even when the preset ships
    weights. ``overrides`` (model options, e.g. ``roi_extractor="temporal"``)
    apply to a randomly initialised network only: a checkpoint carries its
    own options.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if random_init and weights is not None:
        raise ValueError("--random-init and --weights exclude each other")
    if not random_init and overrides and (weights is not None or shipped_weights(preset) is not None):
        raise ValueError("--set applies to randomly initialised networks only (add --random-init); "
                         "a checkpoint carries its own options")
    if weights is None:
        found = None if random_init else shipped_weights(preset)
        if found is None:
            if not random_init:
                warnings.warn(
                    f"preset {preset!r} has no shipped weights and no --weights was given: exporting a "
                    "randomly initialised network (pretrained backbone where the preset has one)",
                    stacklevel=2,
                )
            torch.manual_seed(0)
            return build_model(preset, **(overrides or {})), None
        weights = str(found)
    model, _ = load_model(weights, preset)
    return model, weights


def _example_inputs(model: MaskTrackRCNN, height: int, width: int, frames: int) -> tuple[torch.Tensor, ...]:
    channels = model.backbone.out_channels
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, height, width), generator=generator)
    support = [torch.rand((frames, *shape), generator=generator) for shape in cache_shapes(height, width, channels)]
    return (image, *support)


def _rename_dims(proto, names: dict[str, str]) -> None:
    """Give the symbolic axes readable names (T for support frames, N for detections)."""
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    for value in proto.graph.output[:5]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_param = "N"


def export_onnx(
    model: MaskTrackRCNN,
    out: str | Path,
    mode: str = "standard",
    frame_size: tuple[int, int] = DEFAULT_FRAME_HW,
    support_frames: int = DEFAULT_SUPPORT_FRAMES,
    opset: int = DEFAULT_OPSET,
    weights: str | None = None,
) -> Sidecar:
    """Export ``model`` for frames of ``frame_size`` (height, width); returns the sidecar written."""
    import onnx

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if support_frames < 0:
        raise ValueError(f"support_frames must be >= 0, got {support_frames}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    height, width = working_size(*frame_size, config.min_size, config.max_size)
    model = model.eval()
    graph = FrameGraph(model).eval()
    temporal = any(isinstance(m, TemporalRoIAlign) for m in model.modules())
    if mode == "plugin" and not temporal:
        log("note: this model uses plain RoIAlign, so the plugin-mode graph has no TemporalRoIAlign node")

    example = _example_inputs(model, height, width, 2)
    frames = torch.export.Dim("T", min=0, max=MAX_SUPPORT_FRAMES)
    dynamic = {"image": None, **{name: {0: frames} for name in INPUT_NAMES[1:]}}
    started = time.perf_counter()
    # torchvision's NMS meta kernel uses a deprecated symbolic-size call: not ours to fix
    warnings.filterwarnings("ignore", message=".*create_unbacked_symint.*", category=FutureWarning)
    log(f"tracing {model.preset} at {width}x{height} (frame {frame_size[1]}x{frame_size[0]}), mode {mode}")
    with torch.no_grad():
        program = torch.export.export(graph, example, dynamic_shapes=dynamic, strict=False)
        table = None
        if mode == "standard":
            program = program.run_decompositions(
                {torch.ops.cellwatch.most_similar_roi_align.default: most_similar_standard}
            )
        else:
            table = _plugin_translation()
        log(f"traced in {time.perf_counter() - started:.0f} s; writing ONNX (opset {opset})")
        program_onnx = torch.onnx.export(
            program,
            example,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=True,
            custom_translation_table=table,
            verbose=False,
        )
    proto = program_onnx.model_proto
    t_dim = proto.graph.input[1].type.tensor_type.shape.dim[0].dim_param
    _rename_dims(proto, {t_dim: "T"} if t_dim else {})
    meta = {"cellwatch.preset": model.preset, "cellwatch.mode": mode, "cellwatch.safety_rated": "false"}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(out))
    onnx.checker.check_model(str(out))
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - started:.0f} s; checker passed")

    found = [m for m in model.modules() if isinstance(m, TemporalRoIAlign)]
    sidecar = Sidecar(
        preset=model.preset,
        mode=mode,
        opset=opset,
        input_height=height,
        input_width=width,
        frame_height=frame_size[0],
        frame_width=frame_size[1],
        classes=list(config.class_names) or [f"class_{i}" for i in range(1, config.num_classes + 1)],
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        channels=model.backbone.out_channels,
        cache_shapes=[list(s) for s in cache_shapes(height, width, model.backbone.out_channels)],
        support_frames=support_frames if temporal else 0,
        temporal=temporal,
        embedding_dim=int(config.track_fc_channels[-1]),
        mask_size=28,
        weights=weights,
        plugin=(
            {
                "op_type": PLUGIN_OP,
                "domain": PLUGIN_DOMAIN,
                "plugin_version": PLUGIN_VERSION,
                "plugin_namespace": PLUGIN_NAMESPACE,
                "num_most_similar": str(found[0].num_most_similar),
            }
            if mode == "plugin" and found
            else None
        ),
    )
    sidecar_path(out).write_text(sidecar.to_json())
    return sidecar


def verify(model: MaskTrackRCNN, path: str | Path, frames: int = 2) -> dict[str, float]:
    """Run the exported file on ONNX Runtime against ``FrameGraph`` in PyTorch
    on random frames with 0..frames-1 support frames; return the largest differences."""
    from .ort_runtime import OnnxFrameModel

    runtime = OnnxFrameModel(path)
    graph = FrameGraph(model.eval()).eval()
    height, width = runtime.input_size
    generator = torch.Generator().manual_seed(1)
    cache = runtime.empty_cache()
    worst = {"boxes": 0.0, "scores": 0.0, "embeddings": 0.0, "mask_probs": 0.0, "count": 0.0}
    for _ in range(frames):
        image = torch.rand((1, 3, height, width), generator=generator)
        with torch.no_grad():
            expected = graph(image, *(torch.from_numpy(c) for c in cache))
        got = runtime.infer(image.numpy(), cache)
        for name, ref in zip(OUTPUT_NAMES[:5], expected[:5]):
            if got[name].shape != tuple(ref.shape):
                raise RuntimeError(f"{path}: output {name} is {got[name].shape} in ONNX Runtime, {tuple(ref.shape)} in PyTorch")
            if name in worst and got[name].size:
                worst[name] = max(worst[name], float(np.abs(got[name] - ref.numpy()).max()))
        worst["count"] = max(worst["count"], float(len(got["boxes"])))
        cache = [np.concatenate([c, got[f"features_{lvl}"]]) for c, lvl in zip(cache, ("p2", "p3", "p4", "p5"))]
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--weights", help="checkpoint (default: the preset's shipped weights, else random init)")
    p.add_argument("--random-init", action="store_true",
                   help="export a randomly initialised network (seed 0) even when the preset ships weights")
    p.add_argument("--mode", choices=MODES, default="standard")
    p.add_argument("--out", required=True, help="output .onnx path (the sidecar goes beside it as .json)")
    p.add_argument("--frame-size", default=DEFAULT_FRAME_SIZE, help=f"camera frame WIDTHxHEIGHT (default {DEFAULT_FRAME_SIZE})")
    p.add_argument("--support-frames", type=int, default=DEFAULT_SUPPORT_FRAMES, help="support frames the runtime keeps (T)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model option for a randomly initialised network, e.g. roi_extractor=temporal")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against PyTorch")
    args = p.parse_args(argv)
    try:
        frame_size = parse_size_hw(args.frame_size)
        if args.preset not in PRESETS:
            raise ValueError(f"unknown preset {args.preset!r}; valid presets: {', '.join(PRESETS)}")
        if args.weights is not None and not Path(args.weights).is_file():
            raise ValueError(f"{args.weights}: no such checkpoint")
        model, weights = resolve_model(args.preset, args.weights, parse_overrides(args.set), random_init=args.random_init)
        sidecar = export_onnx(
            model, args.out, args.mode, frame_size, args.support_frames, args.opset, weights=weights
        )
        if not args.no_verify:
            worst = verify(model, args.out)
            log("ONNX Runtime vs PyTorch, largest differences: " + json.dumps(worst))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"onnx": str(args.out), "sidecar": str(sidecar_path(args.out)), "mode": sidecar.mode,
                      "input_size": [sidecar.input_width, sidecar.input_height]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
