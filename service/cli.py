"""The ``cellwatch`` console script.

Imports nothing heavy at start-up: the service must run without torch when
its engine is ONNX Runtime or TensorRT.
"""

from __future__ import annotations

import argparse
import sys


def _presets(_: argparse.Namespace) -> int:
    from models.presets import PRESETS

    for name, config in PRESETS.items():
        backbone = config.backbone if config.backbone != "resnet" else f"resnet{config.depth}"
        if config.groups > 1:
            backbone = f"resnext{config.depth}_{config.groups}x{config.width_per_group}d"
        print(f"{name:12s} {backbone:28s} fpn={config.fpn_channels} classes={config.num_classes}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_settings

    overrides: dict = {}
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    model = {k: v for k, v in (("path", args.model), ("engine", args.engine), ("threads", args.threads)) if v is not None}
    if server:
        overrides["server"] = server
    if model:
        overrides["model"] = model
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"cellwatch serve: {exc}", file=sys.stderr)
        return 2
    if not settings.model.path:
        print(
            "cellwatch serve: no model. Pass --model MODEL.onnx (made by `python -m export.onnx`), "
            "or --engine torch --model CHECKPOINT.pt; the shipped person model is not available in this version.",
            file=sys.stderr,
        )
        return 2
    from pathlib import Path

    if not Path(settings.model.path).is_file():
        print(f"cellwatch serve: {settings.model.path}: no such model file", file=sys.stderr)
        return 2
    import logging

    import uvicorn

    from . import logs
    from .app import create_app
    from .auth import Authenticator, check_bind

    auth = Authenticator(settings.auth)
    try:
        check_bind(settings.server.host, auth.enabled)
    except ValueError as exc:
        print(f"cellwatch serve: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.server.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(auth.redactor())  # tokens never reach the log
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.server.host, port=settings.server.port, log_config=None, ws_max_size=settings.limits.max_frame_bytes + 1024
    )
    server_ = uvicorn.Server(config)
    server_.run()  # SIGINT/SIGTERM: stops accepting, closes sockets, runs the app's shutdown
    return 0 if server_.started else 1


def _not_available(args: argparse.Namespace) -> int:
    print(f"cellwatch {args.command}: not available in this version yet", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cellwatch",
        description="Advisory person segmentation and proximity alerts for robot cells. NOT safety-rated.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("presets", help="list the model presets").set_defaults(run=_presets)
    serve = commands.add_parser("serve", help="run the service (binds 127.0.0.1 unless configured)")
    serve.add_argument("--config", help="YAML config file (see deploy/cell.example.yaml)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--model", "--weights", dest="model",
                       help="model file: .onnx (onnxruntime), .pt (torch) or .engine (tensorrt)")
    serve.add_argument("--engine", choices=["onnxruntime", "torch", "tensorrt"])
    serve.add_argument("--threads", type=int, help="inference threads")
    serve.set_defaults(run=_serve)
    commands.add_parser("demo", help="run the demo").set_defaults(run=_not_available)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
