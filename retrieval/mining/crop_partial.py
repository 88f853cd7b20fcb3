"""The crop cache while it is being built, kept across kills so that a rerun resumes it.

A build writes into ``.crops-<key>.partial.npy`` (the memory map of every crop) and records,
every ``SAVE_ROWS`` crops or ``SAVE_SECONDS``, which rows are decoded in
``.crops-<key>.partial.json`` (with the unreadable and small images among them). The map is
flushed *before* the record is (atomically) replaced, so a row the record calls done is on
disk whenever the process is killed (SIGKILL, pre-emption, power loss): a rerun with the
same key decodes only the other rows, and a kill costs at most a few seconds of decoding.
The names hold no pid, so
:func:`~retrieval.mining.stale_temporaries.remove_stale_temporaries` leaves them alone; a
record that does not describe this build (another shape, a damaged file) is discarded with
one warning and the build starts over.

A build holds an exclusive ``flock`` on its partial array: a concurrent build of the same
key waits for it (then finds the finished cache) instead of writing the same file. Partials
of *other* keys (the images or the crop parameters changed) are deleted once untouched for
``PARTIAL_MAX_AGE_S`` and not locked: a user switching back to earlier parameters within a
day still resumes, a live build of another key (it rewrites its record every few seconds,
and holds its lock) is never touched, and an abandoned partial -- up to a few GB -- does not
stay on disk for ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from retrieval.utils.atomic import write_atomic

log = logging.getLogger(__name__)

SAVE_ROWS = 256  # crops decoded between two records (64 MB of 500 px grayscale crops)
SAVE_SECONDS = 2.0  # ... or seconds, whichever comes first: what a kill can cost
PARTIAL_MAX_AGE_S = 24 * 3600.0


def partial_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """The partial array and its record for the cache of ``key``."""
    return cache_dir / f".crops-{key}.partial.npy", cache_dir / f".crops-{key}.partial.json"


def rows_done(record: Path) -> int:
    """How many rows a partial's record marks as decoded (0 when there is none yet)."""
    try:
        return sum(stop - start for start, stop in json.loads(record.read_text())["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _runs(mask: np.ndarray) -> list[list[int]]:
    """[[start, stop), ...] of the True stretches of ``mask``: a short record for ~all rows."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return edges.reshape(-1, 2).tolist()


def _lock(fd: int) -> bool:
    """Take the exclusive lock of an open partial (waiting for a concurrent build); False
    where the filesystem has no locks (the build then runs unguarded, as it did before)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        log.info("another process is building this crop cache: waiting for it")
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_EX)
    return True


def remove_abandoned(cache_dir: Path, key: str, max_age_s: float = PARTIAL_MAX_AGE_S) -> list[Path]:
    """Delete the partials of other keys untouched for ``max_age_s`` and not being built."""
    removed: list[Path] = []
    now = time.time()
    for array in cache_dir.glob(".crops-*.partial.npy"):
        other = array.name[len(".crops-") : -len(".partial.npy")]
        files = [p for p in partial_paths(cache_dir, other) if p.exists()]
        try:
            if other == key or any(now - p.stat().st_mtime < max_age_s for p in files):
                continue
        except OSError:  # removed meanwhile by another build's cleanup
            continue
        with open(array, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # locked: a (suspended) build is still writing it
                continue
            for path in files:
                path.unlink(missing_ok=True)
        removed += files
    if removed:
        log.info(
            "removed %d abandoned partial crop cache file(s): %s", len(removed), [p.name for p in removed]
        )
    return removed


class PartialCrops:
    """An interrupted or new build of one crop cache (see the module's docstring)."""

    def __init__(self, array: Path, record: Path, header: dict, shape: tuple[int, ...]) -> None:
        self.array, self.record, self.header = array, record, header
        self.failed: dict[int, str] = {}
        self.small: set[int] = set()
        reason = self._resume(shape) if record.exists() else None
        if reason is not None:
            log.warning(
                "discarding the interrupted crop cache build %s (%s): decoding from the start", array, reason
            )
        if not record.exists() or reason is not None:
            record.unlink(missing_ok=True)  # first: a record must never describe a re-created array
            self.crops = np.lib.format.open_memmap(array, mode="w+", dtype=np.uint8, shape=shape)
            self.done = np.zeros(shape[0], dtype=bool)
            self.failed, self.small = {}, set()
        self.resumed = int(self.done.sum())

    def _resume(self, shape: tuple[int, ...]) -> str | None:
        """Reopen the array and the record; why they cannot be resumed, or None."""
        try:
            saved = json.loads(self.record.read_text())
            if {k: saved.get(k) for k in self.header} != self.header:
                return f"{self.record.name} describes another build"
            done = np.zeros(shape[0], dtype=bool)
            for start, stop in saved["done"]:
                done[int(start) : int(stop)] = True
            failed = {int(i): str(r) for i, r in saved["failed"].items()}
            small = {int(i) for i in saved["small"]}
            crops = np.load(self.array, mmap_mode="r+")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError) as error:
            return f"{type(error).__name__}: {error}"
        if crops.shape != shape or crops.dtype != np.uint8:
            return f"{self.array.name} holds {crops.dtype}{list(crops.shape)}, not uint8{list(shape)}"
        if not all(0 <= i < shape[0] for i in [*failed, *small]):
            return f"{self.record.name} names rows outside the {shape[0]} images"
        self.crops, self.done, self.failed, self.small = crops, done, failed, small
        return None

    def mark(self, index: int, small: bool, reason: str | None) -> None:
        """Row ``index`` is decoded (its crop written): recorded at the next :meth:`save`."""
        self.done[index] = True
        if small:
            self.small.add(index)
        if reason is not None:
            self.failed[index] = reason

    def save(self) -> None:
        """Flush the crops, then record the rows done: the record never runs ahead of the data."""
        self.crops.flush()
        failed = {str(i): self.failed[i] for i in sorted(self.failed)}
        record = {**self.header, "done": _runs(self.done), "failed": failed, "small": sorted(self.small)}
        write_atomic(self.record, json.dumps(record))

    def finish(self, target: Path) -> None:
        """Move the complete array to ``target`` (atomically) and drop the record."""
        self.crops.flush()
        _fsync_file(self.array)
        os.replace(self.array, target)
        self.record.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_partial(
    cache_dir: Path, key: str, header: dict, shape: tuple[int, ...], finished: Callable[[], bool]
) -> Iterator[PartialCrops | None]:
    """The partial build of ``key``, locked for the duration of the block; None when
    ``finished()`` says the cache is complete once the lock is held (a concurrent build,
    waited for, completed it)."""
    remove_abandoned(cache_dir, key)
    array, record = partial_paths(cache_dir, key)
    while True:
        fd = os.open(array, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _lock(fd)
        try:  # the build we waited for renamed its array into place: lock the new one
            same = os.stat(array).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same or not locked:
            break
        os.close(fd)
    try:
        if finished():
            if os.fstat(fd).st_size == 0:  # the empty file this call created
                array.unlink(missing_ok=True)
            yield None
        else:
            yield PartialCrops(array, record, header, shape)
    finally:
        os.close(fd)  # releases the lock
