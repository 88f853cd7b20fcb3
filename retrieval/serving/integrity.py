"""The load-time integrity checks of a database directory: the manifest (each file's
sha256, and per shard of rows the sha256 of its vectors) and the vectors themselves
(finite unit rows). Errors are :class:`~retrieval.serving.database_errors.DatabaseError`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from retrieval.models.checkpoints import file_sha256
from retrieval.serving.database_errors import BUILD_HINT, DatabaseError

EMBEDDINGS, META = "embeddings.npy", "meta.json"


def rows_sha256(embeddings: np.ndarray, first: int, count: int) -> str:
    return hashlib.sha256(np.ascontiguousarray(embeddings[first : first + count]).tobytes()).hexdigest()


def check_manifest(meta: dict, directory: Path) -> None:
    """Each file's sha256 against the one recorded at build time (databases built before the
    manifest have none: nothing to compare)."""
    for name, recorded in (meta.get("files") or {}).items():
        path = directory / name
        if not path.is_file():
            raise DatabaseError(f"database {directory} is incomplete: {name} is missing; rebuild it")
        if file_sha256(path) != recorded:
            raise DatabaseError(
                f"database {directory}: {name} is not the file it was built with (sha256 differs "
                f"from {META}: modified, re-ordered or damaged{_damaged_rows(meta, path)}); "
                f"rebuild it with {BUILD_HINT}"
            )


def _damaged_rows(meta: dict, path: Path) -> str:
    """Which recorded shards of ``embeddings.npy`` changed (only looked for once the file's
    sha256 differs: a clean load hashes the file once)."""
    if path.name != EMBEDDINGS or not meta.get("shards"):
        return ""
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
        bad = [s for s in meta["shards"] if rows_sha256(rows, s["first"], s["count"]) != s.get("sha256")]
    except (ValueError, OSError, KeyError, TypeError):
        return ""
    if not bad:
        return ""
    spans = ", ".join(f"rows {s['first']}-{s['first'] + s['count'] - 1}" for s in bad[:5])
    return f"; changed: {spans}"


# stored vectors are unit rows; float16 storage moves a norm by ~1e-3
_NORM_TOLERANCE = 1e-2


def check_vectors(embeddings: np.ndarray, directory: Path) -> None:
    """Finite unit rows, or an error naming the first bad row: NaN scores would otherwise
    come back from every query."""
    rows = np.asarray(embeddings, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise DatabaseError(
            f"database {directory}: {bad.size} row(s) of {EMBEDDINGS} are not finite (first: row "
            f"{bad[0]}); rebuild it with {BUILD_HINT}"
        )
    norms = np.linalg.norm(rows, axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > _NORM_TOLERANCE)
    if off.size:
        raise DatabaseError(
            f"database {directory}: {off.size} row(s) of {EMBEDDINGS} are not unit vectors (row "
            f"{off[0]} has norm {norms[off[0]]:.4f}); rebuild it with {BUILD_HINT}"
        )
