"""Online instance tracker of MaskTrackRCNN: per-stream identity memory and matching.

Owns the step that turns one frame's detections (embeddings from the track
head, boxes, labels, scores) into stable integer ids, following the test-time
tracker of MaskTrackRCNN (Yang et al., ICCV 2019, "Video Instance
Segmentation") with two changes:

* Assignment is one-to-one. The original let every detection take the argmax
  of its own row independently, so two detections in one frame could receive
  the same id. Here :func:`greedy_assign` hands each memory slot to at most
  one detection per frame.
* Memory is bounded. ``max_age`` forgets tracks that stay unmatched and
  ``max_tracks`` caps the number of remembered tracks; both default to
  ``None`` (the original's unbounded behaviour).
* An optional motion gate (``motion_gate``): a detection may continue a
  remembered track only when its box centre lies within ``motion_gate``
  box heights per frame since the track was last seen. With one class and
  embeddings that are not yet discriminative, the original's scores let a
  person take over the identity of someone across the scene; the gate rules
  out such jumps. ``None`` (the default) keeps the original behaviour.

Numpy only: the service imports this module in processes that never load
torch, so nothing here may import it, directly or indirectly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.geometry import as_boxes, box_iou

__all__ = ["Tracker", "comprehensive_scores", "greedy_assign", "match_log_likelihood"]

NEW_OBJECT = 0  # column index of the "new object" hypothesis in every score matrix
GATED = -1e9  # score of a (detection, track) pair the motion gate rules out: below any real score
GATE_MAX_FRAMES = 3  # the gate widens with frames unseen, up to this many frames' worth


def match_log_likelihood(det_embeddings: np.ndarray, mem_embeddings: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``[0 | det @ mem.T]`` → ``[N, 1 + M]`` float64.

    Mirrors the track head at training time: a fixed zero logit in column 0
    stands for "none of the remembered objects", so a detection whose
    embedding agrees with nothing in memory puts its mass on that column.
    """
    det = np.asarray(det_embeddings, dtype=np.float64)
    mem = np.asarray(mem_embeddings, dtype=np.float64)
    logits = np.zeros((det.shape[0], 1 + mem.shape[0]))
    logits[:, 1:] = det @ mem.T
    if not np.isfinite(logits).all():
        raise ValueError("embedding dot products overflow float64; embeddings are far too large")
    # Subtracting the row max keeps exp() in range for large logits.
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def comprehensive_scores(
    match_ll: np.ndarray,
    det_boxes: np.ndarray,
    det_labels: np.ndarray,
    det_scores: np.ndarray,
    mem_boxes: np.ndarray,
    mem_labels: np.ndarray,
    coeff: tuple[float, float, float] = (1.0, 2.0, 10.0),
) -> np.ndarray:
    """MaskTrackRCNN's comprehensive score ``[N, 1 + M]`` for every (detection, column) pair.

    ``comp = match_ll + c0·log(det score) + c1·IoU(det, memory box) + c2·[det label == memory label]``.
    The new-object column (0) takes IoU 0 and label agreement 1, as the
    original's dummy column did, so it competes on embedding evidence alone.
    """
    det_scores = np.asarray(det_scores, dtype=np.float64)
    det_labels = np.asarray(det_labels)
    mem_labels = np.asarray(mem_labels)
    n, m = det_scores.shape[0], mem_labels.shape[0]
    match_ll = np.asarray(match_ll, dtype=np.float64)
    if match_ll.shape != (n, 1 + m):
        raise ValueError(f"match_ll must have shape [{n}, {1 + m}], got {match_ll.shape}")
    iou = np.zeros((n, 1 + m))
    iou[:, 1:] = box_iou(det_boxes, mem_boxes)
    same_label = np.ones((n, 1 + m))
    same_label[:, 1:] = det_labels[:, None] == mem_labels[None, :]
    c_score, c_iou, c_label = coeff
    return match_ll + c_score * np.log(det_scores)[:, None] + c_iou * iou + c_label * same_label


def greedy_assign(comp: np.ndarray) -> np.ndarray:
    """Assign each detection (row) a column of ``comp [N, 1 + M]``; column 0 means "new".

    Rule: visit (detection, column) pairs in descending score; ties go to the
    lower row, then the lower column (so an exact tie with column 0 creates a
    new track instead of merging identities on no evidence). A pair is taken
    when its detection is still unassigned and its column is either 0 or a
    memory slot no detection has taken yet. Column 0 never fills, so every
    detection is assigned and each slot ``j >= 1`` appears at most once.

    Implemented as "take the best remaining admissible pair" N times, which
    visits the same pairs in the same order as the sorted scan.
    """
    comp = np.asarray(comp, dtype=np.float64)
    if comp.ndim != 2 or comp.shape[1] < 1:
        raise ValueError(f"comp must have shape [N, 1 + M], got {comp.shape}")
    if not np.isfinite(comp).all():
        raise ValueError("comp must be finite (a -inf row would break the one-per-slot rule)")
    n, width = comp.shape
    columns = np.full(n, -1, dtype=np.int64)
    remaining = comp.copy()
    for _ in range(n):
        flat = int(np.argmax(remaining))  # first maximum in row-major order = the tie rule
        row, col = divmod(flat, width)
        columns[row] = col
        remaining[row, :] = -np.inf
        if col != NEW_OBJECT:
            remaining[:, col] = -np.inf
    return columns


@dataclass
class _Detections:
    """One frame's validated detections, float64/int64."""

    embeddings: np.ndarray  # [N, D]
    boxes: np.ndarray  # [N, 4]
    labels: np.ndarray  # [N]
    scores: np.ndarray  # [N]

    def subset(self, rows: np.ndarray) -> "_Detections":
        return _Detections(self.embeddings[rows], self.boxes[rows], self.labels[rows], self.scores[rows])

    @classmethod
    def validated(
        cls, embeddings: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray
    ) -> "_Detections":
        emb = np.asarray(embeddings)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must have shape [N, D], got {emb.shape}")
        if not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
            raise ValueError(f"embeddings must be a real numeric array, got dtype {emb.dtype}")
        emb = emb.astype(np.float64, copy=False)
        if not np.isfinite(emb).all():
            raise ValueError("embeddings contain non-finite values")
        n = emb.shape[0]
        box_arr = as_boxes(boxes)
        lab = np.asarray(labels)
        if lab.ndim != 1:
            raise ValueError(f"labels must have shape [N], got {lab.shape}")
        if lab.size and not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
        sc = np.asarray(scores)
        if sc.ndim != 1:
            raise ValueError(f"scores must have shape [N], got {sc.shape}")
        if sc.size and not (np.issubdtype(sc.dtype, np.floating) or np.issubdtype(sc.dtype, np.integer)):
            raise ValueError(f"scores must be a real numeric array, got dtype {sc.dtype}")
        sc = sc.astype(np.float64, copy=False)
        counts = {"embeddings": n, "boxes": box_arr.shape[0], "labels": lab.shape[0], "scores": sc.shape[0]}
        if len(set(counts.values())) != 1:
            raise ValueError(f"detection count N differs between inputs: {counts}")
        # `not (s > 0)` also rejects NaN; log(score) needs a strictly positive score.
        if not ((sc > 0) & (sc <= 1)).all():
            raise ValueError("scores must lie in (0, 1]")
        return cls(emb, box_arr, lab.astype(np.int64, copy=False), sc)


class _TrackMemory:
    """Struct-of-arrays store of live tracks, one row per track."""

    def __init__(self, dim: int = 0) -> None:
        self.ids = np.empty(0, dtype=np.int64)
        self.embeddings = np.empty((0, dim))
        self.boxes = np.empty((0, 4))
        self.labels = np.empty(0, dtype=np.int64)
        self.scores = np.empty(0)
        self.last_seen = np.empty(0, dtype=np.int64)
        self.hits = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def refresh(self, slots: np.ndarray, dets: _Detections, frame: int) -> None:
        # The original keeps the latest matched detection as the track's template.
        self.embeddings[slots] = dets.embeddings
        self.boxes[slots] = dets.boxes
        self.labels[slots] = dets.labels
        self.scores[slots] = dets.scores
        self.last_seen[slots] = frame
        self.hits[slots] += 1

    def append(self, ids: np.ndarray, dets: _Detections, frame: int) -> None:
        if len(self) == 0:
            self.embeddings = np.empty((0, dets.embeddings.shape[1]))
        self.ids = np.concatenate([self.ids, ids])
        self.embeddings = np.concatenate([self.embeddings, dets.embeddings])
        self.boxes = np.concatenate([self.boxes, dets.boxes])
        self.labels = np.concatenate([self.labels, dets.labels])
        self.scores = np.concatenate([self.scores, dets.scores])
        self.last_seen = np.concatenate([self.last_seen, np.full(len(ids), frame, dtype=np.int64)])
        self.hits = np.concatenate([self.hits, np.ones(len(ids), dtype=np.int64)])

    FIELDS = ("ids", "embeddings", "boxes", "labels", "scores", "last_seen", "hits")

    def keep(self, mask: np.ndarray) -> None:
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[mask])

    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.FIELDS)


class Tracker:
    """Per-stream online tracker: call :meth:`update` once per frame, in order.

    Frames are numbered from 0 by the number of :meth:`update` calls since
    construction or :meth:`reset`; an update with no detections still counts.

    Forgetting, applied at the end of every update:

    * ``max_age``: a track survives up to ``max_age`` consecutive frames
      without a match; it is dropped at the end of the update in which it
      misses its ``max_age + 1``-th consecutive frame (``0`` keeps only tracks
      matched in the latest frame). ``None`` never forgets.
    * ``max_tracks``: when more tracks are remembered, the least recently seen
      are dropped first; ties go to fewer hits, then lower score, then the
      newer id. A detection always gets its id in the frame it appears, even
      if its track is evicted at once. ``None`` is unbounded.

    Ids start at 0 and only grow; :meth:`reset` clears memory and the frame
    counter but does NOT restart ids, so consumers never see an id reused
    within one stream. The embedding size D is fixed by the first update with
    detections and freed again by :meth:`reset`.
    """

    def __init__(
        self,
        match_coeff: tuple[float, float, float] = (1.0, 2.0, 10.0),
        max_age: int | None = None,
        max_tracks: int | None = None,
        motion_gate: float | None = None,
    ) -> None:
        coeff = tuple(float(c) for c in match_coeff)
        if len(coeff) != 3 or not np.isfinite(coeff).all():
            raise ValueError(f"match_coeff must be three finite numbers, got {match_coeff!r}")
        if max_age is not None and (not isinstance(max_age, (int, np.integer)) or max_age < 0):
            raise ValueError(f"max_age must be None or an int >= 0, got {max_age!r}")
        if max_tracks is not None and (not isinstance(max_tracks, (int, np.integer)) or max_tracks < 1):
            raise ValueError(f"max_tracks must be None or an int >= 1, got {max_tracks!r}")
        if motion_gate is not None and not (isinstance(motion_gate, (int, float)) and motion_gate > 0):
            raise ValueError(f"motion_gate must be None or a number > 0, got {motion_gate!r}")
        self.match_coeff: tuple[float, float, float] = (coeff[0], coeff[1], coeff[2])
        self.motion_gate = None if motion_gate is None else float(motion_gate)
        self.max_age = max_age
        self.max_tracks = max_tracks
        self._next_id = 0
        self.reset()

    def reset(self) -> None:
        """Forget every track and restart frame numbering; ids keep increasing."""
        self._memory = _TrackMemory()
        self._frame = 0
        self._dim: int | None = None

    @property
    def frame_count(self) -> int:
        """Number of updates since construction or the last reset."""
        return self._frame

    def __len__(self) -> int:
        return len(self._memory)

    def memory_bytes(self) -> int:
        """Bytes held by the remembered tracks (what ``max_tracks`` bounds)."""
        return self._memory.nbytes()

    def update(
        self, embeddings: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray
    ) -> np.ndarray:
        """Match one frame's detections to memory and return their ids ``[N]`` int64.

        Raises ``ValueError`` (leaving the tracker untouched) for mismatched
        N, an embedding size that differs from earlier frames, non-finite
        values, non-integer labels or scores outside ``(0, 1]``.
        """
        dets = _Detections.validated(embeddings, boxes, labels, scores)
        n, dim = dets.embeddings.shape
        if n and self._dim is not None and dim != self._dim:
            raise ValueError(f"embedding size D={dim} differs from this stream's D={self._dim}")
        if n and dim == 0:
            raise ValueError("embeddings must have D >= 1")

        frame, memory = self._frame, self._memory
        columns = np.zeros(n, dtype=np.int64)
        if n and len(memory):
            match_ll = match_log_likelihood(dets.embeddings, memory.embeddings)
            comp = comprehensive_scores(
                match_ll, dets.boxes, dets.labels, dets.scores, memory.boxes, memory.labels, self.match_coeff
            )
            if self.motion_gate is not None:
                comp[:, 1:][~self._within_gate(dets.boxes, frame)] = GATED
            columns = greedy_assign(comp)

        ids = np.empty(n, dtype=np.int64)
        matched = columns != NEW_OBJECT
        slots = columns[matched] - 1
        if len(slots):
            ids[matched] = memory.ids[slots]
            memory.refresh(slots, dets.subset(matched), frame)

        fresh = ~matched
        new_ids = np.arange(self._next_id, self._next_id + int(fresh.sum()), dtype=np.int64)
        self._next_id += len(new_ids)
        ids[fresh] = new_ids
        if len(new_ids):
            memory.append(new_ids, dets.subset(fresh), frame)

        if n:
            self._dim = dim
        self._frame += 1
        self._forget(frame)
        return ids

    def _within_gate(self, boxes: np.ndarray, frame: int) -> np.ndarray:
        """``[N, M]``: may detection i continue track j (centre within gate x height x frames unseen)?"""
        memory = self._memory
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        remembered = (memory.boxes[:, :2] + memory.boxes[:, 2:]) / 2
        distance = np.linalg.norm(centres[:, None, :] - remembered[None, :, :], axis=2)
        height = np.maximum(boxes[:, 3:4] - boxes[:, 1:2], (memory.boxes[:, 3] - memory.boxes[:, 1])[None, :])
        frames = np.clip(frame - memory.last_seen, 1, GATE_MAX_FRAMES)[None, :]
        return distance <= self.motion_gate * np.maximum(height, 1.0) * frames

    def _forget(self, frame: int) -> None:
        memory = self._memory
        if self.max_age is not None and len(memory):
            memory.keep(frame - memory.last_seen <= self.max_age)
        if self.max_tracks is not None and len(memory) > self.max_tracks:
            # np.lexsort sorts by its last key first: eviction order is
            # oldest last_seen, fewest hits, lowest score, newest id.
            order = np.lexsort((-memory.ids, memory.scores, memory.hits, memory.last_seen))
            keep = np.ones(len(memory), dtype=bool)
            keep[order[: len(memory) - self.max_tracks]] = False
            memory.keep(keep)

    def tracks(self) -> list[dict]:
        """JSON-friendly snapshot of live tracks, sorted by id.

        ``age_frames`` counts frames since the track was last matched (0 when
        it was matched in the latest frame).
        """
        memory = self._memory
        latest = self._frame - 1
        order = np.argsort(memory.ids)
        return [
            {
                "id": int(memory.ids[i]),
                "box": [float(v) for v in memory.boxes[i]],
                "label": int(memory.labels[i]),
                "score": float(memory.scores[i]),
                "last_seen_frame": int(memory.last_seen[i]),
                "age_frames": int(latest - memory.last_seen[i]),
                "hits": int(memory.hits[i]),
            }
            for i in order
        ]
