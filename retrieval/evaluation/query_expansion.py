"""α-weighted query expansion (αQE) and database-side augmentation (DBA).

Both replace a descriptor by a weighted sum of itself and its nearest neighbours, which
pulls it towards the dense cluster of its landmark's images (Radenović et al., "Fine-tuning
CNN image retrieval with no human annotation", TPAMI 2018; DBA: Gordo et al. / Arandjelović
& Zisserman). With ``x`` L2-normalised and ``y_1..y_n`` its ``n`` most similar vectors of
``pool`` (cosine ``s_i``, ties broken by the lower index):

    x' = normalise(x + sum_i max(s_i, 0)^alpha * y_i)

The vector itself has weight ``1 = s^alpha`` for ``s = 1``, so it counts as its own best
neighbour; ``alpha = 0`` is the plain average QE, larger ``alpha`` trusts close neighbours
more. Negative similarities get weight 0 (``s^alpha`` is undefined for them). ``n = 0``
leaves the vectors unchanged.

- αQE: ``x`` a query, ``pool`` the database (after DBA, if any).
- DBA: every database vector against the rest of the database (itself excluded from its
  neighbours, since it already has weight 1).
"""

from __future__ import annotations

import numpy as np

from retrieval.evaluation.vectors import l2_normalize

# rows of the similarity matrix computed at once: 1024 x 100k float32 is 400 MB at most
_CHUNK = 1024


def _expand(vectors: np.ndarray, pool: np.ndarray, n: int, alpha: float, exclude_self: bool) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    pool = np.asarray(pool, dtype=np.float32)
    if n < 0:
        raise ValueError(f"the number of neighbours must be >= 0, got {n}")
    n = min(n, len(pool) - int(exclude_self))
    if n <= 0:
        return vectors.copy()
    out = np.empty_like(vectors)
    for start in range(0, len(vectors), _CHUNK):
        rows = slice(start, start + _CHUNK)
        similarity = vectors[rows] @ pool.T
        if exclude_self:
            chunk = np.arange(similarity.shape[0])
            similarity[chunk, chunk + start] = -np.inf
        # stable sort: equal similarities keep the lower index first (deterministic)
        neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :n]
        weights = np.maximum(np.take_along_axis(similarity, neighbours, axis=1), 0.0) ** alpha
        out[rows] = vectors[rows] + np.einsum("qn,qnd->qd", weights, pool[neighbours])
    return l2_normalize(out).astype(np.float32, copy=False)


def alpha_query_expansion(
    queries: np.ndarray, database: np.ndarray, n: int, alpha: float = 3.0
) -> np.ndarray:
    """αQE: each query replaced by its weighted sum with its top-``n`` database vectors."""
    return _expand(queries, database, n, alpha, exclude_self=False)


def database_side_augmentation(database: np.ndarray, n: int, alpha: float = 3.0) -> np.ndarray:
    """DBA: each database vector replaced by its weighted sum with its top-``n`` others."""
    return _expand(database, database, n, alpha, exclude_self=True)
