"""SuperGlobal re-ranking (Shao et al., "Global Features are All You Need for Image
Retrieval and Reranking", ICCV 2023): MDescAug refines the descriptors of each query's top
M images from their neighbours among those M, RerankwMDA re-scores them against the query
and the element-wise maximum of its best refined neighbours.

For one query with top-M descriptors ``x_1..x_M`` (``K`` and ``beta`` as in the paper):

- MDescAug: ``x'_i = (x_i + sum_{j in kNN_K(i)} beta * s_ij * x_j) / (1 + sum_j beta * s_ij)``
  with ``kNN_K(i)`` the ``K`` most similar of the M besides ``x_i`` itself (``s`` = dot product).
- RerankwMDA: the top M sorted by ``q . x'_i``; ``m`` = element-wise max of the first
  ``K + 1`` refined descriptors in that order; final score ``(q . x'_i + m . x'_i) / 2``.

As in the reference (ShihaoShao-GH/SuperGlobal, modules/reranking/), the refined
descriptors are not re-normalised, and ``beta`` enters MDescAug only (RerankwMDA scales a
copy of the scores by it but never uses them). Vectorised over queries in blocks: the
neighbour weights are scattered into a dense [block, M, M] matrix, so the refinement is
one batched matmul instead of the reference's per-query loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mdescaug(top: np.ndarray, k: int, beta: float) -> np.ndarray:
    """Refined descriptors [nq, M, d] of each query's top-M descriptors ``top`` [nq, M, d]."""
    top = np.asarray(top, dtype=np.float32)
    n_q, m = top.shape[:2]
    width = min(k + 1, m)  # itself and its k neighbours among the M
    similarity = top @ top.transpose(0, 2, 1)
    neighbours = np.argsort(-similarity, axis=-1, kind="stable")[..., :width]
    weights = beta * np.take_along_axis(similarity, neighbours, axis=-1)
    weights[..., 0] = 1.0  # the descriptor itself, as the reference (its best neighbour)
    dense = np.zeros_like(similarity)
    np.put_along_axis(dense, neighbours, weights, axis=-1)
    return (dense @ top) / weights.sum(axis=-1, keepdims=True)


def rerank_with_mda(queries: np.ndarray, refined: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """RerankwMDA: (order [nq, M] of the top M, best first; its final scores [nq, M])."""
    first = np.einsum("qd,qmd->qm", queries, refined)
    order = np.argsort(-first, axis=1, kind="stable")
    by_first = np.take_along_axis(refined, order[..., None], axis=1)
    best = by_first[:, : min(k + 1, refined.shape[1])].max(axis=1)  # [nq, d]
    final = (np.take_along_axis(first, order, axis=1) + np.einsum("qd,qmd->qm", best, by_first)) / 2
    new = np.argsort(-final, axis=1, kind="stable")
    return np.take_along_axis(order, new, axis=1), np.take_along_axis(final, new, axis=1)


@dataclass(frozen=True)
class SuperGlobal:
    """MDescAug + RerankwMDA of each query's top ``M`` (paper defaults M 400, K 9, β 0.15)."""

    M: int = 400
    K: int = 9
    beta: float = 0.15
    query_block: int = 16  # queries refined at once: 16 x 400 x 400 weights, 16 x 400 x d vectors

    @property
    def depth(self) -> int:
        return self.M

    def __call__(self, queries: np.ndarray, database: np.ndarray, shortlist: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        out = np.empty_like(shortlist)
        for start in range(0, len(queries), self.query_block):  # blocks bound the memory
            rows = slice(start, start + self.query_block)
            top = np.asarray(database[np.sort(shortlist[rows], axis=None)], dtype=np.float32)
            # gather the block's top-M descriptors (database may be a memory map: one read)
            lookup = np.searchsorted(np.sort(shortlist[rows], axis=None), shortlist[rows])
            refined = mdescaug(top[lookup], self.K, self.beta)
            order, _ = rerank_with_mda(queries[rows], refined, self.K)
            out[rows] = np.take_along_axis(shortlist[rows], order, axis=1)
        return out
