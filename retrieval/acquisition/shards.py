"""Sharded image sets (GLDv2's 500 tars, revisitop's 100 archives): choosing some shards,
reading a shard's published md5, recording what a shard unpacked.

``retrieval-download dataset=gldv2 shards=2`` fetches the metadata and the first two
shards (with their md5 lists), enough to try a recipe; ``shards=[0,7]`` picks by number
(as in the file names: ``images_007.tar``, ``revisitop1m.7.tar.gz``). A later run with more
shards adds to what is there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from retrieval.acquisition.datasets import DatasetSpec, RemoteFile
from retrieval.data.shard_lists import shard_list_path
from retrieval.utils.atomic import write_atomic
from retrieval.utils.errors import DatasetError

_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def select_shards(spec: DatasetSpec, shards: int | Sequence[int] | None) -> tuple[RemoteFile, ...]:
    """The files of ``spec`` to fetch: every unsharded file plus the chosen shards."""
    numbers = spec.shard_numbers
    if shards is None:
        return spec.files
    if not numbers:
        raise DatasetError(f"shards={shards} was given, but {spec.name} is not sharded; leave shards out")
    if isinstance(shards, int | str):
        count = int(shards)
        if not 1 <= count <= len(numbers):
            raise DatasetError(
                f"shards={shards}: {spec.name} has {len(numbers)} shards; give 1..{len(numbers)}"
            )
        chosen = set(numbers[:count])
    else:
        chosen = {int(k) for k in shards}
        unknown = sorted(chosen - set(numbers))
        if unknown or not chosen:
            raise DatasetError(
                f"shards={list(shards)}: {spec.name}'s shards are numbered "
                f"{numbers[0]}..{numbers[-1]}; {unknown or 'none'} chosen that it does not have"
            )
    return tuple(f for f in spec.files if f.shard is None or f.shard in chosen)


def published_md5(listing: Path) -> str:
    """The md5 in an ``md5sum``-format file (``<md5>  <file name>``: GLDv2's md5.images_NNN.txt)."""
    try:
        first = listing.read_text().split()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read the md5 list {listing}: {error}; run the download again") from None
    if not first or not _MD5.fullmatch(first[0]):
        listing.unlink(missing_ok=True)  # fetched again on the next run
        raise DatasetError(
            f"{listing} holds no md5 sum (expected '<32 hex digits>  <file name>', got "
            f"{' '.join(first[:2])!r}); it was deleted, run the download again"
        )
    return first[0].lower()


def write_shard_list(dataset_folder: Path, archive_name: str, files: list[str]) -> None:
    """Record the files one shard unpacked (see :mod:`retrieval.data.shard_lists`)."""
    target = shard_list_path(dataset_folder, archive_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, "".join(f"{name}\n" for name in files))
