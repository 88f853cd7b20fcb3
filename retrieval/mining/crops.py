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
small images. The array is built under a hidden partial name that records, every few
seconds, which rows are decoded (:mod:`.crop_partial`): a killed build is resumed by the
next one with the same key, which decodes only the rest, then renames the array into place
after writing the sidecar (:mod:`retrieval.utils.atomic`), so the final names only ever
hold a complete cache; the temporaries a killed write leaves are deleted when the next build
starts (:func:`remove_stale_temporaries`). A cache that is damaged anyway (a truncated array, a
sidecar that does not parse or does not describe this set) is reported once, naming the
file, and decoded again.

Building decodes in ``num_workers`` threads (PIL releases the GIL while decoding and
resizing) behind a progress bar. Memory: crops are written and read through the memory
map, so their pages are the kernel's file cache -- written back and evictable, not the
miner's own memory -- and the miner reads one block of candidates at a time. Full Oxford's
grayscale cache is 5063 x 500 x 500 = 1.2 GB, its colour one 3.8 GB, within the 4 GB
budget even if every page stays resident (peak measured by ``bench/ssim_mining.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from retrieval.data.image_io import load_rgb
from retrieval.mining.crop_partial import SAVE_ROWS, SAVE_SECONDS, PartialCrops, open_partial, partial_paths
from retrieval.utils.atomic import remove_stale, write_atomic

log = logging.getLogger(__name__)

CROP_VERSION = 1  # bump when preprocessing changes: it is part of the cache key
SMALL_POLICIES = ("upscale", "exclude")
LISTED = 10  # names a message lists before "and N more"


def name_some(names: Iterable[object], limit: int = LISTED) -> str:
    """``a, b, c`` -- the first ``limit`` names, then ``and N more``: a message stays one
    readable line whether 3 files or 30,000 are concerned."""
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


# the atomic writers' temporaries (.NAME.tmp-PID-HEX[.suffix], .NAME.old-PID-HEX) and those of
# earlier versions of this module (.NAME.tmpPID[.npy], written by np.save / write_text)
_ATOMIC_TEMPORARY = re.compile(r"\.(?P<target>.+?)\.(?:tmp|old)-\d+-[0-9a-f]+(?:\.[^.]+)?")
_LEGACY_TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp(?P<pid>\d+)(?:\.npy)?")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process, or we cannot tell: keep its files
        return False
    return False


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries in ``folder`` that a killed run left (their pid is dead):
    those of :mod:`retrieval.utils.atomic` (through its :func:`remove_stale`) and those of
    earlier versions of the miner. Files of live processes (a concurrent run) are kept."""
    try:
        names = [entry.name for entry in Path(folder).iterdir() if entry.name.startswith(".")]
    except OSError:
        return []
    removed: list[Path] = []
    for target in sorted({m["target"] for n in names if (m := _ATOMIC_TEMPORARY.fullmatch(n))}):
        removed += remove_stale(Path(folder) / target)
    for name in names:
        match = _LEGACY_TEMPORARY.fullmatch(name)
        if match is not None and int(match["pid"]) != os.getpid() and _process_gone(int(match["pid"])):
            (Path(folder) / name).unlink(missing_ok=True)
            removed.append(Path(folder) / name)
    return removed


def report_removed(removed: list[Path]) -> None:
    """Log, in one line, the temporaries :func:`remove_stale_temporaries` deleted."""
    if removed:
        log.info(
            "removed %d temporary file(s) left by killed runs: %s",
            len(removed),
            name_some(p.name for p in removed),
        )


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

    def report(self, paths: Sequence[str | Path], reasons: dict[int, str] | None = None) -> None:
        """Log what was skipped or changed, naming the first files (one line each)."""
        if self.failed:
            reasons = reasons or {}
            log.warning(
                "%d unreadable image(s) skipped (never candidates): %s",
                len(self.failed),
                name_some(f"{paths[i]}{f' ({reasons[i]})' if i in reasons else ''}" for i in self.failed),
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
                name_some(paths[i] for i in self.small),
            )


def _reason(error: Exception, path: str | Path, limit: int = 80) -> str:
    """``Type: message`` in a few words: without the path (decoders repeat it), cut at ``limit``."""
    message = str(error).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
    message = message if len(message) <= limit else message[: limit - 3] + "..."
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _decode_missing(
    image_paths: Sequence[str | Path],
    partial: PartialCrops,
    spec: CropSpec,
    num_workers: int,
    show_progress: bool,
) -> int:
    """Decode the rows ``partial`` has not done into its memory map, recording them every
    few seconds (:meth:`PartialCrops.save`) and on the way out; returns how many."""
    todo = np.flatnonzero(~partial.done).tolist()

    def decode(index: int) -> tuple[int, bool, str | None]:  # in a thread: no shared state
        try:
            partial.crops[index], was_small = load_crop(image_paths[index], spec)
            return index, was_small, None
        except SmallImageError:
            return index, True, None
        except Exception as error:  # noqa: BLE001 -- any decoder failure: skip the image, report it, go on
            return index, False, _reason(error, image_paths[index])

    pool = ThreadPoolExecutor(max(1, num_workers))
    unsaved, saved_at = 0, time.monotonic()
    try:
        with Progress(disable=not show_progress) as progress:
            task = progress.add_task("decoding crops", total=len(image_paths), completed=partial.resumed)
            for result in pool.map(decode, todo):
                partial.mark(*result)
                progress.advance(task)
                unsaved += 1
                if unsaved >= SAVE_ROWS or time.monotonic() - saved_at >= SAVE_SECONDS:
                    partial.save()
                    unsaved, saved_at = 0, time.monotonic()
    finally:  # on Ctrl-C, do not decode the images not started yet; keep those decoded
        pool.shutdown(wait=True, cancel_futures=True)
        partial.save()
    return len(todo)


def _damage(array_path: Path, meta_path: Path, count: int, spec: CropSpec) -> str | None:
    """Why the cache at ``array_path``/``meta_path`` cannot be this set's crops, or None."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"{meta_path.name} does not parse ({type(error).__name__}: {error})"
    if not isinstance(meta, dict):
        meta = {}
    lists = meta.get("failed"), meta.get("small")
    if (
        meta.get("count") != count
        or meta.get("spec") != asdict(spec)
        or not all(isinstance(v, list) and all(type(i) is int and 0 <= i < count for i in v) for v in lists)
    ):
        return f"{meta_path.name} does not describe these {count} images"
    expected = (count, *spec.shape)
    try:
        crops = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:  # e.g. "mmap length is greater than file size"
        return f"{array_path.name} does not load ({type(error).__name__}: {error})"
    if crops.shape != expected or crops.dtype != np.uint8:
        return f"{array_path.name} holds {crops.dtype}{list(crops.shape)}, not uint8{list(expected)}"
    if array_path.stat().st_size < crops.offset + crops.nbytes:
        return f"{array_path.name} is truncated"
    return None


def build_crop_cache(
    image_paths: Sequence[str | Path],
    cache_dir: str | Path,
    spec: CropSpec = CropSpec(),
    num_workers: int = 2,
    show_progress: bool = True,
) -> CropCache:
    """Decode every image once into ``cache_dir/crops-<key>.npy`` (or reuse it) and return it.

    Decoding runs in a thread pool (PIL releases the GIL while decoding and resizing).
    Unreadable images are logged (one line, the first names) and listed in ``failed``,
    never fatal. Temporaries of killed builds are removed first; a damaged cache is
    reported and decoded again.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    report_removed(remove_stale_temporaries(cache_dir))
    key = digest({"version": CROP_VERSION, "spec": asdict(spec), "files": fingerprint(image_paths)})
    array_path, meta_path = (
        cache_dir / f"crops-{key[:24]}.npy",
        cache_dir / f"crops-{key[:24]}.json",
    )
    reasons: dict[int, str] = {}

    def complete() -> bool:  # the sidecar, written last, marks completion
        return meta_path.exists() and array_path.exists()

    done = complete()
    if done and (damage := _damage(array_path, meta_path, len(image_paths), spec)) is not None:
        log.warning("crop cache %s is damaged (%s): decoding the crops again", array_path, damage)
        meta_path.unlink(missing_ok=True)
        array_path.unlink(missing_ok=True)  # the new sidecar, written first, must not pair with it
        done = False
    if done and not partial_paths(cache_dir, key[:24])[0].exists():  # a kill right after the rename
        partial_paths(cache_dir, key[:24])[1].unlink(missing_ok=True)
    if not done:
        header = {"key": key, "count": len(image_paths), "shape": list(spec.shape)}
        shape = (len(image_paths), *spec.shape)
        with open_partial(cache_dir, key[:24], header, shape, complete) as partial:
            if partial is not None:  # None: a concurrent build we waited for completed it
                decoded = _decode_missing(image_paths, partial, spec, num_workers, show_progress)
                log.info(
                    "crop cache: %d decoded, %d resumed from an interrupted build", decoded, partial.resumed
                )
                reasons = dict(sorted(partial.failed.items()))
                meta = {"spec": asdict(spec), "failed": list(reasons), "small": sorted(partial.small)}
                # the sidecar first: it completes the cache only once the array is renamed
                write_atomic(meta_path, json.dumps({**meta, "count": len(image_paths)}, indent=1))
                partial.finish(array_path)
    meta = json.loads(meta_path.read_text())
    cache = CropCache(np.load(array_path, mmap_mode="r"), spec, meta["failed"], meta["small"], array_path)
    cache.report(image_paths, reasons)
    return cache
