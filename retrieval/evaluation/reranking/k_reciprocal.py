"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017), on each query's shortlist.

The images taken together are the queries and the union of their shortlists (all of the
database when the shortlist covers it: then this is the reference's computation exactly).
With ``d`` the squared Euclidean distance of unit vectors, row-normalised by its maximum:

- R(i): the k-reciprocal neighbours of ``i`` among its ``k1 + 1`` nearest (itself included);
  R(i) grows by R_half(c) (``round(k1 / 2)``, numpy rounding) of each ``c`` in R(i) with
  ``|R_half(c) ∩ R(i)| > 2/3 |R_half(c)|``.
- ``V_i``: weights ``exp(-d_ij)`` on that set, normalised; then averaged over ``i``'s ``k2``
  nearest (local query expansion, ``k2 = 1``: off).
- Jaccard distance ``1 - sum min(V_q, V_j) / (2 - sum min(V_q, V_j))``; final distance
  ``(1 - lambda) * jaccard + lambda * d``.

Vectorised where the reference loops per image: neighbour lists come from one blockwise
pass (never an n × n matrix), the reciprocity and expansion tests are sparse products, and
the Jaccard sums gather, for every (query, shared image) pair, the image's column of V at
once. Reference: zhunzhong07/person-re-ranking, python-version/re_ranking_ranklist.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse

from retrieval.evaluation.blocked_ranking import BLOCK_ELEMENTS

_PAIR_BLOCK = 1 << 14  # pairwise dot products at once (2 x 16k x 512 float32 gathered)


def reciprocal_sets(neighbours: np.ndarray, k: int) -> sparse.csr_matrix:
    """Boolean [n, n]: j in R(i, k), i.e. j among i's k + 1 nearest and i among j's."""
    n = len(neighbours)
    forward = neighbours[:, : k + 1]
    mutual = (neighbours[forward, : k + 1] == np.arange(n)[:, None, None]).any(axis=-1)
    rows = np.repeat(np.arange(n), forward.shape[1])[mutual.ravel()]
    return sparse.csr_matrix((np.ones(len(rows)), (rows, forward.ravel()[mutual.ravel()])), shape=(n, n))


def expanded_sets(neighbours: np.ndarray, k1: int) -> sparse.csr_matrix:
    """Boolean [n, n]: R(i, k1) grown by the R(c, round(k1/2)) that overlap it by > 2/3."""
    full, half = reciprocal_sets(neighbours, k1), reciprocal_sets(neighbours, int(np.around(k1 / 2.0)))
    half_size = np.asarray(half.sum(axis=1)).ravel()
    overlap = (full @ half.T).multiply(full).tocoo()  # at (i, c), c in R(i): |R_half(c) ∩ R(i)|
    keep = overlap.data > 2.0 / 3.0 * half_size[overlap.col]
    chosen = sparse.csr_matrix(
        (np.ones(keep.sum()), (overlap.row[keep], overlap.col[keep])), shape=full.shape
    )
    expanded = (full + chosen @ half).tocsr()
    expanded.data[:] = 1.0
    return expanded


def nearest_and_lowest(vectors: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``depth`` most similar rows, best first [n, depth], and its lowest
    similarity [n], from one blockwise pass (never an n x n matrix). Equal similarities may
    come in any order, as in the reference's quicksort."""
    n = len(vectors)
    ids, lowest = np.empty((n, depth), dtype=np.int64), np.empty(n, dtype=np.float32)
    rows = max(1, BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n, rows):
        similarity = vectors[start : start + rows] @ vectors.T
        lowest[start : start + rows] = similarity.min(axis=1)
        part = np.argpartition(-similarity, depth - 1, axis=1)[:, :depth]
        order = np.argsort(-np.take_along_axis(similarity, part, axis=1), axis=1, kind="stable")
        ids[start : start + rows] = np.take_along_axis(part, order, axis=1)
    return ids, lowest


def _pair_dots(vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), _PAIR_BLOCK):  # bounded memory for many pairs
        part = slice(start, start + _PAIR_BLOCK)
        out[part] = np.einsum("pd,pd->p", vectors[rows[part]], vectors[cols[part]])
    return out


def k_reciprocal_distance(
    vectors: np.ndarray, n_queries: int, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """Final distance [n_queries, n - n_queries] from the first ``n_queries`` rows of unit
    ``vectors`` (the queries) to the others (their candidates)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    neighbours, lowest = nearest_and_lowest(vectors, min(n, max(k1 + 1, k2)))
    # d_ij / max_j d_ij, with d = |a - b|^2 = 2 - 2 a.b; the row maximum is at the least similar
    row_max = np.maximum(2.0 - 2.0 * lowest, np.float32(1e-12))
    expanded = expanded_sets(neighbours, k1).tocoo()
    distance = (
        np.maximum(2.0 - 2.0 * _pair_dots(vectors, expanded.row, expanded.col), 0.0) / row_max[expanded.row]
    )
    weight = np.exp(-distance.astype(np.float32))
    weight /= np.bincount(expanded.row, weights=weight, minlength=n)[expanded.row]
    v = sparse.csr_matrix((weight, (expanded.row, expanded.col)), shape=(n, n), dtype=np.float32)
    # fewer images than k2 (a filtered or tiny shortlist): the average runs over all of them,
    # as the reference's np.mean(V[initial_rank[i, :k2]]) does
    k2 = min(k2, n)
    if k2 != 1:
        rows = np.repeat(np.arange(n), k2)
        average = sparse.csr_matrix(
            (np.full(n * k2, 1.0 / k2), (rows, neighbours[:, :k2].ravel())), shape=(n, n)
        )
        v = (average @ v).tocsr().astype(np.float32)
    shared = _sum_of_minima(v, n_queries)
    jaccard = 1.0 - shared / (2.0 - shared)
    original = np.maximum(2.0 - 2.0 * (vectors[:n_queries] @ vectors.T), 0.0) / row_max[:n_queries, None]
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:, n_queries:]


def _sum_of_minima(v: sparse.csr_matrix, n_queries: int) -> np.ndarray:
    """[n_queries, n]: sum over l of min(V[q, l], V[j, l]) (only l where both are non-zero)."""
    n = v.shape[0]
    query_part = v[:n_queries].tocoo()  # (q, l, V_ql)
    columns = v.tocsc()
    columns.sort_indices()
    counts = np.diff(columns.indptr)[query_part.col]
    pair = np.repeat(np.arange(len(query_part.data)), counts)  # one row per (q, l, j)
    within = np.arange(len(pair)) - np.repeat(np.cumsum(counts) - counts, counts)
    entry = columns.indptr[query_part.col][pair] + within
    minima = np.minimum(query_part.data[pair], columns.data[entry])
    keys = query_part.row[pair].astype(np.int64) * n + columns.indices[entry]
    return np.bincount(keys, weights=minima, minlength=n_queries * n).reshape(n_queries, n).astype(np.float32)


@dataclass(frozen=True)
class KReciprocal:
    """k-reciprocal re-ranking of each query's first ``shortlist`` images (paper defaults
    k1 20, k2 6, λ 0.3)."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    shortlist: int = 1000

    @property
    def depth(self) -> int:
        return self.shortlist

    def __call__(self, queries: np.ndarray, database: np.ndarray, shortlist: np.ndarray) -> np.ndarray:
        candidates = np.unique(shortlist)
        vectors = np.concatenate(
            [np.asarray(queries, np.float32), np.asarray(database[candidates], np.float32)]
        )
        final = k_reciprocal_distance(vectors, len(queries), self.k1, self.k2, self.lambda_value)
        mine = np.take_along_axis(final, np.searchsorted(candidates, shortlist), axis=1)
        return np.take_along_axis(shortlist, np.argsort(mine, axis=1, kind="stable"), axis=1)
