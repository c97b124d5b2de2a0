"""The training-pair augmentation as a whole: its steps in order (copy-paste,
zoom, photometric), the command-line options that turn them on (shared by
``python -m models.train`` and ``python -m models.data.preview``), and the
builder that binds them to a split.

Each step gets its own generator spawned from the sample's, always one per
step slot, so turning a step on or off leaves what the others draw unchanged
and a pair stays a pure function of (dataset seed, epoch, index).

Imports the step modules (``copy_paste``, ``zoom``, ``photometric``) and
``backgrounds``; the pair dataset (``ytvis``) gets the result through its
constructor and imports none of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Protocol

import numpy as np

from .backgrounds import Backgrounds, EmptyScenes, PhotoBackgrounds
from .copy_paste import CopyPaste
from .photometric import Photometric
from .transforms import Frame
from .ytvis import YTVISAnnotations
from .zoom import Zoom

STEPS = ("copy_paste", "zoom", "photometric")  # the order a pair goes through them

# dest -> (the switch it needs, its default when on); defaults chosen for the person model.
_OPTIONS = {
    "copy_paste_prob": ("copy_paste", 0.5),
    "max_paste": ("copy_paste", 3),
    "zoom_prob": ("zoom", 0.5),
    "zoom_heights": ("zoom", (40.0, 1.0)),
    "zoom_max_upscale": ("zoom", 6.0),
    "zoom_out_prob": ("zoom", 0.3),
    "blur_prob": ("photometric", 0.2),
    "jpeg_prob": ("photometric", 0.3),
    "jpeg_quality": ("photometric", (20, 95)),
    "grey_prob": ("photometric", 0.1),
    "ir_prob": ("photometric", 0.1),
    "low_light_prob": ("photometric", 0.15),
}


class PairStep(Protocol):
    def augment(self, key: Frame, reference: Frame, rng: np.random.Generator, video_id: int,
                flip: bool) -> tuple[Frame, Frame, dict]: ...


class PairAugmentations:
    """The steps that are on, run in ``STEPS`` order: a ``PairAugmenter`` for
    ``YTVISPairs``; ``augment`` also says what each step did (its info dict
    under the step's name)."""

    def __init__(self, copy_paste: PairStep | None = None, zoom: PairStep | None = None,
                 photometric: PairStep | None = None) -> None:
        self.steps = dict(zip(STEPS, (copy_paste, zoom, photometric)))

    def augment(self, key: Frame, reference: Frame, rng: np.random.Generator, video_id: int,
                flip: bool) -> tuple[Frame, Frame, dict]:
        info = {}
        for (name, step), step_rng in zip(self.steps.items(), rng.spawn(len(STEPS))):
            if step is not None:
                key, reference, info[name] = step.augment(key, reference, step_rng, video_id, flip)
        return key, reference, info

    def __call__(self, key: Frame, reference: Frame, rng: np.random.Generator, video_id: int,
                 flip: bool) -> tuple[Frame, Frame]:
        key, reference, _ = self.augment(key, reference, rng, video_id, flip)
        return key, reference


# --- command-line options ---

def _pair(kind: type, name: str):
    def parse(text: str) -> tuple:
        try:
            low, high = (kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected LOW,HIGH, got {text!r}") from None
        return low, high
    return parse


def add_augment_arguments(parser: argparse.ArgumentParser) -> None:
    """The augmentation switches and their options (an option needs its switch)."""
    g = parser.add_argument_group(
        "training-data augmentation",
        "Off unless switched on. The person model's recipe: --copy-paste --zoom --photometric "
        "--copy-paste-backgrounds /usr/share/doc/opencv-doc/examples/data")
    g.add_argument("--copy-paste", action="store_true",
                   help="new backgrounds and people pasted into both frames of a pair (models.data.copy_paste)")
    g.add_argument("--copy-paste-prob", type=float, metavar="P", help="chance a pair gets copy-paste (0.5)")
    g.add_argument("--max-paste", type=int, metavar="N", help="people pasted into a pair at most (3)")
    g.add_argument("--copy-paste-backgrounds", type=Path, metavar="DIR",
                   help="folder of background photos for copy-paste and zoom-out canvases; only photos on a "
                        "people-free list are used (the shipped one, DIR/people_free.sha256, --people-free-list)")
    g.add_argument("--people-free-list", type=Path, action="append", default=[], metavar="FILE",
                   help="more photos checked to show no person, 'sha256  name' lines (repeatable)")
    g.add_argument("--zoom", action="store_true",
                   help="zoom both frames in on a person or out onto a new background (models.data.zoom)")
    g.add_argument("--zoom-prob", type=float, metavar="P", help="chance a pair is zoomed (0.5)")
    g.add_argument("--zoom-heights", type=_pair(float, "--zoom-heights"), metavar="PX,FRAC",
                   help="the zoomed person's height, log-uniform from PX pixels to FRAC of the frame (40,1.0)")
    g.add_argument("--zoom-max-upscale", type=float, metavar="X", help="enlarge a frame at most X times (6)")
    g.add_argument("--zoom-out-prob", type=float, metavar="P",
                   help="share of zooms that shrink a person to PX..its height onto a new background (0.3)")
    g.add_argument("--photometric", action="store_true",
                   help="colour jitter, greyscale/IR look, blur, low light and JPEG (models.data.photometric)")
    g.add_argument("--blur-prob", type=float, metavar="P", help="chance of Gaussian or motion blur (0.2)")
    g.add_argument("--jpeg-prob", type=float, metavar="P", help="chance of JPEG re-encoding (0.3)")
    g.add_argument("--jpeg-quality", type=_pair(int, "--jpeg-quality"), metavar="LOW,HIGH",
                   help="JPEG quality range (20,95)")
    g.add_argument("--grey-prob", type=float, metavar="P", help="chance of greyscale (0.1)")
    g.add_argument("--ir-prob", type=float, metavar="P", help="chance of an infrared-like look (0.1)")
    g.add_argument("--low-light-prob", type=float, metavar="P", help="chance of low light with noise (0.15)")


def resolve_augment_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Defaults for the options of the switches that are on; an option
    without its switch is an error; settings are checked here, not mid-run."""
    needs = {**_OPTIONS, "copy_paste_backgrounds": (("copy_paste", "zoom"), None)}
    for name, (switch, default) in needs.items():
        switches = switch if isinstance(switch, tuple) else (switch,)
        if getattr(args, name) is None:
            setattr(args, name, default if any(getattr(args, s) for s in switches) else None)
        elif not any(getattr(args, s) for s in switches):
            flags = " or ".join(f"--{s.replace('_', '-')}" for s in switches)
            parser.error(f"--{name.replace('_', '-')} needs {flags}")
    if args.people_free_list and args.copy_paste_backgrounds is None:
        parser.error("--people-free-list needs --copy-paste-backgrounds")
    try:
        settings(args)
    except ValueError as exc:
        parser.error(str(exc))


def settings(args: argparse.Namespace) -> tuple[CopyPaste | None, Zoom | None, Photometric | None]:
    """The step settings the resolved options ask for (None for a step that is off)."""
    copy_paste = zoom = photometric = None
    if args.copy_paste:
        copy_paste = CopyPaste(prob=args.copy_paste_prob, max_paste=args.max_paste,
                               background_dir=args.copy_paste_backgrounds,
                               people_free_lists=tuple(args.people_free_list))
    if args.zoom:
        zoom = Zoom(prob=args.zoom_prob, min_height=args.zoom_heights[0], max_height=args.zoom_heights[1],
                    max_upscale=args.zoom_max_upscale, out_prob=args.zoom_out_prob)
    if args.photometric:
        photometric = Photometric(blur_prob=args.blur_prob, jpeg_prob=args.jpeg_prob, jpeg_quality=args.jpeg_quality,
                                  grey_prob=args.grey_prob, ir_prob=args.ir_prob, low_light_prob=args.low_light_prob)
    return copy_paste, zoom, photometric


def build_augmenter(args: argparse.Namespace, annotations: YTVISAnnotations, image_root: str | Path
                    ) -> PairAugmentations | None:
    """The augmentation the resolved options ask for, bound to a split (None when all is off).
    Copy-paste and zoom share one set of backgrounds, so photos are listed once."""
    copy_paste, zoom, photometric = settings(args)
    if copy_paste is None and zoom is None and photometric is None:
        return None
    photos = None
    if args.copy_paste_backgrounds is not None:
        photos = PhotoBackgrounds(args.copy_paste_backgrounds, tuple(args.people_free_list))
    backgrounds = Backgrounds(EmptyScenes(annotations, image_root), photos)
    return PairAugmentations(
        copy_paste.bind(annotations, image_root, backgrounds) if copy_paste is not None else None,
        zoom.bind(backgrounds) if zoom is not None else None,
        photometric.bind() if photometric is not None else None,
    )
