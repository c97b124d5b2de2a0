"""YouTube-VIS data for training (key/reference pairs, copy-paste augmentation) and inference (frames in order)."""

from .transforms import hflip, keep_ratio_size, resize, to_tensors
from .ytvis import (
    FrameInstance,
    YTVISAnnotations,
    YTVISInstance,
    YTVISPairs,
    YTVISVideo,
    collate_pairs,
    decode_mask,
    iter_video_frames,
    load_ytvis,
    read_frame,
    segmentation_to_rle,
)

__all__ = [
    "CopyPaste",
    "CopyPasteAugmenter",
    "FrameInstance",
    "YTVISAnnotations",
    "YTVISInstance",
    "YTVISPairs",
    "YTVISVideo",
    "collate_pairs",
    "decode_mask",
    "hflip",
    "iter_video_frames",
    "keep_ratio_size",
    "load_ytvis",
    "read_frame",
    "resize",
    "segmentation_to_rle",
    "to_tensors",
]


def __getattr__(name: str):
    # Imported on first use: the augmentation pulls in OpenCV-heavy code that
    # loading annotations does not need.
    if name in ("CopyPaste", "CopyPasteAugmenter"):
        from . import copy_paste

        return getattr(copy_paste, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
