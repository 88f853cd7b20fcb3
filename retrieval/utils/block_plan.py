"""Rows kept on disk in fixed-size blocks of consecutive rows, one file a block, each
written atomically as it completes: a killed run keeps every finished block and resumes at
the first missing one.

Block ``i`` holds rows ``[i * size, (i + 1) * size)`` (the last one is short when ``size``
does not divide ``count``) in the file ``<folder>/<block_name.format(i)>``. What a block
file holds is the subclass's business (distractor chunks, database shards); this type only
knows which rows go where, which blocks are there and how a block reaches its name.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from retrieval.utils.atomic import atomic_file, remove_stale_in

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockPlan:
    """``count`` rows in blocks of ``size``, stored as files in ``folder``."""

    folder: Path
    count: int
    size: int

    # a class attribute, not a field: the file names of a kind of block never change
    # (existing caches and databases are found by them)
    block_name: ClassVar[str] = "block-{:06d}.npy"

    def __post_init__(self) -> None:
        if self.size < 1 or self.count < 0:
            raise ValueError(f"{self.count} rows in blocks of {self.size}: a block holds at least one row")

    @property
    def n_blocks(self) -> int:
        return -(-self.count // self.size)

    def rows(self, block: int) -> range:
        return range(block * self.size, min((block + 1) * self.size, self.count))

    def path(self, block: int) -> Path:
        return self.folder / self.block_name.format(block)

    def prepare(self) -> list[int]:
        """Create the folder, delete what killed processes left half-written there, return
        the blocks still to write (in order).

        Every dead process's temporary in the folder goes, not only blocks': the folder is
        the plan's alone, and a file built from the blocks (a merge) leaves the same kind."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for removed in remove_stale_in(self.folder):
            log.info("removed a temporary of a killed run: %s", removed.name)
        return [b for b in range(self.n_blocks) if not self.path(b).is_file()]

    def staged(self, block: int) -> AbstractContextManager[Path]:
        """A temporary path to write block ``block`` to; it becomes the block's file when the
        ``with`` block ends without error (and is deleted otherwise)."""
        return atomic_file(self.path(block))
