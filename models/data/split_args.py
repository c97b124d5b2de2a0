"""Command-line arguments that name a YouTube-VIS split, shared by train and infer."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="split folder with instances.json and JPEGImages/")
    parser.add_argument("--ann", type=Path, help="annotation JSON (default: DATA/instances.json)")
    parser.add_argument("--images", type=Path, help="image root (default: DATA/JPEGImages)")


def resolve_split_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill ``args.ann`` and ``args.images`` from ``--data`` where not given."""
    if args.data is None and (args.ann is None or args.images is None):
        parser.error("give --data DIR, or both --ann and --images")
    args.ann = args.ann or args.data / "instances.json"
    args.images = args.images or args.data / "JPEGImages"
