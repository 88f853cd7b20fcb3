"""Diffusion re-ranking (Iscen, Tolias, Avrithis, Furon, Chum, "Efficient Diffusion on
Region Manifolds", CVPR 2017), global descriptors, truncated as in its large-scale setting.

Offline, once per database (:func:`mutual_knn_affinity`): the mutual kNN graph, edge weight
``max(s_ij, 0)^gamma`` between images that are among each other's ``k`` nearest (itself
counted among them), no self loops. Online, per query: the truncated graph on its top
``truncation`` images, ``S = D^-1/2 A D^-1/2``, and ``f`` solving ``(I - alpha S) f = y`` by
conjugate gradient, ``y`` holding ``max(s, 0)^gamma`` of its ``kq`` nearest images (20
iterations, relative tolerance 1e-6, as the reference's ``pcg``). The shortlist is re-ordered
by ``f`` (ties: the cosine order).

Vectorised where the reference loops: the mutual test is one sparse elementwise product;
all queries' truncated Laplacians form one block-diagonal sparse matrix, and the conjugate
gradient runs for all queries at once, with one step length per query (each query's
iterates are exactly those of its own CG; converged queries stop moving).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse

from retrieval.evaluation.blocked_ranking import rank_top_and_labelled


def mutual_knn_affinity(ids: np.ndarray, similarities: np.ndarray, gamma: float) -> sparse.csr_matrix:
    """Affinity [n, n] of the mutual kNN graph from each image's ``k`` nearest ``ids`` [n, k]
    (itself included) and their ``similarities``: as knngraph.m, without its per-row loop."""
    n, k = ids.shape
    rows = np.repeat(np.arange(n), k)
    weights = np.maximum(np.asarray(similarities, dtype=np.float64), 0.0).ravel() ** gamma
    directed = sparse.csr_matrix((weights, (rows, ids.ravel())), shape=(n, n))
    linked = sparse.csr_matrix((np.ones(n * k), (rows, ids.ravel())), shape=(n, n))
    affinity = directed.multiply(linked.T).tocsr()  # kept where j is in i's list and i in j's
    affinity.setdiag(0)
    affinity.eliminate_zeros()
    return affinity


def database_graph(database: np.ndarray, k: int, gamma: float) -> sparse.csr_matrix:
    """The offline graph: every database image's ``k`` nearest (exact, blockwise) -> affinity."""
    top = rank_top_and_labelled(database, database, k)
    return mutual_knn_affinity(top.ids, top.scores, gamma)


def reached_graph(
    reached: np.ndarray, ids: np.ndarray, similarities: np.ndarray, gamma: float
) -> sparse.csr_matrix:
    """The offline graph restricted to the ``reached`` images (sorted database indices), in
    their local numbering, from their ``k`` nearest ``ids`` [len(reached), k] over the whole
    database (-1: none): exactly the whole-database graph's entries among them, since an
    edge between two reached images needs only their own two lists. What the truncated
    diffusion reads of a database too large to graph whole (1M images)."""
    local = np.searchsorted(reached, ids)
    inside = (ids >= 0) & (reached[np.minimum(local, len(reached) - 1)] == ids)
    own = np.arange(len(reached))[:, None]  # an unreached neighbour becomes a self loop: dropped
    return mutual_knn_affinity(np.where(inside, local, own), np.where(inside, similarities, 0.0), gamma)


def truncated_laplacians(
    affinity: sparse.csr_matrix, shortlist: np.ndarray, alpha: float
) -> sparse.csr_matrix:
    """Block-diagonal ``I - alpha D^-1/2 A_sub D^-1/2``, one block per query's shortlist."""
    n_q, width = shortlist.shape
    n = affinity.shape[0]
    rows = affinity[shortlist.ravel()].tocoo()  # row r: query r // width, local row r % width
    query = rows.row // width
    # the local column of each entry inside its query's shortlist, if there: global keys
    # q * n + image searched in the sorted shortlists (no per-query lookup table)
    lookup = np.argsort(shortlist, axis=1)
    keys = (np.arange(n_q)[:, None] * n + np.take_along_axis(shortlist, lookup, axis=1)).ravel()
    wanted = query * n + rows.col
    where = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    inside = keys[where] == wanted
    local_col = lookup.ravel()[where[inside]]
    block = sparse.csr_matrix(
        (rows.data[inside], (rows.row[inside], query[inside] * width + local_col)), shape=(n_q * width,) * 2
    )
    degree = np.asarray(block.sum(axis=1)).ravel()
    scale = sparse.diags(np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0))
    return (sparse.identity(n_q * width) - alpha * (scale @ block @ scale)).tocsr()


def batched_conjugate_gradient(
    matrix: sparse.csr_matrix, b: np.ndarray, tol: float, iterations: int
) -> np.ndarray:
    """Solve a block-diagonal SPD system, one block per row of ``b`` [nq, T], by CG with
    per-block step lengths and stopping (||r|| < tol ||b||), x0 = 0: each row's result is
    that block's own CG (scipy.sparse.linalg.cg with rtol=tol, maxiter=iterations)."""
    n_q, width = b.shape
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rr = (r * r).sum(axis=1)
    limit = tol * np.sqrt((b * b).sum(axis=1))
    active = (np.sqrt(rr) >= limit) & (rr > 0)  # scipy stops once ||r|| < tol ||b|| (b = 0: x = 0)
    for _ in range(iterations):  # a handful of iterations, each over all queries at once
        if not active.any():
            break
        ap = (matrix @ p.ravel()).reshape(n_q, width)
        step = np.where(active, rr / np.where(active, (p * ap).sum(axis=1), 1.0), 0.0)
        x += step[:, None] * p
        r -= step[:, None] * ap
        rr_new = (r * r).sum(axis=1)
        p = r + np.where(active, rr_new / np.where(rr > 0, rr, 1.0), 0.0)[:, None] * p
        rr = np.where(active, rr_new, rr)
        active &= np.sqrt(rr) >= limit
    return x


@dataclass(frozen=True)
class Diffusion:
    """Truncated diffusion (reference defaults for global descriptors: k 50, kq 10, γ 3,
    α 0.99, 20 CG iterations, tolerance 1e-6; truncation 1000 as in the large-scale setting)."""

    k: int = 50
    kq: int = 10
    gamma: float = 3.0
    alpha: float = 0.99
    truncation: int = 1000
    iterations: int = 20
    tol: float = 1e-6

    @property
    def depth(self) -> int:
        return self.truncation

    def scores(
        self, affinity: sparse.csr_matrix, queries: np.ndarray, database: np.ndarray, shortlist: np.ndarray
    ) -> np.ndarray:
        """Diffusion scores f [nq, T] over each query's shortlist (best cosine first)."""
        similarity = np.einsum("qd,qtd->qt", np.asarray(queries, np.float32), np.asarray(database[shortlist]))
        y = np.zeros(shortlist.shape, dtype=np.float64)
        kq = min(self.kq, shortlist.shape[1])
        y[:, :kq] = np.maximum(similarity[:, :kq].astype(np.float64), 0.0) ** self.gamma
        laplacian = truncated_laplacians(affinity, shortlist, self.alpha)
        return batched_conjugate_gradient(laplacian, y, self.tol, self.iterations)

    def __call__(
        self,
        queries: np.ndarray,
        database: np.ndarray,
        shortlist: np.ndarray,
        affinity: sparse.csr_matrix | None = None,
    ) -> np.ndarray:
        """``affinity``: the database's offline graph (:func:`database_graph`); if None, only
        the part the shortlists reach is built (:func:`reached_graph`, exact kNN lists)."""
        if affinity is None:
            reached = np.unique(shortlist)
            vectors = np.asarray(database[reached], dtype=np.float32)
            top = rank_top_and_labelled(vectors, database, self.k)
            affinity = reached_graph(reached, top.ids, top.scores, self.gamma)
            f = self.scores(affinity, queries, vectors, np.searchsorted(reached, shortlist))
        else:
            f = self.scores(affinity, queries, database, shortlist)
        return np.take_along_axis(shortlist, np.argsort(-f, axis=1, kind="stable"), axis=1)
