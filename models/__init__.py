"""cellwatch models: MaskTrackRCNN with Temporal RoI Align, its data, training and tracker.

Attributes are imported lazily so that the numpy-only parts (``models.tracker``,
``models.geometry``) can be used by the service without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "build_model": "models.presets",
    "preset_config": "models.presets",
    "ModelConfig": "models.presets",
    "PRESETS": "models.presets",
    "MaskTrackRCNN": "models.masktrack_rcnn",
    "TemporalRoIAlign": "models.temporal_roi_align",
    "MultiLevelRoIAlign": "models.roi_align",
    "Tracker": "models.tracker",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
