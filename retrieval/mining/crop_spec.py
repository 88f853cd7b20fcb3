"""How an image becomes the array SSIM compares: the crop parameters and the centre crop.

Preprocessing follows the reference project: decode, convert to grayscale, take the
centre ``crop_size`` x ``crop_size`` crop *without resizing*. Differences, chosen and named:

* Decoding is the framework's one path (:func:`retrieval.data.image_io.load_rgb`,
  PIL); grayscale is PIL's ``convert("L")``, i.e. ITU-R 601-2 luma
  L = 0.299 R + 0.587 G + 0.114 B -- the weights OpenCV's BGR2GRAY uses too, so values
  agree with the reference up to +-1 grey level of rounding. EXIF orientation is not applied
  (as in the rest of the framework; OpenCV's imread would apply it).
* The crop's top-left corner is ((H - c) // 2, (W - c) // 2).
* An image with a side shorter than the crop, which the reference silently mis-scored, is
  either ``"upscale"``-d (default: bilinear resize so its shorter side equals the crop
  size, aspect ratio kept, then the centre crop) or ``"exclude"``-d (never a candidate).
  Either way it is reported.

The crops of a whole set are decoded once into a cache (:mod:`.crops`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.data.image_io import load_rgb

SMALL_POLICIES = ("upscale", "exclude")


@dataclass(frozen=True)
class CropSpec:
    """How an image becomes the array SSIM compares."""

    crop_size: int = 500
    grayscale: bool = True
    small_images: str = "upscale"

    def __post_init__(self) -> None:
        if self.small_images not in SMALL_POLICIES:
            raise ValueError(f"small_images must be one of {SMALL_POLICIES}, got {self.small_images!r}")
        if self.crop_size < 7:
            raise ValueError(f"crop_size must be at least SSIM's 7x7 window, got {self.crop_size}")

    @property
    def shape(self) -> tuple[int, ...]:
        side = (self.crop_size, self.crop_size)
        return side if self.grayscale else (*side, 3)


class SmallImageError(ValueError):
    """The image is smaller than the crop and the policy is to exclude it."""


def centre_crop(image: Image.Image, spec: CropSpec) -> tuple[np.ndarray, bool]:
    """The crop of an RGB image as uint8, and whether the image was smaller than the crop."""
    image = image.convert("L") if spec.grayscale else image.convert("RGB")
    size = spec.crop_size
    width, height = image.size
    small = min(width, height) < size
    if small:
        if spec.small_images == "exclude":
            raise SmallImageError(f"{width}x{height} is smaller than the {size}x{size} crop")
        scale = size / min(width, height)
        width, height = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8), small


def load_crop(path: str | Path, spec: CropSpec) -> tuple[np.ndarray, bool]:
    """Decode ``path`` and crop it (see :func:`centre_crop`)."""
    return centre_crop(load_rgb(path), spec)
