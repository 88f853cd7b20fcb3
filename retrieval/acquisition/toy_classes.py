"""A small class-labelled image set, generated: one class per photograph that scikit-image
ships (read from its package folder, never downloaded), each image a random view of it.

    <root>/<class>/<class>_<i>.png     the class-folder layout (dataset=folder)
    <root>/labels.csv                  path,label,split for the same images (dataset=csv)

A view is a random crop (a third to two thirds of the photo's shorter side, so views of one
class often show different parts of it), rotated, maybe mirrored, re-lit and re-coloured,
and sometimes grey. Deterministic from the seed; 10 classes × 20 images take about two seconds.

    retrieval-download dataset=toy_classes          # into data/toy_classes
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from retrieval.acquisition.toy_sources import PKG_DATA
from retrieval.data.class_formats import read_class_folders
from retrieval.data.class_ground_truth import ClassGroundTruth

# photographs with texture and colour enough to tell apart, in the order classes are taken
PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
    "moon.png",
    "horse.png",
    "page.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "clock_motion.png",
    "microaneurysms.png",
    "color.png",
    "text.png",
)


def _view(rng: np.random.Generator, photo: Image.Image, size: int) -> Image.Image:
    side = min(photo.size)
    crop = int(side * rng.uniform(1 / 3, 2 / 3))
    x, y = (int(rng.integers(0, dim - crop + 1)) for dim in photo.size)
    view = photo.crop((x, y, x + crop, y + crop)).rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.6, 1.4))
    view = ImageEnhance.Contrast(view).enhance(rng.uniform(0.6, 1.4))
    view = ImageEnhance.Color(view).enhance(rng.uniform(0.5, 1.5))
    if rng.random() < 0.15:
        view = ImageOps.grayscale(view).convert("RGB")
    return view.resize((size, size), Image.BILINEAR)


def write_toy_classes(
    root: str | Path,
    n_classes: int = 10,
    per_class: int = 20,
    size: int = 64,
    val_fraction: float = 0.25,
    seed: int = 0,
) -> Path:
    """Write the set under ``root`` (existing files of the same names are replaced)."""
    if not 2 <= n_classes <= len(PHOTOS):
        raise ValueError(f"n_classes must be in 2..{len(PHOTOS)} (one per bundled photograph)")
    if per_class < 2:
        raise ValueError("per_class must be at least 2")
    root = Path(root)
    rows = []
    for c, filename in enumerate(PHOTOS[:n_classes]):
        label = Path(filename).stem
        (root / label).mkdir(parents=True, exist_ok=True)
        with Image.open(PKG_DATA / filename) as photo:
            photo = photo.convert("RGB")
        n_val = round(val_fraction * per_class)
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            path = Path(label) / f"{label}_{i:03d}.png"
            _view(rng, photo, size).save(root / path)
            rows.append((path.as_posix(), label, "val" if i >= per_class - n_val else "train"))
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    return root


def read_toy_classes(root: str | Path, name: str = "toy_classes", **params) -> ClassGroundTruth:
    """``dataset=toy_classes``: the generated set under ``root`` (written on first use, or
    again when ``labels.csv`` is missing), read by the folder reader as any user's set."""
    if not (Path(root) / "labels.csv").is_file():
        write_toy_classes(root, **params)
    return read_class_folders(root, name)
