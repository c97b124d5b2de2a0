"""YouTube-VIS data for training (key/reference pairs) and inference (frames in order)."""

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
