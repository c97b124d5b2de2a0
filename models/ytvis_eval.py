"""YouTube-VIS video AP (mask IoU), computed the way the official ``YTVOSeval`` computes it.

Owns the whole evaluation: reading ground truth and results (validation errors
name the problem), the spatio-temporal mask IoU, greedy matching per (video,
category, area range), precision/recall accumulation and the 12 summary
figures. numpy and pycocotools only, so it runs where torch is absent.

The figures are meant to equal the official evaluator's (youtubevos/cocoapi,
``ytvos.py`` + ``ytvoseval.py``, iouType ``segm``) to the last bit, so the
arithmetic follows its order and its quirks; each quirk is commented where it
is reproduced.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

__all__ = [
    "AREA_RANGES", "FIGURES", "IOU_THRESHOLDS", "MAX_DETS", "RECALL_THRESHOLDS", "Figure", "GroundTruth",
    "InputError", "Track", "evaluate", "evaluate_results", "load_json", "parse_ground_truth", "parse_results",
    "spatio_temporal_iou", "summarize",
]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
# Both bounds are inclusive: an average area of exactly 128**2 is small *and* medium.
AREA_RANGES = {"all": (0, 1e10), "small": (0, 128**2), "medium": (128**2, 256**2), "large": (256**2, 1e10)}
AREA_LABELS = tuple(AREA_RANGES)


@dataclass(frozen=True)
class Figure:
    """One summary number: AP (precision) or AR (recall) at an IoU, area range and detection budget."""

    name: str
    precision: bool
    iou: float | None  # None: averaged over all IoU thresholds
    area: str
    max_dets: int


FIGURES = (
    Figure("AP", True, None, "all", 100), Figure("AP50", True, 0.5, "all", 100),
    Figure("AP75", True, 0.75, "all", 100), Figure("APs", True, None, "small", 100),
    Figure("APm", True, None, "medium", 100), Figure("APl", True, None, "large", 100),
    Figure("AR1", False, None, "all", 1), Figure("AR10", False, None, "all", 10),
    Figure("AR100", False, None, "all", 100), Figure("ARs", False, None, "small", 100),
    Figure("ARm", False, None, "medium", 100), Figure("ARl", False, None, "large", 100),
)


class InputError(ValueError):
    """Ground truth or results that cannot be evaluated; the message names the problem."""


@dataclass(frozen=True)
class Video:
    height: int
    width: int
    length: int | None  # None: the file gives no frame count, so results are not checked against one


@dataclass
class Track:
    """One object through a video: a ground-truth annotation or one result."""

    ann_id: float  # matched ids are kept as numbers: an id of 0 reads as "unmatched", as officially
    frames: list[dict | None]  # RLE per frame, None where the object is absent
    frame_areas: list[int | None]
    avg_area: float
    score: float = 1.0
    ignore: bool = False  # ground truth only: excluded from recall, absorbs detections
    crowd: bool = False  # ground truth only: may be matched by more than one detection


@dataclass
class GroundTruth:
    videos: dict[Any, Video]
    video_ids: list  # sorted: the order results are pooled in, which decides cross-video score ties
    category_ids: list  # sorted, unique
    tracks: dict[tuple[Any, Any], list[Track]]  # (video, category) -> annotations in file order


Detections = dict[tuple[Any, Any], list[Track]]  # (video, category) -> results in input order

# ---------------------------------------------------------------- files


def load_json(path: str | Path) -> Any:
    """Parsed JSON of ``path``; :class:`InputError` says what is wrong with the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputError("file not found") from None
    except IsADirectoryError:
        raise InputError("is a directory, not a JSON file") from None
    except UnicodeDecodeError:
        raise InputError("not a text JSON file") from None
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON: {error}") from None


# ---------------------------------------------------------------- ground truth


def _require(entry: Any, fields: Iterable[str], what: str) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{what} must be a JSON object, got {type(entry).__name__}")
    missing = [f for f in fields if f not in entry]
    if missing:
        raise InputError(f"{what} is missing field(s) {', '.join(repr(f) for f in missing)}")


def _contains(collection: Any, value: Any) -> bool:
    try:
        return value in collection
    except TypeError:  # unhashable ids (lists, objects) are simply unknown
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def _average_area(areas: list) -> float:
    # Official: the mean of the truthy per-frame areas, so absent (None) *and* empty (0)
    # frames are both left out; 0 when nothing is left. Same numpy call, same rounding.
    present = [a for a in areas if a]
    return float(np.array(present).mean()) if present else 0.0


def _gt_frame_rle(segm: Any, video: Video) -> dict:
    # As ytvos.annToRLE: polygons (all parts merged), uncompressed RLE, or RLE used as is.
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, video.height, video.width))
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, video.height, video.width)
    return segm


def _gt_track(ann: dict, video: Video, what: str) -> Track:
    if not isinstance(ann["segmentations"], list) or not isinstance(ann["areas"], list):
        raise InputError(f"{what}: 'segmentations' and 'areas' must be lists")
    if not isinstance(ann["iscrowd"], numbers.Real):
        raise InputError(f"{what}: 'iscrowd' must be a number, got {ann['iscrowd']!r}")
    frames: list[dict | None] = []
    areas: list[int | None] = []
    for index, segm in enumerate(ann["segmentations"]):
        try:
            # Official converts only truthy frames; None, [] and {} all mean "absent".
            frames.append(_gt_frame_rle(segm, video) if segm else None)
            areas.append(int(mask_utils.area(frames[-1])) if segm else None)
        except Exception as error:  # pycocotools raises bare exceptions on malformed masks
            raise InputError(f"{what}, frame {index}: cannot read the mask: {error}") from None
    iscrowd = ann["iscrowd"]
    return Track(
        ann_id=ann["id"],
        frames=frames,
        frame_areas=areas,
        # Ground-truth average area comes from the file's "areas", never from the masks.
        avg_area=_average_area(ann["areas"]),
        # Official sets ignore from iscrowd alone (an "ignore" field is overwritten) and
        # reads crowd as int(iscrowd) when re-matching.
        ignore=bool(iscrowd),
        crowd=bool(int(iscrowd)),
    )


def _video(video: Any, what: str) -> Video:
    _require(video, ("id", "height", "width"), what)
    # The frame count is only used to check results; the official code never looks at it.
    length = video.get("length", len(video["file_names"]) if isinstance(video.get("file_names"), list) else None)
    for value in (video["height"], video["width"], 0 if length is None else length):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise InputError(f"{what} (id {video['id']!r}): height, width and length must be integers")
    return Video(video["height"], video["width"], length)


def parse_ground_truth(gt: Any) -> GroundTruth:
    """Index a YouTube-VIS annotation dict (``videos``, ``categories``, ``annotations``)."""
    _require(gt, ("videos", "categories", "annotations"), "the ground truth")
    videos = {video["id"]: _video(video, f"videos[{i}]") for i, video in enumerate(gt["videos"])}
    if not videos:
        raise InputError("the ground truth has no videos")
    for i, category in enumerate(gt["categories"]):
        _require(category, ("id",), f"categories[{i}]")
    category_ids = sorted({c["id"] for c in gt["categories"]})
    known_categories = set(category_ids)
    tracks: dict[tuple[Any, Any], list[Track]] = defaultdict(list)
    seen_ids: set = set()
    for i, ann in enumerate(gt["annotations"]):
        what = f"annotations[{i}]"
        _require(ann, ("id", "video_id", "category_id"), what)
        if not _is_number(ann["id"]):
            raise InputError(f"{what}: 'id' must be a number, got {ann['id']!r}")
        if ann["id"] in seen_ids:
            raise InputError(f"{what}: annotation id {ann['id']} is used twice")
        seen_ids.add(ann["id"])
        key = (ann["video_id"], ann["category_id"])
        # Official only loads annotations of listed videos and categories; the rest are skipped.
        if not (_contains(videos, key[0]) and _contains(known_categories, key[1])):
            continue
        _require(ann, ("segmentations", "areas", "iscrowd"), what)
        tracks[key].append(_gt_track(ann, videos[key[0]], what))
    return GroundTruth(videos, sorted(videos), category_ids, dict(tracks))


# ---------------------------------------------------------------- results


def _result_frame(segm: Any, video: Video, what: str) -> dict | None:
    if segm is None:
        return None
    if not isinstance(segm, dict) or not isinstance(segm.get("counts"), (str, bytes)) or "size" not in segm:
        raise InputError(f"{what}: a mask must be null or a compressed RLE {{'size': [h, w], 'counts': str}}")
    if not isinstance(segm["size"], (list, tuple)) or list(segm["size"]) != [video.height, video.width]:
        raise InputError(
            f"{what}: mask size {segm['size']!r} is not the video's [height, width] "
            f"[{video.height}, {video.width}]")
    return segm


def _rle_area(rle: dict, video: Video, what: str) -> int:
    try:
        area = int(mask_utils.area(rle))
    except Exception as error:  # pycocotools raises bare exceptions on malformed counts
        raise InputError(f"{what}: cannot read the RLE counts: {error}") from None
    if area > video.height * video.width:
        raise InputError(f"{what}: RLE counts cover more pixels than the frame has")
    return area


def _result_track(result: Any, index: int, gt: GroundTruth) -> Track:
    what = f"result {index}"
    _require(result, ("video_id", "category_id", "score", "segmentations"), what)
    video = gt.videos.get(result["video_id"]) if _contains(gt.videos, result["video_id"]) else None
    if video is None:
        raise InputError(f"{what}: unknown video_id {result['video_id']!r} (not in the ground truth)")
    if not _contains(gt.category_ids, result["category_id"]):
        raise InputError(f"{what}: unknown category_id {result['category_id']!r} (not in the ground truth)")
    score = result["score"]
    if not _is_number(score):
        raise InputError(f"{what}: score must be a number, got {score!r}")
    segms = result["segmentations"]
    if not isinstance(segms, list) or (video.length is not None and len(segms) != video.length):
        got = len(segms) if isinstance(segms, list) else type(segms).__name__
        raise InputError(f"{what}: segmentations must list one mask per frame: video "
                         f"{result['video_id']} has {video.length} frames, got {got}")
    frames = [_result_frame(s, video, f"{what}, frame {f}") for f, s in enumerate(segms)]
    areas = [_rle_area(frame, video, f"{what}, frame {f}") if frame else None for f, frame in enumerate(frames)]
    # Official loadRes numbers results 1, 2, ... in input order; results are never crowd.
    return Track(ann_id=index + 1, frames=frames, frame_areas=areas,
                 avg_area=_average_area(areas), score=score)


def parse_results(results: Any, gt: GroundTruth) -> Detections:
    """Validate results in the official submission format and group them by (video, category)."""
    if not isinstance(results, list):
        raise InputError(f"results must be a JSON list of objects, got {type(results).__name__}")
    if not results:
        raise InputError("results list is empty: there is nothing to evaluate")
    detections: Detections = defaultdict(list)
    for index, result in enumerate(results):
        track = _result_track(result, index, gt)
        detections[result["video_id"], result["category_id"]].append(track)
    return dict(detections)


# ---------------------------------------------------------------- matching


def spatio_temporal_iou(dt: Track, gt: Track) -> float:
    """Sum of per-frame intersections over sum of per-frame unions (frames absent on both sides add nothing).

    Plain IoU even for crowd ground truth: the official sequence IoU ignores iscrowd.
    """
    inter = union = 0
    for f, (d, g) in enumerate(zip(dt.frames, gt.frames)):  # zip: the shorter sequence decides
        if d and g:
            # merge (not area sums) so masks of different sizes give 0 and 0, as pycocotools does
            inter += int(mask_utils.area(mask_utils.merge([d, g], 1)))
            union += int(mask_utils.area(mask_utils.merge([d, g], 0)))
        elif g:
            union += gt.frame_areas[f]
        elif d:
            union += dt.frame_areas[f]
    return inter / union if union > 0 else 0.0


def _rank(detections: list[Track]) -> list[Track]:
    # Stable sort by descending score (equal scores keep input order), then the largest budget.
    order = np.argsort([-d.score for d in detections], kind="mergesort")
    return [detections[i] for i in order[: MAX_DETS[-1]]]


@dataclass
class CellMatches:
    """Greedy matches of one (video, category) under one area range, detections best-first."""

    scores: list[float]
    matched_ids: np.ndarray  # [T, D] id of the matched ground truth, 0 when unmatched
    dt_ignore: np.ndarray  # [T, D]
    gt_ignore: np.ndarray  # [G]


def _best_gt(ious: np.ndarray, threshold: float, taken: np.ndarray, gt_ignore: np.ndarray, crowd: list[bool]) -> int:
    best, best_iou = -1, min(threshold, 1 - 1e-10)
    for g in range(len(ious)):
        if taken[g] and not crowd[g]:
            continue
        # Ground truth is ordered regular-first: an ignored one never replaces a regular match.
        if best > -1 and gt_ignore[best] == 0 and gt_ignore[g] == 1:
            break
        if ious[g] < best_iou:  # IoU equal to the threshold matches
            continue
        best, best_iou = g, ious[g]
    return best


def match_cell(dts: list[Track], gts: list[Track], ious: np.ndarray, area: tuple[float, float]) -> CellMatches:
    lo, hi = area
    raw_ignore = [int(g.ignore or g.avg_area < lo or g.avg_area > hi) for g in gts]
    order = np.argsort(raw_ignore, kind="mergesort")
    gts = [gts[i] for i in order]
    gt_ignore = np.array([raw_ignore[i] for i in order])
    crowd = [g.crowd for g in gts]
    T, D, G = len(IOU_THRESHOLDS), len(dts), len(gts)
    matched_ids, dt_ignore = np.zeros((T, D)), np.zeros((T, D), dtype=bool)
    if D and G:
        ious = ious[:, order]
        for t, threshold in enumerate(IOU_THRESHOLDS):
            taken = np.zeros(G, dtype=bool)
            for d in range(D):
                g = _best_gt(ious[d], threshold, taken, gt_ignore, crowd)
                if g >= 0:
                    dt_ignore[t, d] = gt_ignore[g] == 1
                    matched_ids[t, d] = gts[g].ann_id
                    taken[g] = True
    outside = np.array([d.avg_area < lo or d.avg_area > hi for d in dts], dtype=bool)
    # Unmatched detections outside the area range do not count (matched_ids == 0 includes
    # matches to a ground truth whose id is 0: an official quirk kept on purpose).
    dt_ignore |= (matched_ids == 0) & outside[None, :]
    return CellMatches([d.score for d in dts], matched_ids, dt_ignore, gt_ignore)


# ---------------------------------------------------------------- accumulation


def _precision_recall(cells: list[CellMatches], max_det: int) -> tuple[np.ndarray, np.ndarray] | None:
    """[T, R] interpolated precision and [T] recall of the pooled cells, None without regular GT."""
    scores = np.concatenate([c.scores[:max_det] for c in cells])
    order = np.argsort(-scores, kind="mergesort")  # stable: ties keep video order, then rank
    matched = np.concatenate([c.matched_ids[:, :max_det] for c in cells], axis=1)[:, order]
    ignored = np.concatenate([c.dt_ignore[:, :max_det] for c in cells], axis=1)[:, order]
    num_gt = np.count_nonzero(np.concatenate([c.gt_ignore for c in cells]) == 0)
    if num_gt == 0:
        return None
    tp_sum = np.cumsum(np.logical_and(matched, np.logical_not(ignored)), axis=1).astype(np.float64)
    fp_sum = np.cumsum(np.logical_and(np.logical_not(matched), np.logical_not(ignored)), axis=1).astype(np.float64)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
        if not len(tp):
            continue
        rc = tp / num_gt
        pr = tp / (fp + tp + np.spacing(1))
        recall[t] = rc[-1]
        # Monotone envelope from the right; max is exact, so this equals the official loop.
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        at = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        reached = at < len(pr)  # recall thresholds beyond the last recall keep precision 0
        precision[t, reached] = pr[at[reached]]
    return precision, recall


def _iou_matrix(dts: list[Track], gts: list[Track]) -> np.ndarray:
    ious = np.zeros((len(dts), len(gts)))
    for d, g in np.ndindex(ious.shape):
        ious[d, g] = spatio_temporal_iou(dts[d], gts[g])
    return ious


def accumulate(gt: GroundTruth, detections: Detections, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Precision [T, R, K, A, M] and recall [T, K, A, M]; -1 where a category has no regular GT."""
    T, R, K, A, M = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(gt.category_ids), len(AREA_RANGES), len(MAX_DETS)
    precision, recall = -np.ones((T, R, K, A, M)), -np.ones((T, K, A, M))
    cells: dict[tuple[Any, Any], tuple[list[Track], list[Track], np.ndarray]] = {}
    for video_id in tqdm(gt.video_ids, desc="mask IoU", unit="video", disable=None if progress else True):
        for category_id in gt.category_ids:
            gts = gt.tracks.get((video_id, category_id), [])
            dts = _rank(detections.get((video_id, category_id), []))
            if gts or dts:  # cells with neither take no part (not even as empty lists)
                cells[video_id, category_id] = (dts, gts, _iou_matrix(dts, gts))
    for k, category_id in enumerate(gt.category_ids):
        for a, area in enumerate(AREA_RANGES.values()):
            matches = [match_cell(*cells[v, category_id], area) for v in gt.video_ids if (v, category_id) in cells]
            if not matches:
                continue
            for m, max_det in enumerate(MAX_DETS):
                curve = _precision_recall(matches, max_det)
                if curve is not None:
                    precision[:, :, k, a, m], recall[:, k, a, m] = curve
    return precision, recall


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """The 12 figures: means over the entries that are not -1, or -1 when none is."""
    figures = {}
    for figure in FIGURES:
        values = precision if figure.precision else recall
        if figure.iou is not None:
            values = values[np.where(figure.iou == IOU_THRESHOLDS)[0]]
        a, m = [AREA_LABELS.index(figure.area)], [MAX_DETS.index(figure.max_dets)]
        values = values[:, :, :, a, m] if figure.precision else values[:, :, a, m]
        valid = values[values > -1]
        figures[figure.name] = float(np.mean(valid)) if valid.size else -1.0
    return figures


def evaluate(gt: GroundTruth, detections: Detections, progress: bool = False) -> dict[str, float]:
    """The 12 figures for parsed ground truth and results."""
    return summarize(*accumulate(gt, detections, progress))


def evaluate_results(gt: dict, results: list[dict]) -> dict[str, float]:
    """The 12 figures (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl).

    ``gt`` is a YouTube-VIS annotation dict, ``results`` a list of
    ``{video_id, category_id, score, segmentations}``; raises :class:`InputError`
    (a ``ValueError``) naming the problem when either cannot be evaluated.
    """
    ground_truth = parse_ground_truth(gt)
    return evaluate(ground_truth, parse_results(results, ground_truth))
