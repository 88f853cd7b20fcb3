"""What the toy landmark set is made of: the photographs bundled inside scikit-image (read
from its package folder, never through its downloader), procedural scenes when more
landmarks are asked for, and the shared pool of backgrounds and distractor content."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage
from PIL import Image, ImageDraw

SOURCE_SIDE = 384  # landmarks are stored at this longer side: detail to spare at 320x240
PKG_DATA = Path(skimage.__file__).parent / "data"

# (landmark name, file in skimage/data). Photographs with structure a CNN can latch on to.
LANDMARK_PHOTOS = (
    ("astronaut", "astronaut.png"),
    ("cameraman", "camera.png"),
    ("chelsea_cat", "chelsea.png"),
    ("coffee_cup", "coffee.png"),
    ("coins", "coins.png"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
    ("immunohistochemistry", "ihc.png"),
    ("motorcycle", "motorcycle_left.png"),
    ("retina", "retina.jpg"),
    ("rocket", "rocket.jpg"),
    ("moon", "moon.png"),
)
# Content for distractors and backgrounds: never a landmark (motorcycle_right.png, the
# other stereo view of "motorcycle", must stay out of here).
OTHER_PHOTOS = (
    "page.png",
    "text.png",
    "horse.png",
    "logo.png",
    "color.png",
    "phantom.png",
    "cell.png",
    "clock_motion.png",
    "chessboard_RGB.png",
    "microaneurysms.png",
)
TEXTURES = ("brick.png", "grass.png", "gravel.png")


def load_bundled(filename: str) -> Image.Image | None:
    """An image from scikit-image's package folder, or None when this install lacks it.

    Read directly rather than through ``skimage.data.<name>()``: those fall back to a
    network download (pooch) for files that are not bundled, which must never happen here.
    """
    path = PKG_DATA / filename
    if not path.is_file():
        return None
    with Image.open(path) as im:
        im.load()
    if im.mode in ("RGBA", "LA", "P"):  # logo / horse: flatten transparency onto white
        im = im.convert("RGBA")
        flat = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(flat, im)
    return resized_to_side(im.convert("RGB"), SOURCE_SIDE)


def resized_to_side(im: Image.Image, side: int) -> Image.Image:
    scale = side / max(im.size)
    return im.resize(
        (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS
    )


def procedural_scene(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """An abstract 'scene': a smooth colour field with random shapes drawn over it."""
    coarse = rng.integers(0, 256, (rng.integers(2, 5), rng.integers(2, 5), 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    w, h = size
    for _ in range(rng.integers(6, 16)):
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * w, y0 + rng.uniform(0.05, 0.5) * h
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 4)
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 2:
            draw.polygon([tuple(p) for p in rng.uniform(0, 1, (3, 2)) * (w, h)], fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 10)))
    return im


@dataclass(frozen=True)
class Library:
    landmarks: tuple[tuple[str, Image.Image], ...]
    others: tuple[Image.Image, ...]
    textures: tuple[Image.Image, ...]


@functools.lru_cache(maxsize=4)
def library(n_landmarks: int, seed: int) -> Library:
    """Landmark images (bundled photos first, procedural scenes after) and content pools.

    Cached per process: worker processes build it once, not once per image.
    """
    photos = [(n, im) for n, f in LANDMARK_PHOTOS if (im := load_bundled(f)) is not None]
    landmarks = photos[:n_landmarks]
    for k in range(len(landmarks), n_landmarks):  # procedural scenes, fixed per (seed, k)
        rng = np.random.default_rng([seed, 1, k])
        landmarks.append((f"scene_{k + 1:02d}", procedural_scene(rng, (SOURCE_SIDE, 288))))
    others = tuple(im for f in OTHER_PHOTOS if (im := load_bundled(f)) is not None)
    textures = tuple(im for f in TEXTURES if (im := load_bundled(f)) is not None)
    return Library(tuple(landmarks), others, textures)


def random_crop(rng: np.random.Generator, im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A random window of ``im`` at a random zoom, resized to ``size``."""
    zoom = rng.uniform(1.0, 2.5) * max(size[0] / im.width, size[1] / im.height)
    cw, ch = min(im.width, size[0] / zoom), min(im.height, size[1] / zoom)
    x, y = rng.uniform(0, im.width - cw), rng.uniform(0, im.height - ch)
    return im.resize(size, Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))


def tint(rng: np.random.Generator, im: Image.Image) -> Image.Image:
    """Colourise a (possibly grey) texture so backgrounds are not all grey."""
    grey = np.asarray(im.convert("L"), np.float32)[..., None] / 255
    dark, light = rng.uniform(0, 160, 3), rng.uniform(96, 256, 3)
    return Image.fromarray((dark + grey * (light - dark)).clip(0, 255).astype(np.uint8))


def background(rng: np.random.Generator, lib: Library, size: tuple[int, int]) -> Image.Image:
    """One draw from the background pool shared by landmark views and distractors."""
    kind = rng.integers(0, 3)
    if kind == 0 and lib.textures:
        return tint(rng, random_crop(rng, lib.textures[rng.integers(len(lib.textures))], size))
    if kind == 1 and lib.others:
        return random_crop(rng, lib.others[rng.integers(len(lib.others))], size)
    return procedural_scene(rng, size)


def distractor_content(rng: np.random.Generator, lib: Library) -> Image.Image:
    """Something that is no landmark: another photo, a texture, an abstract scene."""
    kind = rng.integers(0, 3)
    if kind == 0 and lib.others:
        return lib.others[rng.integers(len(lib.others))]
    if kind == 1 and lib.textures:
        side = int(rng.integers(128, 320))
        texture = lib.textures[rng.integers(len(lib.textures))]
        return tint(rng, random_crop(rng, texture, (side, side * 3 // 4)))
    return procedural_scene(rng, (SOURCE_SIDE, int(rng.integers(200, 384))))
