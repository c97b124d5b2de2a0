"""Photometric variety for training pairs: colour jitter, greyscale and an
infrared-like look, Gaussian and motion blur, low light with sensor noise,
and JPEG re-encoding, so that a model trained on one camera sees others.

Owns the settings (``Photometric``), the draw of one setting per pair, its
small perturbation for the reference frame (a camera's exposure and focus
drift a little between two moments; its kind of image does not change) and
applying a setting to an image. Only pixels change: geometry and targets are
never touched. Every draw comes from the sample's numpy Generator.

Numpy and OpenCV only; imports ``transforms`` (types) of the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .transforms import Frame

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, what cv2's RGB2GRAY uses


@dataclass(frozen=True)
class PhotometricSetting:
    """One drawn setting; ``None`` for an effect not applied."""

    colour: tuple[float, ...] | None = None  # brightness, contrast, saturation, gain R, G, B
    look: str = "colour"  # "colour" | "grey" | "ir"
    ir: tuple[float, float, float] | None = None  # gamma, contrast, noise sigma
    blur: tuple[str, float, float] | None = None  # ("gaussian", sigma, 0) or ("motion", length px, angle deg)
    low_light: tuple[float, float] | None = None  # gain, noise sigma (0-255 units)
    jpeg_quality: int | None = None

    def describe(self) -> str:
        parts = [self.look] if self.look != "colour" else []
        if self.blur is not None:
            parts.append(f"blur {self.blur[0]} {self.blur[1]:.1f}")
        if self.low_light is not None:
            parts.append(f"dark x{self.low_light[0]:.2f}")
        if self.jpeg_quality is not None:
            parts.append(f"jpeg q{self.jpeg_quality}")
        return " ".join(parts) or "jitter"


@dataclass(frozen=True)
class Photometric:
    """Settings: each effect's chance per pair and its range (pixels are 0-255).

    Greyscale and IR exclude each other. The reference frame gets the key's
    setting with each number scaled by ``1 +- reference_jitter``; its noise is
    drawn anew, as a sensor's is.
    """

    colour_prob: float = 1.0
    brightness: float = 0.2  # +- fraction
    contrast: float = 0.2
    saturation: float = 0.3
    channel_gain: float = 0.05  # white balance, +- fraction per channel
    grey_prob: float = 0.1
    ir_prob: float = 0.1
    ir_gamma: tuple[float, float] = (0.6, 1.6)
    ir_contrast: tuple[float, float] = (0.7, 1.5)
    ir_noise: float = 4.0  # largest noise sigma of the IR look
    blur_prob: float = 0.2  # half Gaussian, half motion
    gaussian_sigma: tuple[float, float] = (0.5, 2.0)
    motion_length: tuple[float, float] = (3.0, 11.0)  # pixels: a walker's smear at 1/25 s, 480x360
    low_light_prob: float = 0.15
    low_light_gain: tuple[float, float] = (0.15, 0.5)
    low_light_noise: tuple[float, float] = (2.0, 8.0)
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (20, 95)  # below 20 blocks hide people; above 95 changes nothing
    reference_jitter: float = 0.02

    def __post_init__(self) -> None:
        probabilities = {name: getattr(self, name) for name in
                         ("colour_prob", "grey_prob", "ir_prob", "blur_prob", "low_light_prob", "jpeg_prob")}
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"photometric: {name} must be in [0, 1], got {value}")
        if self.grey_prob + self.ir_prob > 1:
            raise ValueError(f"photometric: grey_prob + ir_prob must be <= 1, got {self.grey_prob + self.ir_prob}")
        for name in ("ir_gamma", "ir_contrast", "gaussian_sigma", "motion_length", "low_light_gain",
                     "low_light_noise", "jpeg_quality"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"photometric: {name} must be (low, high) with 0 <= low <= high, got {(low, high)}")
        if not (1 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100):
            raise ValueError(f"photometric: jpeg_quality must lie in 1..100, got {self.jpeg_quality}")

    def bind(self) -> PhotometricAugmenter:
        return PhotometricAugmenter(self)

    def draw(self, rng: np.random.Generator) -> PhotometricSetting:
        """One setting for a pair's key frame."""
        colour = None
        if rng.random() < self.colour_prob:
            spread = [self.brightness, self.contrast, self.saturation]
            colour = tuple(np.concatenate([1 + rng.uniform(-1, 1, 3) * spread,
                                           1 + rng.uniform(-self.channel_gain, self.channel_gain, 3)]).tolist())
        look, ir = "colour", None
        chance = rng.random()
        if chance < self.grey_prob:
            look = "grey"
        elif chance < self.grey_prob + self.ir_prob:
            look = "ir"
            ir = (rng.uniform(*self.ir_gamma), rng.uniform(*self.ir_contrast), rng.uniform(0, self.ir_noise))
        blur = None
        if rng.random() < self.blur_prob:
            if rng.random() < 0.5:
                blur = ("gaussian", rng.uniform(*self.gaussian_sigma), 0.0)
            else:
                blur = ("motion", rng.uniform(*self.motion_length), rng.uniform(0, 180))
        low_light = None
        if rng.random() < self.low_light_prob:
            low_light = (rng.uniform(*self.low_light_gain), rng.uniform(*self.low_light_noise))
        quality = None
        if rng.random() < self.jpeg_prob:
            quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
        return PhotometricSetting(colour, look, ir, blur, low_light, quality)

    def perturb(self, setting: PhotometricSetting, rng: np.random.Generator) -> PhotometricSetting:
        """The reference frame's setting: the same effects, each number scaled
        by ``1 +- reference_jitter`` (a motion blur's angle turned by as many
        half-turns), the JPEG quality kept within its range."""
        j = self.reference_jitter

        def scaled(values):
            if values is None:
                return None
            return tuple((np.asarray(values) * (1 + rng.uniform(-j, j, len(values)))).tolist())

        blur = setting.blur
        if blur is not None:
            blur = (blur[0], blur[1] * (1 + rng.uniform(-j, j)), (blur[2] + 180 * rng.uniform(-j, j)) % 180)
        quality = setting.jpeg_quality
        if quality is not None:
            quality = int(np.clip(round(quality * (1 + rng.uniform(-j, j))), *self.jpeg_quality))
        return replace(setting, colour=scaled(setting.colour), ir=scaled(setting.ir), blur=blur,
                       low_light=scaled(setting.low_light), jpeg_quality=quality)


def adjust_colour(image: np.ndarray, brightness: float, contrast: float, saturation: float,
                  gains: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    grey = x @ LUMA
    x = grey[..., None] + saturation * (x - grey[..., None])
    mean = float(grey.mean())
    x = (mean + contrast * (x - mean)) * brightness * gains
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def motion_kernel(length: float, angle_degrees: float) -> np.ndarray:
    """A normalised line kernel ``length`` pixels long at ``angle_degrees``."""
    size = max(3, math.ceil(length) | 1)
    kernel = np.zeros((size, size), np.float32)
    centre, half = (size - 1) / 2, (length - 1) / 2
    dx, dy = half * math.cos(math.radians(angle_degrees)), half * math.sin(math.radians(angle_degrees))
    shift = 4  # sub-pixel endpoints: 1/16 px
    ends = [(round((centre + s * dx) * 16), round((centre + s * dy) * 16)) for s in (-1, 1)]
    cv2.line(kernel, ends[0], ends[1], 1.0, 1, cv2.LINE_AA, shift)
    return kernel / kernel.sum()


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (RGB uint8) encoded as JPEG at ``quality`` and decoded again."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"photometric: JPEG encoding at quality {quality} failed")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def apply_setting(image: np.ndarray, setting: PhotometricSetting, rng: np.random.Generator) -> np.ndarray:
    """``image`` (RGB uint8) as the setting's camera would give it; noise from ``rng``."""
    if setting.colour is not None:
        image = adjust_colour(image, *setting.colour[:3], np.asarray(setting.colour[3:], np.float32))
    if setting.look != "colour":
        grey = image.astype(np.float32) @ LUMA
        if setting.ir is not None:
            gamma, contrast, noise = setting.ir
            level = (grey / 255.0) ** gamma
            level = level.mean() + contrast * (level - level.mean())
            grey = 255.0 * level + rng.normal(0, noise, grey.shape).astype(np.float32)
        image = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if setting.blur is not None:
        kind, size, angle = setting.blur
        if kind == "gaussian":
            image = cv2.GaussianBlur(image, (0, 0), size)
        else:
            image = cv2.filter2D(image, -1, motion_kernel(size, angle), borderType=cv2.BORDER_REFLECT)
    if setting.low_light is not None:
        gain, noise = setting.low_light
        dark = image.astype(np.float32) * gain + rng.normal(0, noise, image.shape).astype(np.float32)
        image = np.clip(np.rint(dark), 0, 255).astype(np.uint8)
    if setting.jpeg_quality is not None:
        image = jpeg_roundtrip(image, setting.jpeg_quality)
    return image


class PhotometricAugmenter:
    """``Photometric`` as a pair step: ``augment(key, reference, rng, video_id,
    flip) -> (key, reference, info)``; targets are passed through untouched."""

    def __init__(self, config: Photometric) -> None:
        self.config = config

    def augment(self, key: Frame, reference: Frame, rng: np.random.Generator, video_id: int,
                flip: bool) -> tuple[Frame, Frame, dict]:
        setting = self.config.draw(rng)
        reference_setting = self.config.perturb(setting, rng)
        key = (apply_setting(key[0], setting, rng), key[1])
        reference = (apply_setting(reference[0], reference_setting, rng), reference[1])
        return key, reference, {"photometric": setting}
