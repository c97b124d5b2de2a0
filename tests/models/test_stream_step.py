"""models.stream_step: the per-stream step (support cache -> engine -> threshold -> tracker),
driven by a scripted engine whose cache features carry the number of the frame that made them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.detections import Detections
from models.stream_step import (
    FrameOutput,
    StreamStep,
    detections_from_output,
    prepare_frame,
)
from models.tracker import Tracker
from tests.service.fake_engine import (
    CACHE_SHAPES,
    FRAME_HW,
    WORKING_HW,
    Person,
    ScriptedEngine,
    embedding,
    feature_value,
    frame_image,
    walking,
)

FRAME_BYTES = sum(int(np.prod(shape)) for shape in CACHE_SHAPES) * 4  # one frame's cache entry, float32


def run(step: StreamStep, numbers) -> list[Detections]:
    return [step(frame_image(n)) for n in numbers]


def entries(cache: np.ndarray) -> list[list[float]]:
    """Each cached frame's distinct values (one each, if the entry is one frame's features)."""
    return [np.unique(entry).tolist() for entry in cache]


def held(numbers, level: int) -> list[list[float]]:
    return [[float(np.float32(feature_value(n, level)))] for n in numbers]


# ---------------------------------------------------------------- preparing
def test_prepare_frame_equals_resize_then_bgr_to_rgb_then_scale():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    got = prepare_frame(frame, WORKING_HW)
    resized = cv2.resize(frame, (WORKING_HW[1], WORKING_HW[0]), interpolation=cv2.INTER_LINEAR)
    expected = resized[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    assert got.shape == (3, *WORKING_HW) and got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    # Already at the working size: only the channel order and the scale change.
    same = rng.integers(0, 256, (*WORKING_HW, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_frame(same, WORKING_HW),
                                  same[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    assert prepare_frame(np.full((5, 5, 3), 255, np.uint8), (5, 5)).max() == 1.0
    for bad in (np.zeros((70, 90), np.uint8), np.zeros((70, 90, 4), np.uint8)):
        with pytest.raises(ValueError, match="frame must be HxWx3 BGR"):
            prepare_frame(bad, WORKING_HW)


def test_outputs_come_back_in_frame_pixels_with_masks_in_either_form():
    boxes = np.array([[4, 6, 20, 30], [-3, 40, 70, 60]], np.float32)  # the second crosses two edges
    probs = np.random.default_rng(1).random((2, 1, 14, 14)).astype(np.float32)
    out = FrameOutput(boxes, np.array([0.9, 0.6], np.float32), np.array([1, 2]), probs,
                      np.zeros((2, 8), np.float32), [])
    det = detections_from_output(out, FRAME_HW, WORKING_HW)
    np.testing.assert_allclose(det.boxes, [[8, 12, 40, 60], [0, 80, 128, 96]])  # x2 and y2, clipped
    assert det.frame_hw == FRAME_HW and det.masks is None
    np.testing.assert_array_equal(det.mask_probs, probs[:, 0])
    # Binary masks at the input size are enlarged to the frame, nearest neighbour.
    binary = np.random.default_rng(2).random((2, *WORKING_HW)) > 0.5
    out = FrameOutput(boxes, np.array([0.9, 0.6], np.float32), np.array([1, 2]), None,
                      np.zeros((2, 8), np.float32), [], masks=binary)
    det = detections_from_output(out, FRAME_HW, WORKING_HW)
    assert det.masks.shape == (2, *FRAME_HW) and det.mask_probs is None
    for got, small in zip(det.masks, binary):
        np.testing.assert_array_equal(got, np.kron(small, np.ones((2, 2), bool)))  # 2x nearest = pixel doubling


# ------------------------------------------------------------ support cache
def test_cache_holds_the_last_T_frames_features_oldest_first():
    engine = ScriptedEngine(support_frames=3)
    step = StreamStep(engine, Tracker(), score_thresh=0.5)
    kept = []
    for number in range(1, 8):
        step(frame_image(number))
        kept.append(step.support_kept)
    assert engine.numbers == list(range(1, 8))
    for item, number in zip(engine.seen, engine.numbers):
        before = list(range(max(1, number - 3), number))  # the frames before this one, at most 3
        assert len(item.cache) == len(CACHE_SHAPES)
        for level, (cache, shape) in enumerate(zip(item.cache, CACHE_SHAPES)):
            assert cache.shape == (len(before), *shape) and cache.dtype == np.float32
            # entry j holds feature_value(before[j], level) only: which frame, which level
            assert entries(cache) == held(before, level), (number, level)
    assert kept == [1, 2, 3, 3, 3, 3, 3]


def test_cache_entries_are_copies_not_the_engines_arrays():
    outputs = []

    class Keeping(ScriptedEngine):
        def infer(self, batch):
            result = super().infer(batch)
            outputs.extend(result)
            return result

    engine = Keeping(support_frames=2)
    step = StreamStep(engine, None, 0.5)
    step(frame_image(1))
    outputs[0].features[0][...] = -1.0  # an engine that reuses its output buffers
    step(frame_image(2))
    assert entries(engine.seen[1].cache[0]) == held([1], 0)


def test_engine_without_support_frames_gets_empty_caches_and_keeps_nothing():
    engine = ScriptedEngine(support_frames=0)
    step = StreamStep(engine, Tracker(), 0.5)
    run(step, range(1, 5))
    for item in engine.seen:
        assert [c.shape for c in item.cache] == [(0, *shape) for shape in CACHE_SHAPES]
    assert step.support_kept == 0
    assert step.memory_bytes() == step.tracker.memory_bytes() > 0


# --------------------------------------------------------------- threshold
def test_threshold_is_applied_once_in_finish_and_keeps_scores_at_the_threshold():
    # 0.7 is not a float32: the engine's float32 0.7 must still count as "at" a 0.7 threshold
    scores = [0.7, np.nextafter(np.float32(0.7), np.float32(0)), 0.95, 0.2]

    def four(number: int) -> list[Person]:
        return [Person(k, (4.0 + 14 * k, 10.0, 14.0 + 14 * k, 40.0), float(s)) for k, s in enumerate(scores)]

    step = StreamStep(ScriptedEngine(four), Tracker(), score_thresh=0.7)
    kept = step(frame_image(1))
    np.testing.assert_array_equal(kept.scores, np.float32([0.7, 0.95]))
    np.testing.assert_array_equal(kept.boxes[:, 0], [8.0, 64.0])  # persons 0 and 2, in frame pixels
    # last_all is the engine's whole output: nothing was thresholded before finish
    np.testing.assert_array_equal(step.last_all.scores, np.float32(scores))
    assert len(step.tracker) == 2 and kept.track_ids.tolist() == [0, 1]  # the tracker saw only the kept
    np.testing.assert_array_equal(kept.embeddings, np.stack([embedding(0), embedding(2)]))
    assert len(kept.mask_probs) == 2

    everything = StreamStep(ScriptedEngine(four), Tracker(), score_thresh=0.2)(frame_image(1))
    assert len(everything) == 4


def test_score_threshold_must_be_a_probability():
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="score_thresh must be in"):
            StreamStep(ScriptedEngine(), None, bad)


# ----------------------------------------------------------------- tracking
def newcomer(number: int) -> list[Person]:
    """Person 0 walks right; person 1 enters at frame 4 on the far side, walking left."""
    people = walking(number)
    if number >= 4:
        x = 50.0 - (number - 4)
        people.append(Person(1, (x, 8.0, x + 10.0, 44.0), 0.8))
    return people


def ids_by_person(detections: Detections) -> dict[int, int]:
    """{person key: track id}, telling the persons apart by their embeddings."""
    return {int(np.argmax(e)): int(t) for e, t in zip(detections.embeddings, detections.track_ids)}


def test_a_moving_person_keeps_its_id_and_a_newcomer_gets_a_new_one():
    step = StreamStep(ScriptedEngine(newcomer), Tracker(motion_gate=0.5), 0.5)
    frames = run(step, range(1, 10))
    seen = [ids_by_person(d) for d in frames]
    assert [sorted(s) for s in seen] == [[0]] * 3 + [[0, 1]] * 6
    walker = {s[0] for s in seen}
    entrant = {s[1] for s in seen[3:]}
    assert len(walker) == 1 and len(entrant) == 1 and walker != entrant
    assert step.frames == 9
    assert [t["id"] for t in step.tracks()] == sorted(walker | entrant)


def test_reset_forgets_the_tracker_and_the_cache_but_ids_keep_growing():
    engine = ScriptedEngine(support_frames=2)
    step = StreamStep(engine, Tracker(motion_gate=0.5), 0.5)
    before = {int(t) for d in run(step, range(1, 4)) for t in d.track_ids}
    assert step.support_kept == 2 and len(step.tracker) == 1
    step.reset()
    assert step.support_kept == 0 and len(step.tracker) == 0 and step.memory_bytes() == 0
    after = run(step, [4, 5])
    assert [c.shape[0] for c in engine.seen[3].cache] == [0, 0]  # frame 4: nothing remembered
    assert entries(engine.seen[4].cache[1]) == held([4], 1)  # frame 5: only frame 4
    new_id = int(after[0].track_ids[0])
    assert new_id > max(before)  # a fresh id, never one from before the reset
    assert int(after[1].track_ids[0]) == new_id


# ------------------------------------------------------------------- memory
def test_memory_grows_with_the_cache_then_stays_bounded():
    step = StreamStep(ScriptedEngine(support_frames=2), Tracker(), 0.5)
    memory = []
    for number in range(1, 7):
        step(frame_image(number))
        memory.append(step.memory_bytes())
        assert memory[-1] == min(number, 2) * FRAME_BYTES + step.tracker.memory_bytes()
    assert memory[0] < memory[1] == memory[2] == memory[5]


def test_memory_stays_bounded_when_new_people_keep_coming():
    def crowd(number: int) -> list[Person]:  # a new person every frame
        return [Person(k, (4.0 + 7 * k, 10.0, 9.0 + 7 * k, 40.0)) for k in range(number)]

    step = StreamStep(ScriptedEngine(crowd, support_frames=1), Tracker(max_tracks=3), 0.5)
    memory = [step.memory_bytes()]
    for number in range(1, 8):
        step(frame_image(number))
        memory.append(step.memory_bytes())
    assert len(step.tracker) == 3
    assert memory[1] < memory[2] < memory[3] == memory[4] == memory[7]
