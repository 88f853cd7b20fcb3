"""The shards of a database build: fixed-size blocks of consecutive images whose descriptors
are written one file each, atomically, so that a killed build keeps every finished block.

A build's shards live in ``<work>/<key>/`` where ``key`` hashes everything the vectors
depend on (checkpoint sha256, model config, image size and normalisation, scales, the
ordered image list, the shard size): a shard is reused only by a build that would compute
exactly the same vectors. Shard ``i`` holds the images ``[i * size, (i + 1) * size)`` of the
list, as ``shard-<i>.npz`` with ``indices`` (int64), ``vectors`` (float32, unit rows) and
``run`` (the token of the run that embedded it: a resumed build can say what it recomputed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.utils.block_plan import BlockPlan
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)


class ShardError(UserFacingError):
    """The shards of a build do not add up to its image list (a bug or a tampered folder)."""


def shard_key(settings: dict, paths: Sequence[str], shard_size: int) -> str:
    """sha256 over the embedding settings, the ordered image list and the shard size."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(str(shard_size).encode())
    for path in paths:
        digest.update(path.encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardPlan(BlockPlan):
    """Which images go in which shard file, for ``count`` images in blocks of ``size``
    (``folder`` is ``<work>/<key>``)."""

    block_name = "shard-{:06d}.npz"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise UserFacingError(f"embed.shard_size={self.size}: a shard holds at least one image")
        super().__post_init__()

    @classmethod
    def create(cls, work: Path, settings: dict, paths: Sequence[str], size: int) -> ShardPlan:
        """The plan of this build under ``work``; other keys' folders there (older settings,
        another checkpoint or image list) are deleted: they can never be reused."""
        key = shard_key(settings, paths, size)
        plan = cls(Path(work) / key[:32], len(paths), size)
        if Path(work).is_dir():
            for other in Path(work).iterdir():
                if other.is_dir() and other.name != plan.folder.name:
                    log.info("removing the shards of another build: %s", other)
                    shutil.rmtree(other, ignore_errors=True)
        return plan

    def write(self, shard: int, indices: np.ndarray, vectors: np.ndarray, run: str) -> Path:
        order = np.argsort(indices, kind="stable")
        indices, vectors = indices[order], vectors[order]
        if not np.array_equal(indices, np.asarray(self.rows(shard))):
            raise ShardError(f"shard {shard} got images {indices.tolist()[:5]}..., not its block")
        with self.staged(shard) as staged:
            np.savez(staged, indices=indices.astype(np.int64), vectors=vectors.astype(np.float32), run=run)
        return self.path(shard)

    def read(self, shard: int) -> tuple[np.ndarray, np.ndarray, str]:
        with np.load(self.path(shard), allow_pickle=False) as stored:
            return stored["indices"], stored["vectors"], str(stored["run"])

    def merge(self) -> tuple[np.ndarray, dict[str, int]]:
        """All vectors in image order, and how many images each run embedded; every image
        must be present exactly once."""
        seen = np.zeros(self.count, dtype=np.int64)
        out: np.ndarray | None = None
        runs: dict[str, int] = {}
        for shard in range(self.n_blocks):
            if not self.path(shard).is_file():
                raise ShardError(f"shard {shard} of {self.folder} is missing; run the build again")
            indices, vectors, run = self.read(shard)
            if out is None:
                out = np.empty((self.count, vectors.shape[1]), dtype=np.float32)
            if indices.min(initial=0) < 0 or indices.max(initial=0) >= self.count:
                raise ShardError(f"shard {shard} of {self.folder} holds images outside the list")
            np.add.at(seen, indices, 1)
            out[indices] = vectors
            runs[run] = runs.get(run, 0) + len(indices)
        missing, twice = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
        if missing.size or twice.size or out is None:
            raise ShardError(
                f"the shards of {self.folder} hold {missing.size} image(s) never and "
                f"{twice.size} more than once; delete the folder and build again"
            )
        return out, runs

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()  # the work folder, when no other build uses it
        except OSError:
            pass
