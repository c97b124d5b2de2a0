"""Tests for the numpy-only tracker (models/tracker.py) and box helpers (models/geometry.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.geometry import box_area, box_iou
from models.tracker import Tracker, comprehensive_scores, greedy_assign, match_log_likelihood

REPO = Path(__file__).resolve().parents[2]
D = 4


def emb(k: int) -> np.ndarray:
    """Embedding of object k: self dot 12, cross dot -4, so unrelated objects prefer "new"."""
    return 4.0 * np.eye(D)[k] - 1.0


def frame(*objects: tuple[int, list[float], int, float]):
    """Detections from (object, box, label, score) tuples in the order given."""
    if not objects:
        return np.empty((0, D)), np.empty((0, 4)), np.empty(0, dtype=np.int64), np.empty(0)
    return (
        np.stack([emb(k) for k, _, _, _ in objects]),
        np.array([b for _, b, _, _ in objects], dtype=np.float64),
        np.array([lab for _, _, lab, _ in objects], dtype=np.int64),
        np.array([s for _, _, _, s in objects], dtype=np.float64),
    )


BOX_A, BOX_B, BOX_C = [0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 210, 10]


# ---------------------------------------------------------------- geometry


def test_box_iou_hand_values_and_degenerate_boxes():
    a = np.array([[0, 0, 2, 2], [5, 5, 5, 5]], dtype=np.float64)
    b = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [10, 10, 12, 12], [5, 5, 5, 5]], dtype=np.float64)
    iou = box_iou(a, b)
    assert iou.shape == (2, 4)
    np.testing.assert_allclose(iou[0], [1.0, 2.0 / 6.0, 0.0, 0.0])
    np.testing.assert_array_equal(iou[1], [0.0, 0.0, 0.0, 0.0])  # zero-area: 0, not NaN
    np.testing.assert_allclose(box_area(b), [4.0, 4.0, 4.0, 0.0])
    assert box_iou(np.empty((0, 4)), b).shape == (0, 4)


# ---------------------------------------------------------------- pure steps


def test_comprehensive_scores_match_hand_computation():
    det_emb = np.array([[1.0, 0.0]])
    mem_emb = np.array([[1.0, 0.0], [0.0, 1.0]])
    ll = match_log_likelihood(det_emb, mem_emb)
    # logits [0 (new), 1, 0]
    z = math.log(1 + math.e + 1)
    np.testing.assert_allclose(ll, [[0 - z, 1 - z, 0 - z]])

    comp = comprehensive_scores(
        ll,
        det_boxes=np.array([[0, 0, 2, 2]]),
        det_labels=np.array([1]),
        det_scores=np.array([0.5]),
        mem_boxes=np.array([[0, 0, 2, 2], [1, 0, 3, 2]]),
        mem_labels=np.array([1, 2]),
    )
    expected = [
        (0 - z) + math.log(0.5) + 2 * 0.0 + 10 * 1,  # new-object column: IoU 0, label 1
        (1 - z) + math.log(0.5) + 2 * 1.0 + 10 * 1,  # same box, same label
        (0 - z) + math.log(0.5) + 2 * (2 / 6) + 10 * 0,  # IoU 1/3, other label
    ]
    np.testing.assert_allclose(comp, [expected])


def test_match_log_likelihood_is_stable_for_large_logits():
    ll = match_log_likelihood(np.array([[1e3, 0.0]]), np.array([[1e3, 0.0]]))
    assert np.isfinite(ll).all()
    np.testing.assert_allclose(ll, [[-1e6, 0.0]])


def test_greedy_assign_takes_best_pairs_one_per_slot():
    comp = np.array(
        [
            [0.0, 5.0, 3.0],  # wants slot 1, then slot 2
            [0.0, 9.0, 1.0],  # wants slot 1 more strongly
            [4.0, 8.0, 2.0],  # wants slot 1; new beats slot 2
        ]
    )
    # 9 (row 1 → col 1); then row 2's best admissible is new (4 > 2); row 0 → col 2 (3 > 0).
    np.testing.assert_array_equal(greedy_assign(comp), [2, 1, 0])
    # The original per-row argmax gives slot 1 to all three detections.
    np.testing.assert_array_equal(comp.argmax(axis=1), [1, 1, 1])


def test_greedy_assign_tie_prefers_new_object():
    np.testing.assert_array_equal(greedy_assign(np.array([[1.0, 1.0]])), [0])


def reference_greedy(comp: np.ndarray) -> np.ndarray:
    """Straightforward sorted scan over (score desc, row, col) pairs."""
    n, width = comp.shape
    rows, cols = np.indices(comp.shape)
    order = np.lexsort((cols.ravel(), rows.ravel(), -comp.ravel()))
    out = np.full(n, -1)
    taken: set[int] = set()
    for flat in order:
        r, c = divmod(int(flat), width)
        if out[r] == -1 and (c == 0 or c not in taken):
            out[r] = c
            if c:
                taken.add(c)
    return out


def test_greedy_assign_matches_reference_scan_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, m = rng.integers(0, 7), rng.integers(0, 7)
        comp = rng.integers(-3, 4, size=(n, 1 + m)).astype(np.float64)  # small ints: many ties
        got = greedy_assign(comp)
        np.testing.assert_array_equal(got, reference_greedy(comp))
        slots = got[got > 0]
        assert len(slots) == len(set(slots.tolist()))
        assert ((got >= 0) & (got <= m)).all()


# ---------------------------------------------------------------- tracker behaviour


def test_first_frame_all_new_and_empty_update():
    tracker = Tracker()
    ids = tracker.update(*frame((0, BOX_A, 1, 0.9), (1, BOX_B, 1, 0.8), (2, BOX_C, 1, 0.7)))
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [0, 1, 2])
    empty = tracker.update(*frame())
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert len(tracker) == 3 and tracker.frame_count == 2
    assert [t["age_frames"] for t in tracker.tracks()] == [1, 1, 1]


def test_clear_match_keeps_ids_and_stranger_is_new():
    tracker = Tracker()
    tracker.update(*frame((0, BOX_A, 1, 0.9), (1, BOX_B, 1, 0.9)))
    moved_a, moved_b = [1, 1, 11, 11], [101, 99, 111, 109]
    ids = tracker.update(*frame((1, moved_b, 1, 0.9), (2, BOX_C, 1, 0.9), (0, moved_a, 1, 0.9)))
    np.testing.assert_array_equal(ids, [1, 2, 0])
    snapshot = {t["id"]: t for t in tracker.tracks()}
    assert snapshot[0]["box"] == [1.0, 1.0, 11.0, 11.0]  # memory follows the latest match
    assert snapshot[0]["hits"] == 2 and snapshot[2]["hits"] == 1


def test_competing_detections_get_distinct_ids():
    tracker = Tracker()
    tracker.update(*frame((0, BOX_A, 1, 0.9)))
    # Both detections look like object 0 in the same place; the higher score wins it.
    ids = tracker.update(*frame((0, BOX_A, 1, 0.6), (0, BOX_A, 1, 0.95)))
    np.testing.assert_array_equal(ids, [1, 0])


def test_loser_of_a_competition_takes_next_best_free_slot():
    tracker = Tracker()
    tracker.update(
        np.array([[1.0, 0.0], [0.0, 1.0]]),
        np.array([BOX_A, BOX_B], dtype=np.float64),
        np.array([1, 1]),
        np.array([0.9, 0.9]),
    )
    det_emb = np.array([[4.0, 0.0], [3.0, 2.0]])  # logits vs memory: [4, 0] and [3, 2]
    det_boxes = np.array([BOX_A, BOX_A], dtype=np.float64)
    ll = match_log_likelihood(det_emb, np.array([[1.0, 0.0], [0.0, 1.0]]))
    comp = comprehensive_scores(ll, det_boxes, [1, 1], [0.9, 0.9], np.array([BOX_A, BOX_B]), [1, 1])
    assert (comp.argmax(axis=1) == 1).all()  # the original would give both detections id 0
    ids = tracker.update(det_emb, det_boxes, np.array([1, 1]), np.array([0.9, 0.9]))
    np.testing.assert_array_equal(ids, [0, 1])


def test_label_term_decides_between_identical_candidates():
    tracker = Tracker()
    same = np.ones((2, D))
    tracker.update(same, np.array([BOX_A, BOX_A], dtype=np.float64), np.array([3, 7]), np.array([0.9, 0.9]))
    ids = tracker.update(np.ones((1, D)), np.array([BOX_A], dtype=np.float64), np.array([7]), np.array([0.9]))
    np.testing.assert_array_equal(ids, [1])


def test_no_duplicate_ids_within_any_frame_randomized():
    rng = np.random.default_rng(1)
    tracker = Tracker(max_age=3, max_tracks=12)
    previous_ids: set[int] = set()
    for _ in range(200):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 50, size=(n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(1, 20, size=(n, 2))])
        ids = tracker.update(
            rng.normal(size=(n, 8)), boxes, rng.integers(0, 3, size=n), rng.uniform(0.05, 1.0, size=n)
        )
        assert len(set(ids.tolist())) == n
        alive = {t["id"] for t in tracker.tracks()}
        assert len(alive) <= 12
        new = set(ids.tolist()) - previous_ids
        assert all(i > max(previous_ids, default=-1) for i in new)  # never reuse an id
        previous_ids |= set(ids.tolist())


def test_max_age_forgets_at_exactly_the_right_frame():
    det = frame((0, BOX_A, 1, 0.9))
    tracker = Tracker(max_age=2)
    tracker.update(*det)  # frame 0
    tracker.update(*frame())  # miss 1
    tracker.update(*frame())  # miss 2
    assert len(tracker) == 1
    tracker.update(*frame())  # miss 3 > max_age
    assert len(tracker) == 0

    tracker = Tracker(max_age=2)
    tracker.update(*det)
    tracker.update(*frame((1, BOX_B, 1, 0.9)))  # miss 1, with an unrelated detection present
    tracker.update(*frame())  # miss 2
    np.testing.assert_array_equal(tracker.update(*det), [0])  # still matchable after 2 misses
    assert tracker.tracks()[0]["hits"] == 2

    tracker = Tracker(max_age=0)
    tracker.update(*det)
    assert len(tracker) == 1
    tracker.update(*frame())
    assert len(tracker) == 0
    np.testing.assert_array_equal(tracker.update(*det), [1])


def test_max_tracks_evicts_least_recently_seen():
    tracker = Tracker(max_tracks=2)
    tracker.update(*frame((0, BOX_A, 1, 0.9)))
    tracker.update(*frame((1, BOX_B, 1, 0.9)))
    tracker.update(*frame((2, BOX_C, 1, 0.9)))
    assert [t["id"] for t in tracker.tracks()] == [1, 2]
    np.testing.assert_array_equal(tracker.update(*frame((0, BOX_A, 1, 0.9))), [3])
    assert [t["id"] for t in tracker.tracks()] == [2, 3]


def test_max_tracks_within_one_frame_keeps_higher_score_but_returns_all_ids():
    tracker = Tracker(max_tracks=1)
    ids = tracker.update(*frame((0, BOX_A, 1, 0.4), (1, BOX_B, 1, 0.8)))
    np.testing.assert_array_equal(ids, [0, 1])
    assert [t["id"] for t in tracker.tracks()] == [1]


def test_reset_clears_memory_but_never_reuses_ids():
    tracker = Tracker()
    tracker.update(*frame((0, BOX_A, 1, 0.9), (1, BOX_B, 1, 0.9)))
    tracker.reset()
    assert len(tracker) == 0 and tracker.frame_count == 0 and tracker.tracks() == []
    # The same object after reset is a new track, and D is free to change.
    ids = tracker.update(np.ones((1, 3)), np.array([BOX_A], dtype=np.float64), np.array([1]), np.array([0.9]))
    np.testing.assert_array_equal(ids, [2])
    assert tracker.tracks()[0]["last_seen_frame"] == 0


def test_tracks_snapshot_is_json_friendly():
    tracker = Tracker()
    tracker.update(*frame((0, BOX_A, 2, 0.75)))
    tracker.update(*frame())
    (snapshot,) = json.loads(json.dumps(tracker.tracks()))
    assert snapshot == {
        "id": 0,
        "box": [0.0, 0.0, 10.0, 10.0],
        "label": 2,
        "score": 0.75,
        "last_seen_frame": 0,
        "age_frames": 1,
        "hits": 1,
    }


# ---------------------------------------------------------------- validation


def _good():
    return list(frame((0, BOX_A, 1, 0.9), (1, BOX_B, 1, 0.8)))


@pytest.mark.parametrize(
    "index, value, message",
    [
        (0, np.ones((3, D)), "detection count"),
        (1, np.ones((2, 3)), r"boxes must have shape \[N, 4\]"),
        (1, np.array([[0, 0, 1, 1], [5, 5, 4, 6]], dtype=float), "x2 >= x1"),
        (1, np.array([[0, 0, 1, np.nan], [0, 0, 1, 1]]), "boxes contains non-finite"),
        (0, np.array([[np.inf, 0, 0, 0], [0, 0, 0, 0]]), "embeddings contain non-finite"),
        (0, np.ones(D), r"embeddings must have shape \[N, D\]"),
        (2, np.array([1.0, 2.0]), "labels must be integers"),
        (3, np.array([0.0, 0.5]), r"scores must lie in \(0, 1\]"),
        (3, np.array([1.5, 0.5]), r"scores must lie in \(0, 1\]"),
        (3, np.array([np.nan, 0.5]), r"scores must lie in \(0, 1\]"),
        (3, np.array([0.5]), "detection count"),
    ],
)
def test_bad_input_raises_value_error(index, value, message):
    args = _good()
    args[index] = value
    with pytest.raises(ValueError, match=message):
        Tracker().update(*args)


def test_embedding_size_change_raises_and_leaves_tracker_untouched():
    tracker = Tracker()
    tracker.update(*frame((0, BOX_A, 1, 0.9)))
    with pytest.raises(ValueError, match="embedding size D=3"):
        tracker.update(np.ones((1, 3)), np.array([BOX_A], dtype=np.float64), np.array([1]), np.array([0.9]))
    assert len(tracker) == 1 and tracker.frame_count == 1


@pytest.mark.parametrize(
    "kwargs", [{"max_age": -1}, {"max_tracks": 0}, {"match_coeff": (1.0, 2.0)}, {"match_coeff": (1, np.nan, 1)},
               {"motion_gate": 0}, {"motion_gate": "far"}]
)
def test_bad_constructor_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        Tracker(**kwargs)


def test_motion_gate_stops_identity_jumps_across_the_scene():
    # Embeddings that agree with everything (as an undertrained track head gives): without a
    # gate, a person appearing far away takes over the id of one who just left.
    same = np.ones((1, D))
    def det(box):
        return same, np.array([box], float), np.array([1]), np.array([0.9])

    plain, gated = Tracker(), Tracker(motion_gate=1.0)
    for tracker in (plain, gated):
        tracker.update(*det([0, 0, 10, 40]))
    assert plain.update(*det([300, 0, 310, 40]))[0] == 0  # jumped 300 px in one frame
    assert gated.update(*det([300, 0, 310, 40]))[0] == 1  # a new person
    # within the gate (a walking step), the id continues
    assert gated.update(*det([305, 2, 315, 42]))[0] == 1
    # a track unseen for k frames may have moved k gates
    gated.update(*frame())
    gated.update(*frame())
    assert gated.update(*det([380, 2, 390, 42]))[0] == 1  # 75 px after 3 frames, height 40: within 120 px
    assert gated.update(*det([700, 2, 710, 42]))[0] == 2  # 320 px in one frame: new


# ---------------------------------------------------------------- numpy only

_BLOCK_TORCH = """
import importlib.abc, sys

class BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision"}:
            raise ImportError(f"torch is blocked in this test: {name}")
        return None

sys.meta_path.insert(0, BlockTorch())
try:
    import torch
    raise SystemExit("blocker failed: torch imported")
except ImportError:
    pass
import numpy as np
import models.tracker as tracker_module
ids = tracker_module.Tracker().update(np.ones((1, 2)), np.zeros((1, 4)), np.array([0]), np.array([1.0]))
assert ids.tolist() == [0], ids
assert not any(m.split(".")[0] in {"torch", "torchvision"} for m in sys.modules), "torch got imported"
print("numpy-only ok")
"""


def test_tracker_imports_without_torch():
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_TORCH], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "numpy-only ok" in result.stdout


def test_greedy_assign_rejects_non_finite_scores():
    with pytest.raises(ValueError, match="comp must be finite"):
        greedy_assign(np.array([[-np.inf, 0.0], [0.0, 1.0]]))


def test_memory_bytes_grows_with_tracks_and_is_bounded_by_max_tracks():
    tracker = Tracker(max_tracks=2)
    assert tracker.memory_bytes() == 0
    rng = np.random.default_rng(0)
    for frame in range(4):
        boxes = np.array([[10.0 * i + 100 * frame, 0, 10.0 * i + 100 * frame + 5, 5] for i in range(3)])
        tracker.update(rng.normal(size=(3, 8)) * 10, boxes, np.ones(3, dtype=np.int64), np.full(3, 0.9))
    # two tracks of 8 float64 embedding values + 4 box values + 5 scalars each
    assert tracker.memory_bytes() == 2 * (8 * 8 + 4 * 8 + 5 * 8)
