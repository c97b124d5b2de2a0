"""One frame's detections, as one typed object from the engine to the edge.

``Detections`` carries boxes, scores, labels, track ids, embeddings and masks
of one frame in the camera frame's pixels. The tracker, the zones, the safety
state machine, the overlays and the JSON edge all read this one object; JSON
and RLE are made from it only where something is sent.

Masks come in one of two forms: per-box probabilities (``mask_probs``
``[N, M, M]``, what the exported network gives: cheap to carry, pasted at
frame size on first use and kept) or binary masks at frame size (``masks``
``[N, H, W]``, what the eager model gives). ``mask(i)`` answers either way.

numpy (and OpenCV through ``models.masks``) only: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .masks import paste_mask


@dataclass
class Detections:
    """boxes ``[N, 4]`` x1 y1 x2 y2 frame pixels; scores ``[N]``; labels ``[N]``
    (1..num_classes); ``frame_hw`` the frame's (height, width); track_ids ``[N]``
    or None (not tracked); embeddings ``[N, D]`` or None; masks as the module says."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    frame_hw: tuple[int, int]
    track_ids: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    mask_probs: np.ndarray | None = None
    masks: np.ndarray | None = None
    _pasted: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.frame_hw = (int(self.frame_hw[0]), int(self.frame_hw[1]))
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
        for name in ("embeddings", "mask_probs", "masks"):
            if getattr(self, name) is not None:
                setattr(self, name, np.asarray(getattr(self, name)))
        count = len(self.boxes)
        for name in ("scores", "labels", "track_ids", "embeddings", "mask_probs", "masks"):
            value = getattr(self, name)
            if value is not None and len(value) != count:
                raise ValueError(f"Detections: {len(value)} {name} for {count} boxes")
        if self.masks is not None and tuple(self.masks.shape[1:]) != self.frame_hw:
            raise ValueError(f"Detections: masks of shape {self.masks.shape[1:]} for a {self.frame_hw} frame")

    # ------------------------------------------------------------ building
    @classmethod
    def empty(cls, frame_hw: tuple[int, int]) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), frame_hw)

    @classmethod
    def from_working_size(cls, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, frame_hw: tuple[int, int],
                          working_hw: tuple[int, int], **fields: Any) -> Detections:
        """Detections whose boxes are in the network's working size (height, width),
        scaled to the frame and clipped to it, as torchvision scales its boxes back."""
        frame_h, frame_w = (int(v) for v in frame_hw)
        work_h, work_w = (int(v) for v in working_hw)
        scale = np.array([frame_w / work_w, frame_h / work_h] * 2, dtype=np.float64)
        scaled = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale
        scaled[:, 0::2] = scaled[:, 0::2].clip(0, frame_w)
        scaled[:, 1::2] = scaled[:, 1::2].clip(0, frame_h)
        return cls(scaled.astype(np.float32), scores, labels, (frame_h, frame_w), **fields)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: Any) -> Detections:
        """The detections picked by a boolean mask or an index array (a new object)."""
        rows = np.arange(len(self))[index]
        rows = np.atleast_1d(rows)

        def pick(value: np.ndarray | None) -> np.ndarray | None:
            return None if value is None else value[rows]

        subset = Detections(self.boxes[rows], self.scores[rows], self.labels[rows], self.frame_hw,
                            pick(self.track_ids), pick(self.embeddings), pick(self.mask_probs), pick(self.masks))
        subset._pasted.update({new: self._pasted[old] for new, old in enumerate(rows.tolist()) if old in self._pasted})
        return subset

    def with_track_ids(self, track_ids: Any) -> Detections:
        tracked = replace(self, track_ids=np.asarray(track_ids, dtype=np.int64).reshape(-1))
        tracked._pasted.update(self._pasted)
        return tracked

    # ------------------------------------------------------------ reading
    @property
    def has_masks(self) -> bool:
        return self.masks is not None or self.mask_probs is not None

    def mask(self, index: int) -> np.ndarray | None:
        """Detection ``index``'s binary mask at frame size (None: the model gives none).
        Pasted once from its box probabilities, then kept."""
        if self.masks is not None:
            return self.masks[index]
        if self.mask_probs is None:
            return None
        if index not in self._pasted:
            self._pasted[index] = paste_mask(self.mask_probs[index], self.boxes[index], *self.frame_hw)
        return self._pasted[index]

    def track_id(self, index: int) -> int | None:
        return None if self.track_ids is None else int(self.track_ids[index])
