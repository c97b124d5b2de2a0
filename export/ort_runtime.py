"""Running exported cellwatch models with ONNX Runtime (no torch needed).

* ``most_similar_numpy``: the Temporal RoIAlign plugin node's computation in
  NumPy, registered by ``register_temporal_roi_align`` as an
  onnxruntime-extensions custom operator (domain ``ai.onnx.contrib``), so
  plugin-mode models run on the CPU too.
* ``OnnxFrameModel``: one session over one exported model and its sidecar;
  ``infer(image, cache)`` runs a frame against a stream's support cache.
* ``paste_masks``: per-box mask probabilities to full-image masks, as
  torchvision pastes them (the rule lives in ``models.masks``; the frame's
  preprocessing is ``models.stream_step.prepare_frame``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .spec import INPUT_NAMES, MODES, OUTPUT_NAMES, PLUGIN_DOMAIN, PLUGIN_OP, Sidecar, read_sidecar

__all__ = ["OnnxFrameModel", "custom_op_session_options", "most_similar_numpy", "paste_masks",
           "register_temporal_roi_align"]

_NORM_EPS = 1e-12
_register_lock = threading.Lock()
_registered = False

REGISTER_HINT = (
    "plugin-mode models contain the custom operator "
    f"{PLUGIN_DOMAIN}::{PLUGIN_OP}; register it before creating the session: "
    "`from export.ort_runtime import custom_op_session_options; "
    "options = custom_op_session_options()` and pass `options` to onnxruntime.InferenceSession "
    "(it needs the onnxruntime-extensions package), or export with --mode standard"
)


def _unit(x: np.ndarray, axis: int) -> np.ndarray:
    norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    return x / np.maximum(norm, _NORM_EPS)


def most_similar_numpy(
    roi_feats: np.ndarray,
    levels: np.ndarray,
    batch_index: np.ndarray,
    supports: list[np.ndarray],
    num_most_similar: int,
) -> np.ndarray:
    """Most-Similar RoI Align (see ``models.troi_op``) in NumPy: ``[T, R, C, h, w]``."""
    num_rois, channels, height, width = roi_feats.shape
    num_images, num_frames = supports[0].shape[:2]
    out = np.zeros((num_frames, num_rois, channels, height, width), dtype=np.float32)
    if num_frames == 0 or num_rois == 0:
        return out
    cells = _unit(roi_feats.reshape(num_rois, channels, height * width).transpose(0, 2, 1), axis=2)
    for level, support in enumerate(supports):
        for image in range(num_images):
            index = np.nonzero((levels == level) & (batch_index == image))[0]
            if index.size == 0:
                continue
            frames = support[image].reshape(num_frames, channels, -1)  # [T, C, P]
            positions = frames.shape[2]
            k = min(num_most_similar, positions)
            unit = _unit(frames, axis=1)
            query = cells[index].reshape(-1, channels)  # [n*h*w, C]
            for t in range(num_frames):
                similarity = query @ unit[t]  # [n*h*w, P]
                top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
                values = np.take_along_axis(similarity, top, axis=1)
                weights = np.exp(values - values.max(axis=1, keepdims=True))
                weights /= weights.sum(axis=1, keepdims=True)
                rows = frames[t].T  # [P, C]
                found = np.einsum("nk,nkc->nc", weights, rows[top])
                out[t, index] = found.reshape(index.size, height, width, channels).transpose(0, 3, 1, 2)
    return out


def register_temporal_roi_align() -> None:
    """Register the plugin node's NumPy implementation with onnxruntime-extensions (once)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        try:
            from onnxruntime_extensions import PyCustomOpDef, onnx_op
        except ImportError as exc:
            raise RuntimeError(
                "running plugin-mode models on ONNX Runtime needs onnxruntime-extensions "
                "(pip install onnxruntime-extensions), or export with --mode standard"
            ) from exc

        @onnx_op(
            op_type=PLUGIN_OP,
            inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64, PyCustomOpDef.dt_int64]
            + [PyCustomOpDef.dt_float] * 4,
            outputs=[PyCustomOpDef.dt_float],
            attrs={
                "num_most_similar": PyCustomOpDef.dt_int64,
                "plugin_version": PyCustomOpDef.dt_string,
                "plugin_namespace": PyCustomOpDef.dt_string,
            },
        )
        def _temporal_roi_align(roi_feats, levels, batch_index, *supports, **attrs):
            return most_similar_numpy(
                np.asarray(roi_feats, dtype=np.float32),
                np.asarray(levels),
                np.asarray(batch_index),
                [np.asarray(s, dtype=np.float32) for s in supports],
                int(attrs["num_most_similar"]),
            )

        _registered = True


def custom_op_session_options(threads: int | None = None):
    """``onnxruntime.SessionOptions`` that can run plugin-mode models."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    register_temporal_roi_align()
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    if threads:
        options.intra_op_num_threads = threads
    return options


class OnnxFrameModel:
    """One exported model on ONNX Runtime.

    ``custom_ops=False`` opens plugin-mode models without registering the
    custom operator (then creating the session fails with how to register it).
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        providers: list[str] | None = None,
        custom_ops: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such ONNX file")
        self.sidecar: Sidecar = read_sidecar(self.path)
        if self.sidecar.mode not in MODES:
            raise ValueError(f"{self.path}: sidecar mode {self.sidecar.mode!r} is not one of {MODES}")
        plugin = self.sidecar.mode == "plugin" and self.sidecar.plugin is not None
        if plugin and custom_ops:
            options = custom_op_session_options(threads)
        else:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types
            text = str(exc)
            if PLUGIN_OP in text or PLUGIN_DOMAIN in text:
                raise ValueError(f"{self.path}: {REGISTER_HINT} (ONNX Runtime said: {text})") from exc
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it: {text}") from exc
        self._check_io()

    def _check_io(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != list(INPUT_NAMES) or outputs != list(OUTPUT_NAMES):
            raise ValueError(
                f"{self.path}: not a cellwatch frame model: inputs {inputs} and outputs {outputs}, "
                f"expected inputs {list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)}"
            )
        image = self.session.get_inputs()[0].shape
        expected = [1, 3, self.sidecar.input_height, self.sidecar.input_width]
        if list(image) != expected:
            raise ValueError(f"{self.path}: input 'image' is {image}, the sidecar says {expected}")

    @property
    def input_size(self) -> tuple[int, int]:
        return self.sidecar.input_height, self.sidecar.input_width

    def empty_cache(self) -> list[np.ndarray]:
        return [np.zeros((0, *shape), dtype=np.float32) for shape in self.sidecar.cache_shapes]

    def infer(self, image: np.ndarray, cache: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run one frame.

        image: float32 ``[3, H, W]`` or ``[1, 3, H, W]`` RGB in [0, 1] at the
        working size (``prepare_frame`` makes it). cache: per level
        ``[T, C, H_l, W_l]`` (oldest first), or None for no support frames.
        Returns the graph's outputs by name; ``features_*`` are ``[1, C, H_l, W_l]``.
        """
        if image.ndim == 3:
            image = image[None]
        expected = (1, 3, *self.input_size)
        if image.shape != expected:
            raise ValueError(f"image must be {expected}, got {image.shape}")
        cache = self.empty_cache() if cache is None else cache
        if len(cache) != len(self.sidecar.cache_shapes):
            raise ValueError(f"cache needs {len(self.sidecar.cache_shapes)} levels, got {len(cache)}")
        frames = {c.shape[0] for c in cache}
        if len(frames) != 1:
            raise ValueError(f"cache levels hold different frame counts {sorted(frames)}")
        for level, (entry, shape) in enumerate(zip(cache, self.sidecar.cache_shapes)):
            if tuple(entry.shape[1:]) != tuple(shape):
                raise ValueError(f"cache level {level} is {entry.shape}, expected [T, {', '.join(map(str, shape))}]")
        feeds = {"image": np.ascontiguousarray(image, dtype=np.float32)}
        for name, entry in zip(INPUT_NAMES[1:], cache):
            feeds[name] = np.ascontiguousarray(entry, dtype=np.float32)
        return dict(zip(OUTPUT_NAMES, self.session.run(None, feeds)))


def paste_masks(mask_probs: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-box ``[N, 1, M, M]`` probabilities -> ``[N, height, width]`` probabilities
    (torchvision's ``paste_masks_in_image``; ``models.masks`` holds the rule)."""
    from models.masks import paste_mask_probs

    return paste_mask_probs(mask_probs, boxes, height, width)
