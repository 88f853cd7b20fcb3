"""The crop cache of SSIM mining: every image's centre crop (:mod:`.crop_spec`), decoded
once into a memory-mapped file.

The cache is one ``np.lib.format.open_memmap`` file (N, c, c) or (N, c, c, 3) uint8 per set
of (files, sizes, mtimes, crop parameters) plus a JSON sidecar naming unreadable and
small images. The array is built under a hidden partial name that records, every few
seconds, which rows are decoded (:mod:`.crop_partial`): a killed build is resumed by the
next one with the same key, which decodes only the rest, then renames the array into place
after writing the sidecar (:mod:`retrieval.utils.atomic`), so the final names only ever
hold a complete cache; the temporaries a killed write leaves are deleted when the next build
starts (:func:`~retrieval.mining.stale_temporaries.remove_stale_temporaries`). A cache that
is damaged anyway (a truncated array, a sidecar that does not parse or does not describe
this set) is reported once, naming the file, and decoded again.

Building decodes in ``num_workers`` threads (PIL releases the GIL while decoding and
resizing) behind a progress bar. Memory: crops are written and read through the memory
map, so their pages are the kernel's file cache -- written back and evictable, not the
miner's own memory -- and the miner reads one block of candidates at a time. Full Oxford's
grayscale cache is 5063 x 500 x 500 = 1.2 GB, its colour one 3.8 GB, within the 4 GB
budget even if every page stays resident (peak measured by ``bench/ssim_mining.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import Progress

from retrieval.mining.cache_keys import digest, fingerprint
from retrieval.mining.crop_partial import SAVE_ROWS, SAVE_SECONDS, PartialCrops, open_partial, partial_paths
from retrieval.mining.crop_spec import CropSpec, SmallImageError, load_crop
from retrieval.mining.name_lists import name_some
from retrieval.mining.stale_temporaries import remove_stale_temporaries, report_removed
from retrieval.utils.atomic import write_atomic

log = logging.getLogger(__name__)

CROP_VERSION = 1  # bump when preprocessing changes: it is part of the cache key


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
    spec: CropSpec = CropSpec(),  # noqa: B008 -- a frozen dataclass: one shared default is safe
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
