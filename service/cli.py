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
    commands.add_parser("serve", help="run the service").set_defaults(run=_not_available)
    commands.add_parser("demo", help="run the demo").set_defaults(run=_not_available)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
