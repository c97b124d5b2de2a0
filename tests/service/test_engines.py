"""The engines behind ``service.engines.base.Engine``: ONNX Runtime and PyTorch agree on real
frames, the factory's and TensorRT's errors, the batching queue, and the HOG test double."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.spec import cache_shapes
from models.stream_step import prepare_frame
from service.engines import ENGINE_KINDS, create_engine
from service.engines.base import Engine, EngineError, FrameInput, FrameOutput
from service.engines.batching import BatchingEngine

from .hog_engine import HogEngine

ROOT = Path(__file__).resolve().parents[2]
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
needs_vtest = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} missing (Debian package opencv-doc)")
FRAME_SIZE = (576, 768)  # (height, width) the shared model is exported for; lite works at 360x480


def vtest_frames(count: int, start: int = 120, step: int = 1) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for index in range(count * step):
        ok, frame = capture.read()
        assert ok, f"{VTEST}: could not read frame {start + index}"
        if index % step == 0:
            frames.append(frame)
    capture.release()
    return frames


# ------------------------------------------------------------------ factory
def test_importing_engines_and_results_pulls_in_neither_torch_nor_onnxruntime():
    code = (
        "import sys; import service.engines, service.engines.batching, service.results; "
        "import service.engines.tensorrt_engine; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_create_engine_refuses_unknown_kind_and_missing_file(tmp_path):
    assert ENGINE_KINDS == ("onnxruntime", "torch", "tensorrt")
    with pytest.raises(ValueError, match="unknown engine 'openvino'; valid engines: onnxruntime, torch, tensorrt"):
        create_engine("openvino", tmp_path / "m.onnx")
    for kind, expected in (("onnxruntime", "exported .onnx"), ("torch", ".pt checkpoint"), ("tensorrt", "serialized")):
        with pytest.raises(ValueError, match=f"m.bin' not found; the {kind} engine needs .*{expected}"):
            create_engine(kind, tmp_path / "m.bin")


def test_tensorrt_engine_names_the_missing_sidecar_and_tensorrt(tmp_path):
    engine_file = tmp_path / "lite.engine"
    engine_file.write_bytes(b"not really an engine")
    with pytest.raises(ValueError, match=r"lite\.json: missing; the TensorRT engine needs the sidecar JSON"):
        create_engine("tensorrt", engine_file)
    with pytest.raises(ValueError, match=r"other\.json: missing"):
        create_engine("tensorrt", engine_file, sidecar=tmp_path / "other.onnx")
    sidecar = tmp_path / "exported.json"
    sidecar.write_text(
        '{"format": "cellwatch.onnx/1", "preset": "lite", "mode": "plugin", "opset": 18, "input_height": 360, '
        '"input_width": 480, "frame_height": 240, "frame_width": 320, "classes": ["person"], '
        '"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "channels": 128, '
        '"cache_shapes": [[128, 96, 120], [128, 48, 60], [128, 24, 30], [128, 12, 15]], "support_frames": 2, '
        '"temporal": true, "embedding_dim": 256, "mask_size": 28, "weights": null}'
    )
    # Without TensorRT: it is not installed. With it (GPU machines): this file is no engine.
    with pytest.raises(RuntimeError, match="TensorRT") as info:
        create_engine("tensorrt", engine_file, sidecar=sidecar)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT is not installed" in str(info.value)


# ------------------------------------------------------- ONNX vs PyTorch
@pytest.fixture(scope="module")
def lite(lite_temporal):
    """The shared lite network with Temporal RoI Align (so the cache matters)
    and its ONNX export for 768x576 frames (tests/conftest.py)."""
    return lite_temporal


def _assert_same(got: FrameOutput, expected: FrameOutput, label: str) -> None:
    assert len(got.boxes) == len(expected.boxes) > 0, label
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=0.01, rtol=0, err_msg=label)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4, rtol=0, err_msg=label)
    np.testing.assert_array_equal(got.labels, expected.labels, err_msg=label)
    assert got.labels.dtype == np.int64
    a, b = got.embeddings, expected.embeddings
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.9999, (label, cosine.min())
    np.testing.assert_allclose(got.mask_probs, expected.mask_probs, atol=1e-3, err_msg=label)
    for level, (x, y) in enumerate(zip(got.features, expected.features)):
        np.testing.assert_allclose(x, y, atol=1e-4, err_msg=f"{label}, level {level}")


@needs_vtest
def test_onnxruntime_and_torch_engines_agree_on_vtest(lite):
    from service.engines.torch_engine import TorchEngine

    model, path = lite
    ort_engine = create_engine("onnxruntime", path, threads=2)
    torch_engine = TorchEngine.from_model(model, FRAME_SIZE)
    assert (ort_engine.name, torch_engine.name) == ("onnxruntime", "torch")
    for engine in (ort_engine, torch_engine):
        assert engine.input_size == (360, 480)
        assert engine.classes == ["person"]
        assert engine.cache_shapes == cache_shapes(360, 480, 128)
    assert ort_engine.support_frames == torch_engine.support_frames == 2

    first, second = (prepare_frame(cv2.resize(f, FRAME_SIZE[::-1]), ort_engine.input_size) for f in vtest_frames(2))
    empty = ort_engine.empty_cache()
    assert [c.shape for c in empty] == [(0, *s) for s in ort_engine.cache_shapes]

    got, expected = ort_engine.infer([FrameInput(first, empty)])[0], torch_engine.infer([FrameInput(first, empty)])[0]
    _assert_same(got, expected, "T=0")
    assert got.features[0].shape == ort_engine.cache_shapes[0]
    assert set(got.timing_ms) == {"inference"} and got.timing_ms["inference"] > 0

    cache = [feature[None] for feature in got.features]  # one support frame: the first frame's features
    with_cache = ort_engine.infer([FrameInput(second, cache)])[0]
    _assert_same(with_cache, torch_engine.infer([FrameInput(second, cache)])[0], "T=1")
    # The cache reaches Temporal RoI Align: the same frame without it scores differently.
    without = ort_engine.infer([FrameInput(second, empty)])[0]
    assert len(without.scores) != len(with_cache.scores) or not np.allclose(without.scores, with_cache.scores)

    # A batch runs as its frames one by one.
    pair = ort_engine.infer([FrameInput(first, empty), FrameInput(second, cache)])
    np.testing.assert_array_equal(pair[0].boxes, got.boxes)
    np.testing.assert_array_equal(pair[1].boxes, with_cache.boxes)

    for engine in (ort_engine, torch_engine):
        with pytest.raises(EngineError, match=r"image must be \(?1?,? ?3, 360, 480\)?"):
            engine.infer([FrameInput(np.zeros((3, 100, 100), np.float32), empty)])
        engine.close()
        with pytest.raises(EngineError, match="closed"):
            engine.infer([FrameInput(first, empty)])


def test_torch_engine_from_checkpoint_and_onnxruntime_provider_choice(lite, tmp_path):
    from models.checkpoint import save_checkpoint
    from service.engines.onnxruntime_engine import choose_providers

    model, _ = lite
    checkpoint = tmp_path / "lite.pt"
    save_checkpoint(checkpoint, model, [{"id": 1, "name": "person"}])
    engine = create_engine("torch", checkpoint, frame_size=(576, 768), support_frames=3)
    assert engine.input_size == (360, 480) and engine.support_frames == 3 and engine.classes == ["person"]
    engine.close()

    cpu, cuda = "CPUExecutionProvider", "CUDAExecutionProvider"
    assert choose_providers("auto", [cpu]) == [cpu]
    assert choose_providers(None, [cuda, cpu]) == [cuda, cpu]
    assert choose_providers("cpu", [cuda, cpu]) == [cpu]
    with pytest.raises(ValueError, match="CUDAExecutionProvider.*not available"):
        choose_providers("cuda", [cpu])


# ----------------------------------------------------------------- batching
def _item(number: int, fail: bool = False) -> FrameInput:
    """A frame that carries its number (and whether the fake engine should fail on it)."""
    return FrameInput(np.full((3, 2, 2), number, np.float32), [np.full((1,), float(fail), np.float32)])


class FakeEngine(Engine):
    """Echoes each frame's number as its one score; records batches; can hold a batch
    until released, and raises on a batch holding a frame marked to fail."""

    name = "fake"

    def __init__(self, hold_first: bool = False, error: type[Exception] = EngineError) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.error = error

    input_size = (2, 2)
    classes = ["person"]
    support_frames = 0
    cache_shapes: list = []

    def infer(self, batch: list[FrameInput]) -> list[FrameOutput]:
        numbers = [int(item.image[0, 0, 0]) for item in batch]
        self.batches.append(numbers)
        self.entered.set()
        assert self.release.wait(10), "test never released the engine"
        if any(item.cache[0][0] for item in batch):
            raise self.error(f"cannot run frames {numbers}")
        return [
            FrameOutput(np.zeros((1, 4)), np.array([n], np.float32), np.ones(1, np.int64), np.zeros((1, 1, 2, 2)),
                        np.zeros((1, 1)), [])
            for n in numbers
        ]


def _wait_for(condition, seconds: float = 10.0) -> None:
    finished = threading.Event()
    for _ in range(int(seconds * 200)):
        if condition():
            return
        finished.wait(0.005)
    raise AssertionError("condition not reached")


def test_batches_form_up_to_max_batch_and_results_reach_their_callers():
    engine = FakeEngine(hold_first=True)
    seen: list[tuple[int, float]] = []
    batching = BatchingEngine(engine, max_batch=4, max_wait_ms=5.0, on_batch=lambda n, s: seen.append((n, s)))
    try:
        first = batching.submit(_item(0))
        assert engine.entered.wait(10)  # frame 0 is in the engine; the rest queue behind it
        with ThreadPoolExecutor(6) as pool:
            futures = list(pool.map(lambda n: (n, batching.submit(_item(n))), range(1, 7)))
        assert batching.pending() == 6
        engine.release.set()
        assert float(first.result(10).scores[0]) == 0
        for number, future in futures:
            assert float(future.result(10).scores[0]) == number
    finally:
        batching.close()
    assert [len(b) for b in engine.batches] == [1, 4, 2]
    assert sorted(n for b in engine.batches for n in b) == list(range(7))
    assert [n for n, _ in seen] == [1, 4, 2] and all(s >= 0 for _, s in seen)


def test_a_lone_frame_runs_without_waiting_for_a_full_batch_and_frames_keep_their_order():
    engine = FakeEngine()
    # max_wait far longer than the test's timeout: a frame alone would wait for it,
    # but a full batch (max_batch 2) must go at once.
    batching = BatchingEngine(engine, max_batch=2, max_wait_ms=60_000)
    try:
        a, b = batching.submit(_item(1)), batching.submit(_item(2))
        assert [float(f.result(10).scores[0]) for f in (a, b)] == [1, 2]
    finally:
        batching.close()
    assert engine.batches == [[1, 2]]

    engine = FakeEngine()
    batching = BatchingEngine(engine, max_batch=4, max_wait_ms=1.0)
    try:
        for number in range(3):  # one at a time: each waits at most max_wait, then runs alone
            assert float(batching.submit(_item(number)).result(10).scores[0]) == number
    finally:
        batching.close()
    assert engine.batches == [[0], [1], [2]]


@pytest.mark.parametrize("error", [EngineError, ValueError])
def test_an_engine_failure_fails_only_its_batch(error):
    engine = FakeEngine(hold_first=True, error=error)
    batching = BatchingEngine(engine, max_batch=4, max_wait_ms=5.0)
    try:
        held = batching.submit(_item(0))
        assert engine.entered.wait(10)
        failing = [batching.submit(_item(1, fail=True)), batching.submit(_item(2))]
        _wait_for(lambda: batching.pending() == 2)
        engine.release.set()
        assert float(held.result(10).scores[0]) == 0
        for future in failing:
            with pytest.raises(EngineError, match=r"cannot run frames \[1, 2\]"):
                future.result(10)
        assert float(batching.submit(_item(3)).result(10).scores[0]) == 3
    finally:
        batching.close()
    assert engine.batches == [[0], [1, 2], [3]]


def test_close_fails_queued_frames_and_refuses_new_ones():
    engine = FakeEngine(hold_first=True)
    batching = BatchingEngine(engine, max_batch=1, max_wait_ms=0.0)
    running = batching.submit(_item(0))
    assert engine.entered.wait(10)
    queued = [batching.submit(_item(1)), batching.submit(_item(2))]
    batching.close(timeout=0)  # the running batch is still held in the engine
    for future in queued:
        with pytest.raises(EngineError, match="batching engine is closed"):
            future.result(10)
    with pytest.raises(EngineError, match="batching engine is closed"):
        batching.submit(_item(3))
    engine.release.set()
    assert float(running.result(10).scores[0]) == 0  # what had started finishes
    batching.close()
    assert not batching._thread.is_alive()
    assert engine.batches == [[0]]


def test_async_infer_from_many_tasks():
    engine = FakeEngine()
    batching = BatchingEngine(engine, max_batch=3, max_wait_ms=2.0)

    async def run() -> list[float]:
        outputs = await asyncio.gather(*(batching.infer(_item(n)) for n in range(7)))
        return [float(o.scores[0]) for o in outputs]

    try:
        assert asyncio.run(run()) == list(range(7))
    finally:
        batching.close()
    assert all(len(b) <= 3 for b in engine.batches)
    assert sorted(n for b in engine.batches for n in b) == list(range(7))


# --------------------------------------------------------------- HOG double
@needs_vtest
def test_hog_engine_finds_people_on_vtest():
    engine = HogEngine()
    height, width = engine.input_size
    frames = vtest_frames(3, start=40, step=40)
    outputs = BatchingEngine(engine, max_batch=4, max_wait_ms=50.0)
    try:
        results = [outputs.submit(FrameInput(prepare_frame(f, (height, width)), engine.empty_cache())) for f in frames]
        results = [r.result(30) for r in results]
    finally:
        outputs.close()
    for index, out in enumerate(results):
        count = len(out.boxes)
        assert count >= 1, f"frame {index}: no person found"
        assert out.boxes.shape == (count, 4) and out.scores.shape == (count,)
        assert (out.scores > 0.5).all() and (out.scores < 1).all()
        assert (out.boxes[:, 0] >= 0).all() and (out.boxes[:, 2] <= width).all() and (out.boxes[:, 3] <= height).all()
        heights, widths = out.boxes[:, 3] - out.boxes[:, 1], out.boxes[:, 2] - out.boxes[:, 0]
        assert (heights > widths).all(), "people are taller than wide"
        assert out.labels.tolist() == [1] * count
        assert out.mask_probs.shape == (count, 1, 28, 28)
        assert out.mask_probs[:, 0, 14, 14].min() > 0.9 and out.mask_probs[:, 0, 0, 0].max() < 0.1
        np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, rtol=1e-5)
        assert [f.shape for f in out.features] == engine.cache_shapes == cache_shapes(360, 480, 128)
    assert sum(engine.batches) == 3
