"""Centre crops for SSIM mining, decoded once into a memory-mapped cache.

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

The cache is one ``np.lib.format.open_memmap`` file (N, c, c) or (N, c, c, 3) uint8 per set
of (files, sizes, mtimes, crop parameters) plus a JSON sidecar naming unreadable and
small images. Both are written to temporary names and renamed into place, sidecar last
(:mod:`retrieval.utils.atomic`), so a killed build leaves no half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from retrieval.data.image_io import load_rgb
from retrieval.utils.atomic import atomic_file, write_atomic

log = logging.getLogger(__name__)

CROP_VERSION = 1  # bump when preprocessing changes: it is part of the cache key
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


def fingerprint(paths: Sequence[str | Path]) -> list[list]:
    """(path, size, mtime in ns) per file -- what decides whether a cache is still valid."""
    rows = []
    for path in paths:
        try:
            stat = os.stat(path)
            rows.append([str(path), stat.st_size, stat.st_mtime_ns])
        except OSError:
            rows.append([str(path), None, None])
    return rows


def digest(payload: dict) -> str:
    """sha256 of a canonical JSON rendering."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class CropCache:
    """Crops of a list of images; rows of unusable images are zeros and must not be scored."""

    crops: np.ndarray  # read-only memmap (N, c, c[, 3]) uint8
    spec: CropSpec
    failed: list[int] = field(default_factory=list)  # unreadable files, skipped
    small: list[int] = field(default_factory=list)  # smaller than the crop (upscaled or excluded)
    path: Path | None = None

    @property
    def usable(self) -> np.ndarray:
        """Boolean mask of images that have a crop."""
        ok = np.ones(len(self.crops), dtype=bool)
        ok[self.failed] = False
        if self.spec.small_images == "exclude":
            ok[self.small] = False
        return ok

    def report(self, paths: Sequence[str | Path]) -> None:
        """Log what was skipped or changed, naming the files."""
        if self.failed:
            log.warning(
                "%d unreadable image(s) skipped (never candidates): %s",
                len(self.failed),
                ", ".join(str(paths[i]) for i in self.failed),
            )
        if self.small:
            action = (
                "excluded from candidates"
                if self.spec.small_images == "exclude"
                else f"upscaled to a shorter side of {self.spec.crop_size}"
            )
            log.warning(
                "%d image(s) smaller than the %d px crop %s: %s",
                len(self.small),
                self.spec.crop_size,
                action,
                ", ".join(str(paths[i]) for i in self.small),
            )


def _decode_all(
    image_paths: Sequence[str | Path],
    target: Path,
    spec: CropSpec,
    num_workers: int,
    show_progress: bool,
) -> tuple[list[int], list[int]]:
    """Decode every image into a new memory-mapped array at ``target``: (failed, small) indices."""
    crops = np.lib.format.open_memmap(
        target, mode="w+", dtype=np.uint8, shape=(len(image_paths), *spec.shape)
    )
    failed, small = [], []

    def decode(index: int) -> None:
        try:
            crops[index], was_small = load_crop(image_paths[index], spec)
            if was_small:
                small.append(index)
        except SmallImageError:
            small.append(index)
        except Exception as error:  # noqa: BLE001 -- any decoder failure: skip the image, name it, go on
            log.warning("cannot read %s (%s: %s); skipped", image_paths[index], type(error).__name__, error)
            failed.append(index)

    with (
        Progress(disable=not show_progress) as progress,
        ThreadPoolExecutor(max(1, num_workers)) as pool,
    ):
        task = progress.add_task("decoding crops", total=len(image_paths))
        for _ in pool.map(decode, range(len(image_paths))):
            progress.advance(task)
    crops.flush()
    return sorted(failed), sorted(small)


def build_crop_cache(
    image_paths: Sequence[str | Path],
    cache_dir: str | Path,
    spec: CropSpec = CropSpec(),
    num_workers: int = 2,
    show_progress: bool = True,
) -> CropCache:
    """Decode every image once into ``cache_dir/crops-<key>.npy`` (or reuse it) and return it.

    Decoding runs in a thread pool (PIL releases the GIL while decoding and resizing).
    Unreadable images are logged and listed in ``failed``, never fatal.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = digest({"version": CROP_VERSION, "spec": asdict(spec), "files": fingerprint(image_paths)})
    array_path, meta_path = (
        cache_dir / f"crops-{key[:24]}.npy",
        cache_dir / f"crops-{key[:24]}.json",
    )
    if not (meta_path.exists() and array_path.exists()):  # the sidecar, written last, marks completion
        with atomic_file(array_path) as tmp:
            failed, small = _decode_all(image_paths, tmp, spec, num_workers, show_progress)
        meta = {"spec": asdict(spec), "failed": failed, "small": small, "count": len(image_paths)}
        write_atomic(meta_path, json.dumps(meta, indent=1))
    meta = json.loads(meta_path.read_text())
    cache = CropCache(np.load(array_path, mmap_mode="r"), spec, meta["failed"], meta["small"], array_path)
    cache.report(image_paths)
    return cache
