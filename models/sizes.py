"""Frame sizes written as cameras name them, ``WIDTHxHEIGHT`` (``768x576``).

The argument order is in the function's name: ``parse_size_hw`` returns
``(height, width)`` (numpy and torch shapes), ``parse_size_wh`` returns
``(width, height)`` (OpenCV and resize targets). Standard library only.
"""

from __future__ import annotations


def parse_size_wh(text: str, minimum: int = 1) -> tuple[int, int]:
    """``"768x576"`` -> ``(768, 576)``; ValueError naming the text when it is not
    ``WIDTHxHEIGHT`` with both sides at least ``minimum``."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size {text!r} must be WIDTHxHEIGHT, e.g. 768x576")
    width, height = (int(p) for p in parts)
    if width < minimum or height < minimum:
        raise ValueError(f"size {text!r} is too small: both sides must be at least {minimum}")
    return width, height


def parse_size_hw(text: str, minimum: int = 1) -> tuple[int, int]:
    """``"768x576"`` -> ``(576, 768)``; see ``parse_size_wh``."""
    width, height = parse_size_wh(text, minimum)
    return height, width
