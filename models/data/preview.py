"""Contact sheet of augmented training pairs: ``python -m models.data.preview
--data DIR --out sheet.png`` with the augmentation flags of ``models.train``.

Owns drawing a pair for a person to check: key and reference side by side,
each instance's mask tinted and outlined, its box and its id in one colour
per identity (so a wrong identity link shows as a colour change), pasted ids
marked ``+``, and a caption saying what each step did.

Imports ``augment`` (options and builder), ``ytvis``, ``models.drawing`` and ``models.sizes``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..drawing import track_colour
from ..sizes import parse_size_wh
from .augment import add_augment_arguments, build_augmenter, resolve_augment_arguments
from .split_args import add_split_arguments, resolve_split_arguments
from .transforms import Frame
from .ytvis import YTVISPairs, load_ytvis

MASK_TINT = 0.35  # share of the id colour over a mask: the person stays visible under it
CAPTION_HEIGHT = 16
GAP = 4  # pixels between key and reference


def draw_instances(frame: Frame, first_new_id: int | None, caption: str) -> np.ndarray:
    """The frame with masks tinted and outlined, boxes, ids (``+`` for pasted ones) and ignore regions dashed grey."""
    image, target = frame
    canvas = image.astype(np.float32)
    for mask, instance_id in zip(target["masks"], target["instance_ids"].tolist()):
        colour = np.array(track_colour(instance_id)[::-1], np.float32)
        inside = mask.astype(bool)
        canvas[inside] = (1 - MASK_TINT) * canvas[inside] + MASK_TINT * colour
    canvas = np.ascontiguousarray(np.clip(canvas, 0, 255).astype(np.uint8))
    for mask, box, instance_id in zip(target["masks"], target["boxes"], target["instance_ids"].tolist()):
        colour = track_colour(instance_id)[::-1]
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, colour, 1)
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour, 1)
        pasted = first_new_id is not None and instance_id >= first_new_id
        text, origin = f"{instance_id}{'+' if pasted else ''}", (x1, max(CAPTION_HEIGHT + 10, y1 - 2))
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    for box in target["ignore_boxes"]:
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), (160, 160, 160), 1, cv2.LINE_4)
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1], CAPTION_HEIGHT), (0, 0, 0), -1)
    cv2.putText(canvas, caption, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def describe(info: dict) -> str:
    """One line for what the steps did, e.g. ``bg=photo +2 | zoom x2.3 h=140 | jpeg q31``."""
    parts = []
    copy_paste, zoom, photometric = info.get("copy_paste"), info.get("zoom"), info.get("photometric")
    if copy_paste:
        parts.append(f"bg={copy_paste['background']} +{len(copy_paste['pasted'])}")
    if zoom:
        canvas = f" on {zoom['canvas']}" if zoom["canvas"] else ""
        parts.append(f"zoom x{zoom['zoom']:.2f} h={zoom['anchor_height']:.0f}{canvas}")
    if photometric:
        parts.append(photometric["photometric"].describe())
    return " | ".join(parts) or "as loaded"


def pair_tile(key: Frame, reference: Frame, first_new_id: int | None, caption: str) -> np.ndarray:
    left = draw_instances(key, first_new_id, f"key {caption}")
    right = draw_instances(reference, first_new_id, "reference")
    gap = np.full((left.shape[0], GAP, 3), 255, np.uint8)
    return np.hstack([left, gap, right])


def contact_sheet(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    tile_h, tile_w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    columns = min(columns, len(tiles))
    sheet = np.full((tile_h * math.ceil(len(tiles) / columns), tile_w * columns, 3), 255, np.uint8)
    for t, tile in enumerate(tiles):
        row, column = divmod(t, columns)
        sheet[row * tile_h:row * tile_h + tile.shape[0], column * tile_w:column * tile_w + tile.shape[1]] = tile
    return sheet


def _input_size(text: str) -> tuple[int, int]:
    try:
        return parse_size_wh(text, minimum=32)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.data.preview",
                                     description="Contact sheet of augmented (key, reference) training pairs.")
    add_split_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--n", type=int, default=8, help="pairs on the sheet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=2, help="pairs per row")
    parser.add_argument("--frame-range", type=int, default=None,
                        help="reference frame within +-N frames, as models.train's")
    parser.add_argument("--input-size", type=_input_size, default=(640, 360), metavar="WxH",
                        help="keep-ratio training scale, as models.train's")
    add_augment_arguments(parser)
    args = parser.parse_args(argv)
    resolve_split_arguments(parser, args)
    resolve_augment_arguments(parser, args)
    if args.n < 1 or args.columns < 1:
        parser.error("--n and --columns must be at least 1")
    try:
        if not args.ann.is_file():
            raise FileNotFoundError(f"annotation file {args.ann} does not exist")
        annotations = load_ytvis(args.ann)
        augmenter = build_augmenter(args, annotations, args.images)
        pairs = YTVISPairs(annotations, args.images, scale=args.input_size, frame_range=args.frame_range,
                           seed=args.seed)
        copy_paste = augmenter.steps["copy_paste"] if augmenter is not None else None
        first_new_id = copy_paste.first_new_id if copy_paste is not None else None
        rng = np.random.default_rng(args.seed)
        tiles = []
        for t in tqdm(range(args.n), desc="preview", file=sys.stderr):
            pairs.set_epoch(t)
            index = int(rng.integers(len(pairs)))
            (video_id, key, reference, flip), sample_rng = pairs.draw_with_rng(index)
            frames = pairs.frame_arrays(video_id, key, flip), pairs.frame_arrays(video_id, reference, flip)
            info = {}
            if augmenter is not None:
                *frames, info = augmenter.augment(*frames, sample_rng, video_id, flip)
            caption = f"v{video_id} f{key}->{reference} {describe(info)}"
            tiles.append(pair_tile(*frames, first_new_id, caption))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(contact_sheet(tiles, args.columns), cv2.COLOR_RGB2BGR)):
        print(f"error: could not write {args.out}", file=sys.stderr)
        return 2
    print(f"preview: {len(tiles)} pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
