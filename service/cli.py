"""The ``cellwatch`` console script.

Imports nothing heavy at start-up: the service must run without torch when
its engine is ONNX Runtime or TensorRT. ``cellwatch demo`` is a client of the
service (``client.demo``), imported inside its subcommand only: the service
package never imports ``client`` at module level.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .shipped_model import SHIPPED_MODEL


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
    shipped = not settings.model.path and settings.model.engine == "onnxruntime" and SHIPPED_MODEL.is_file()
    if shipped:
        settings.model.path = str(SHIPPED_MODEL)
    if not settings.model.path:
        print(
            f"cellwatch serve: no model. Run `make model` to export the shipped person model to {SHIPPED_MODEL}, "
            "or pass --model MODEL.onnx (made by `python -m export.onnx`), or --engine torch --model CHECKPOINT.pt.",
            file=sys.stderr,
        )
        return 2
    if not Path(settings.model.path).is_file():
        print(f"cellwatch serve: {settings.model.path}: no such model file", file=sys.stderr)
        return 2
    import logging

    import uvicorn

    from . import logs
    from .app import create_app
    from .auth import Authenticator, check_bind, install_log_redaction

    auth = Authenticator(settings.auth)
    try:
        check_bind(settings.server.host, auth.enabled)
    except ValueError as exc:
        print(f"cellwatch serve: {exc}", file=sys.stderr)
        return 2
    # Native libraries (libjpeg in OpenCV, ONNX Runtime) print to fd 2: capture
    # it, or their plain text breaks the one-JSON-object-per-line stderr.
    logs.configure(settings.server.log_level, capture_native=True)
    install_log_redaction(auth)  # tokens never reach the log, configured or sent in a URL
    logging.getLogger("cellwatch.cli").info(
        "model", extra={"path": settings.model.path, "engine": settings.model.engine,
                        "source": "shipped (no --model given)" if shipped else "configured"})
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.server.host, port=settings.server.port, log_config=None, ws_max_size=settings.limits.max_frame_bytes + 1024
    )
    server_ = uvicorn.Server(config)
    server_.run()  # SIGINT/SIGTERM: stops accepting, closes sockets, runs the app's shutdown
    return 0 if server_.started else 1


def _demo(args: argparse.Namespace) -> int:
    from client.demo import run_demo

    return run_demo(args)


def main(argv: list[str] | None = None) -> int:
    from .engines import ENGINE_KINDS  # the one list; light (no torch, no onnxruntime)

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
    serve.add_argument("--engine", choices=ENGINE_KINDS)
    serve.add_argument("--threads", type=int, help="inference threads")
    serve.set_defaults(run=_serve)
    demo = commands.add_parser(
        "demo", help="run the service on a video: alerts, summary and an annotated MP4",
        description="Start `cellwatch serve` on 127.0.0.1, replay a video into it as a camera would, print "
        "the safety state transitions and a summary, and write OUT/demo.mp4 and OUT/demo-summary.json. "
        "Advisory, NOT safety-rated.")
    demo.add_argument("--video", help="video file (default: vtest.avi from Debian's opencv-doc)")
    demo.add_argument("--model", help=f"model for the service (default: {SHIPPED_MODEL.name}, made by `make model`)")
    demo.add_argument("--out", default="out", help="output folder (default: out)")
    demo.add_argument("--speed", type=float, default=1.0, help="replay speed, times the video's frame rate (default 1)")
    demo.add_argument("--max-frames", type=int, help="send at most this many frames")
    demo.add_argument("--port", type=int, help="the service's port (default: a free one)")
    demo.add_argument("--config", help="cell config to start from (default: deploy/demo-cell.yaml); "
                      "it needs a push stream with id 'demo'")
    demo.add_argument("--ready-timeout", type=float, default=120.0,
                      help="seconds to wait for the service to be ready (default 120)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
