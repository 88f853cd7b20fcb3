"""A loaded database against its network: re-embedding a seeded sample of its images must
give their stored vectors (the app at start-up; ``retrieval-query check=true``)."""

from __future__ import annotations

import logging

import numpy as np

from retrieval.evaluation.vectors import l2_normalize
from retrieval.serving.database_errors import BUILD_HINT, DatabaseError
from retrieval.serving.searcher import DatabaseSearcher
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)

# re-embedding a database image must reproduce its stored descriptor; float16 storage and
# bf16 autocast on GPU move the cosine by ~1e-3, another model moves it far more
SELF_CHECK_MIN_COSINE = 0.98
# rows re-embedded (self_check): seconds on a CPU, whatever the database's size
SELF_CHECK_ROWS = 8


def self_check_rows(count: int, sample: int = SELF_CHECK_ROWS, seed: int = 0) -> list[int]:
    """``sample`` rows spread over ``count``: one seeded draw in each of ``sample`` equal
    strata (first and last parts of a grown database included), row 0 always."""
    if count <= sample:
        return list(range(count))
    edges = np.linspace(0, count, sample + 1).astype(np.int64)
    rng = np.random.default_rng(seed)
    rows = [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    return sorted({0, *rows[1:]})


def self_check(searcher: DatabaseSearcher, sample: int = SELF_CHECK_ROWS) -> None:
    """Re-embed a seeded sample of database images (at most ``sample``, spread over the
    rows: start-up stays bounded whatever the size): each descriptor must be the stored one.

    The checkpoint's sha256 is checked on load; this also catches a database whose rows
    were swapped, re-ordered or edited (one row of a shard is enough), or a model config
    that no longer builds the same network.
    """
    artifact = searcher.artifact
    rows = self_check_rows(len(artifact.image_paths), sample)
    cosines = [_check_row(searcher, row) for row in rows]
    log.info("self-check: %d sampled rows re-embed with cosine >= %.4f", len(rows), min(cosines))


def _check_row(searcher: DatabaseSearcher, row: int) -> float:
    artifact = searcher.artifact
    path, stored = artifact.image_paths[row], artifact.embeddings[row : row + 1].astype(np.float32)
    try:
        vector = searcher.embed(path)
    except DatabaseError:
        raise
    except UserFacingError as error:  # the image is gone or unreadable
        raise DatabaseError(
            f"database {artifact.path}: its image {row} cannot be read ({error}); were its images moved?"
        ) from None
    except (RuntimeError, ValueError) as error:  # descriptor length differs from the whitening's
        raise DatabaseError(
            f"database {artifact.path} does not match its model: embedding {path} "
            f"failed ({error}); rebuild it with {BUILD_HINT}"
        ) from None
    same_shape = vector.shape == stored.shape
    cosine = float(vector[0] @ l2_normalize(stored)[0]) if same_shape else float("nan")
    if not cosine >= SELF_CHECK_MIN_COSINE:
        raise DatabaseError(
            f"database {artifact.path} does not match its model: re-embedding {path} (row "
            f"{row}) gives a {vector.shape[1]}-d descriptor with cosine {cosine:.3f} to the "
            f"stored {stored.shape[1]}-d one (expected ~1). Its files changed or it "
            f"was built with another model; rebuild it with {BUILD_HINT}"
        )
    return cosine
