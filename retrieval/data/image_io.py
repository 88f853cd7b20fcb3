"""Decoding images into RGB, the one way every part of the framework reads pixels, and the
integrity check that keeps unreadable files out of a dataset."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from retrieval.data.truth import BBox

# Refuse decompression bombs instead of letting one image take the machine's memory:
# 400 megapixels is far beyond any retrieval benchmark image (Oxford's are 1024 px).
Image.MAX_IMAGE_PIXELS = 40_000 * 40_000 // 4
_JPEG_EOI = b"\xff\xd9"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode. Pillow's own convert("RGB") clips 16-bit values at 255
    (a near-white image); they are scaled down to 8 bits here instead."""
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(pixels * (255.0 / top), 0, 255).round().astype(np.uint8), mode="L")
    return image.convert("RGB")


def load_rgb(path: str | Path, bbox: BBox | None = None) -> Image.Image:
    """Open ``path`` as 8-bit RGB (grayscale, palette, CMYK, alpha and 16-bit images included).

    With ``bbox`` (x1, y1, x2, y2 in pixels) the image is cropped to it first, clipped to
    the image bounds; a box that leaves nothing keeps the whole image. Images over
    ``Image.MAX_IMAGE_PIXELS`` are refused (``Image.DecompressionBombError``), not decoded.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                image.draft("RGB", image.size)  # no-op for non-JPEG; keeps full resolution for JPEG
                rgb = _to_rgb(image)
        except Image.DecompressionBombWarning as warning:
            raise Image.DecompressionBombError(str(warning)) from None
    if bbox is not None:
        x1, y1, x2, y2 = (round(v) for v in bbox)
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = min(x2, rgb.width), min(y2, rgb.height)
        if x2 > x1 and y2 > y1:
            rgb = rgb.crop((x1, y1, x2, y2))
    return rgb


def image_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as an image, or None. Cheap (headers and the file's tail,
    ~0.3 ms), so a whole dataset is checked when it is indexed: an empty or non-image file,
    a damaged header, a JPEG cut short (no end-of-image marker: an interrupted download),
    or more pixels than ``Image.MAX_IMAGE_PIXELS``."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height, kind = image.width, image.height, image.format
                image.verify()  # structure checks (PNG chunk CRCs, ...)
        limit = Image.MAX_IMAGE_PIXELS  # None: the user lifted the limit
        if limit is not None and width * height > limit:
            return f"{width}x{height} pixels: over the {limit:,}-pixel limit"
        if kind == "JPEG":
            with path.open("rb") as f:
                f.seek(max(size - 1024, 0))
                if _JPEG_EOI not in f.read():
                    return "truncated JPEG (no end-of-image marker)"
    except Image.DecompressionBombError:
        return f"over the {Image.MAX_IMAGE_PIXELS:,}-pixel limit (a decompression bomb)"
    except UnidentifiedImageError:
        return "cannot identify image file"
    except (OSError, SyntaxError, ValueError) as error:
        return "truncated file" if "runcated" in str(error) else f"damaged ({error})"
    return None
