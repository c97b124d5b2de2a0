"""Colours for drawing instances: one colour per track or instance id, the same
in every picture the project makes (overlays, the demo video, contact sheets).

Standard library only; callers draw with OpenCV.
"""

from __future__ import annotations

import colorsys

GOLDEN_RATIO_CONJUGATE = 0.618033988749895  # successive ids land far apart on the hue circle


def track_colour(key: int) -> tuple[int, int, int]:
    """A BGR colour (0-255) for ``key``; neighbouring ids get distant hues.
    Reverse it (``[::-1]``) to draw on an RGB image."""
    hue = (key * GOLDEN_RATIO_CONJUGATE) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)
