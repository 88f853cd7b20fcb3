"""Decoding images into RGB, the one way every part of the framework reads pixels."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from retrieval.datamodules.ground_truth import BBox

# Refuse decompression bombs instead of letting one image take the machine's memory:
# 40k x 40k pixels is far beyond any retrieval benchmark image (Oxford's are 1024 px).
Image.MAX_IMAGE_PIXELS = 40_000 * 40_000 // 4


def load_rgb(path: str | Path, bbox: BBox | None = None) -> Image.Image:
    """Open ``path`` as 8-bit RGB (grayscale, palette, CMYK and alpha images included).

    With ``bbox`` (x1, y1, x2, y2 in pixels) the image is cropped to it first, clipped to
    the image bounds; a box that leaves nothing keeps the whole image.
    """
    with Image.open(path) as image:
        image.draft("RGB", image.size)  # no-op for non-JPEG; keeps full resolution for JPEG
        rgb = image.convert("RGB")
    if bbox is not None:
        x1, y1, x2, y2 = (round(v) for v in bbox)
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = min(x2, rgb.width), min(y2, rgb.height)
        if x2 > x1 and y2 > y1:
            rgb = rgb.crop((x1, y1, x2, y2))
    return rgb
