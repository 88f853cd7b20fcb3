"""Small drawing helpers shared by the retrieval grid and the embedding plot (PIL only:
matplotlib is not a dependency of the project)."""

from __future__ import annotations

import functools

from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
TEXT: RGB = (30, 30, 30)

# Okabe–Ito and Tableau colours: distinguishable, also for most colour-blind readers
PALETTE: tuple[RGB, ...] = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (148, 103, 189),
    (140, 86, 75),
    (23, 190, 207),
    (188, 189, 34),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (127, 127, 127),
    (174, 199, 232),
    (255, 152, 150),
    (197, 176, 213),
    (152, 223, 138),
)


@functools.lru_cache(maxsize=8)
def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font (no system fonts needed)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def text_width(draw: ImageDraw.ImageDraw, text: str, size: int) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font(size))
    return int(right - left)


def fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, size: int) -> str:
    """``text`` shortened with an ellipsis so that it fits ``width`` pixels."""
    if text_width(draw, text, size) <= width:
        return text
    while text and text_width(draw, text + "…", size) > width:
        text = text[:-1]
    return text + "…"


def blank(width: int, height: int, colour: RGB = WHITE) -> Image.Image:
    return Image.new("RGB", (width, height), colour)
