"""A scripted engine for unit tests: known detections, and cache entries that say which frame made them.

``ScriptedEngine`` implements ``service.engines.base.Engine``. A test frame is
a constant BGR image whose value is its frame number (``frame_image``), so the
engine reads the number back from the prepared input (``frame_number``) and:

* answers the detections ``script(number)`` gives (``Person`` tuples: who,
  box in working-size pixels, score, label), each person with a constant
  embedding of its own (``embedding``) and a full-box mask;
* returns cache features whose every value is ``number + level / 10``
  (``feature_value``), so a test can read which frames a support cache held.

Every input it ran is kept (``seen``, ``numbers``). ``fail_on`` names frame
numbers on which it raises ``EngineError``; ``gate`` (a ``threading.Event``)
holds every call until it is set, with ``entered`` set as a call begins, so a
test can keep the engine busy while it offers frames.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from service.engines.base import Engine, EngineError, FrameInput, FrameOutput

WORKING_HW = (48, 64)  # the engine's input size (height, width)
FRAME_HW = (96, 128)  # the test frames: twice the working size
CACHE_SHAPES = ((2, 6, 8), (3, 3, 4))  # two cache levels
EMBEDDING_DIM = 8
MASK_SIZE = 14
GATE_TIMEOUT_S = 10.0  # a test that forgets to open the gate fails instead of hanging


class Person(NamedTuple):
    key: int  # who it is: picks the embedding
    box: tuple[float, float, float, float]  # x1 y1 x2 y2, working-size pixels
    score: float = 0.9
    label: int = 1


def embedding(key: int) -> np.ndarray:
    """Person ``key``'s embedding (key < 8): self dot 32, cross dot -4, so the
    tracker's embedding evidence matches a person only with itself."""
    return (6.0 * np.eye(EMBEDDING_DIM)[key] - 1.0).astype(np.float32)


def walking(number: int) -> list[Person]:
    """One person walking right two working pixels per frame."""
    x = 4.0 + 2.0 * number
    return [Person(0, (x, 10.0, x + 12.0, 40.0))]


def feature_value(number: int, level: int) -> float:
    return number + level / 10.0


def frame_image(number: int, hw: tuple[int, int] = FRAME_HW) -> np.ndarray:
    """A BGR uint8 frame that carries ``number`` (0..255) in every pixel."""
    return np.full((*hw, 3), number, dtype=np.uint8)


def frame_number(image: np.ndarray) -> int:
    """The number ``frame_image`` put in, read from a prepared [3, H, W] input in [0, 1]."""
    return round(float(image[0, 0, 0]) * 255.0)


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(
        self,
        script: Callable[[int], list[Person]] = walking,
        *,
        input_size: tuple[int, int] = WORKING_HW,
        support_frames: int = 2,
        cache_shapes: Iterable[tuple[int, int, int]] = CACHE_SHAPES,
        classes: Iterable[str] = ("person", "forklift"),
        fail_on: Iterable[int] = (),
        gate: threading.Event | None = None,
    ) -> None:
        self.script = script
        self._input_size = (int(input_size[0]), int(input_size[1]))
        self._support_frames = int(support_frames)
        self._cache_shapes = [tuple(int(v) for v in shape) for shape in cache_shapes]
        self._classes = list(classes)
        self.fail_on = set(fail_on)
        self.gate = gate
        self.entered = threading.Event()
        self.seen: list[FrameInput] = []
        self.numbers: list[int] = []

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def support_frames(self) -> int:
        return self._support_frames

    @property
    def cache_shapes(self) -> list[tuple[int, int, int]]:
        return list(self._cache_shapes)

    def infer(self, batch: list[FrameInput]) -> list[FrameOutput]:
        return [self._infer_one(item) for item in batch]

    def _infer_one(self, item: FrameInput) -> FrameOutput:
        number = frame_number(item.image)
        self.seen.append(item)
        self.numbers.append(number)
        self.entered.set()
        if self.gate is not None and not self.gate.wait(GATE_TIMEOUT_S):
            raise EngineError("scripted engine: the test never opened the gate")
        if number in self.fail_on:
            raise EngineError(f"scripted failure on frame {number}")
        people = self.script(number)
        count = len(people)
        return FrameOutput(
            boxes=np.array([p.box for p in people], np.float32).reshape(-1, 4),
            scores=np.array([p.score for p in people], np.float32),
            labels=np.array([p.label for p in people], np.int64),
            mask_probs=np.ones((count, 1, MASK_SIZE, MASK_SIZE), np.float32),
            embeddings=np.stack([embedding(p.key) for p in people]) if count
            else np.zeros((0, EMBEDDING_DIM), np.float32),
            features=[np.full(shape, feature_value(number, level), np.float32)
                      for level, shape in enumerate(self._cache_shapes)],
            timing_ms={"inference": 0.0},
        )
