"""What the downloader unpacked from a sharded image set (GLDv2's 500 tars, revisitop's 100).

Listing a folder of a million images takes minutes on a network file system, and a set
downloaded in part (``retrieval-download dataset=gldv2 shards=2``) holds only some of the
images its CSV names. So :mod:`retrieval.acquisition.download` writes, for every shard it
unpacks, ``<dataset>/shards/<archive stem>.txt``: the files it put there, one path a line,
relative to the folder they went to (``train/`` or ``jpg/``). The readers intersect their
image lists with these instead of looking at the folder. A set unpacked by hand has no
``shards/`` folder and is taken as complete (a sample of its images is checked instead).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SHARD_LISTS = "shards"


def shard_list_path(dataset_root: Path, archive_name: str) -> Path:
    """``images_000.tar`` -> ``<root>/shards/images_000.txt`` (``revisitop1m.1.tar.gz`` too)."""
    stem = archive_name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        stem = stem.removesuffix(suffix)
    return dataset_root / SHARD_LISTS / f"{stem}.txt"


def unpacked_files(dataset_root: Path) -> tuple[np.ndarray, int] | None:
    """(every path the shard lists name, as a sorted NumPy bytes array: 4 M paths are ~100 MB
    this way, not ~400 MB of Python strings; how many lists), or None without ``shards/``."""
    folder = dataset_root / SHARD_LISTS
    if not folder.is_dir():
        return None
    lists = sorted(folder.glob("*.txt"))
    names = [np.asarray([n for n in path.read_bytes().splitlines() if n], dtype=np.bytes_) for path in lists]
    listed = np.unique(np.concatenate(names)) if names else np.empty(0, dtype=np.bytes_)
    return listed, len(lists)


def keep_unpacked(
    dataset_root: Path, keys: np.ndarray, listed_keys, shards_total: int, name: str
) -> np.ndarray | None:
    """A mask of ``keys`` (bytes) found among the unpacked files, or None for a set without
    shard lists (taken as complete). ``listed_keys`` maps the listed paths onto the keys'
    spelling (GLDv2: the id of ``a/b/c/<id>.jpg``). A part download is said once."""
    unpacked = unpacked_files(dataset_root)
    if unpacked is None:
        return None
    listed, shards = unpacked
    keep = np.isin(keys, listed_keys(listed))
    if shards < shards_total or not keep.all():
        log.warning(
            "%s: %d of %d archives unpacked (%s): using the %d of %d listed images they hold",
            name,
            shards,
            shards_total,
            dataset_root / SHARD_LISTS,
            int(keep.sum()),
            len(keys),
        )
    return keep
