"""Nearest-neighbour search over L2-normalised descriptors (inner product = cosine).

Backends (``configs/search/<name>.yaml``):

- ``exact``: brute force, exact scores. Below ``faiss_min_batch`` queries per call it is a
  NumPy matrix product plus ``argpartition``; from there on faiss ``knn`` (``IndexFlatIP``'s
  search without the copy: blocked BLAS with a fused top-k heap, no ``(nq, n)`` score
  matrix), if faiss is installed. The default switch point, 256, comes from
  ``bench/search.py`` on a 2-core CPU, 5k vectors: NumPy is 1.8-2.6x faster for single
  queries (0.18 ms at 512-d, 1.4 ms at 2048-d) and up to 2x faster for batches of 64-128 at
  512-d, while faiss is 1.8x faster from 256 queries at 512-d (NumPy's ``argpartition`` over
  the full score matrix dominates there) and 1.2x faster from 64 queries at 2048-d. One
  process that alternates between both on 2 cores pays for it: each library's thread pool
  spins after a call and starves the other's for a scheduler slice (ms).
- ``ivfflat`` / ``ivfpq``: faiss inverted lists (``nlist`` k-means cells, ``nprobe`` of
  them visited per query) holding full vectors / product-quantised codes; ``refine``
  re-scores ``refine * k`` PQ candidates with the exact vectors. For 10^5+ vectors.
- ``hnsw``: faiss HNSW graph (``M`` links per node, ``ef_search`` beam width).
- ``auto``: one of the above chosen for a memory budget and tuned to a recall target, stored
  beside the database and memory-mapped (:mod:`retrieval.serving.auto_index`).
- ``milvus``: a Milvus collection, embedded milvus-lite file or a server
  (:mod:`retrieval.serving.milvus_index`); the only backend with a metadata ``filter``.

``search(queries, k)`` returns ``(scores, indices)``, both ``(nq, min(k, n))``, best first;
an approximate index that finds fewer than ``k`` candidates pads with score ``-inf`` and
index ``-1`` (as faiss does).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

# NumPy scores at most this many (query, vector) pairs at once (64 MB of float32 scores)
_SCORE_BLOCK = 1 << 24
# faiss k-means samples: plenty for stable cells, and bounds training time on 10^6 vectors
_TRAIN_POINTS_PER_CELL = 64


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "this search backend needs faiss: pip install faiss-cpu (or use search=exact)"
        ) from None
    return faiss


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of every row, best first: (values, column indices)."""
    if k < scores.shape[1]:
        # argpartition is O(n) per row; only the k survivors get sorted
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    values = np.take_along_axis(scores, candidates, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(candidates, order, axis=1)


class _Backend(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class IndexSource:
    """What the vectors are, for backends that keep more than vectors: row names and the
    dataset (a Milvus collection's fields) and the database folder (where ``auto`` stores
    its trained index and milvus-lite its file)."""

    names: Sequence[str] | None = None
    dataset: str | None = None
    directory: Path | None = None


class ExactSearch:
    def __init__(self, vectors: np.ndarray, faiss_min_batch: int | None = 256) -> None:
        self.vectors = vectors
        self.faiss_min_batch = faiss_min_batch

    def _numpy(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        block = max(1, _SCORE_BLOCK // len(self.vectors))
        parts = [top_k(queries[i : i + block] @ self.vectors.T, k) for i in range(0, len(queries), block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.faiss_min_batch is None or len(queries) < self.faiss_min_batch:
            return self._numpy(queries, k)
        try:
            faiss = _faiss()
        except ImportError:
            return self._numpy(queries, k)
        # faiss.knn is IndexFlatIP's search without copying the vectors into an index
        return faiss.knn(queries, self.vectors, k, metric=faiss.METRIC_INNER_PRODUCT)


class IVFSearch:
    """faiss IVF with full vectors (``pq_m=None``) or PQ codes of ``pq_m`` bytes-ish."""

    def __init__(
        self,
        vectors: np.ndarray,
        nlist: int | None = None,
        nprobe: int = 32,
        pq_m: int | None = None,
        pq_bits: int = 8,
        refine: int = 0,
        seed: int = 0,
    ) -> None:
        faiss = _faiss()
        n, d = vectors.shape
        nlist = self._clip_nlist(nlist, n)
        self.quantizer = faiss.IndexFlatIP(d)
        if pq_m is None:
            self.ivf = faiss.IndexIVFFlat(self.quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if d % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the descriptor dimension {d}")
            if n < 2**pq_bits:
                raise ValueError(
                    f"ivfpq with pq_bits={pq_bits} needs at least {2**pq_bits} vectors "
                    f"to train its codebooks, got {n}; use search=exact"
                )
            self.ivf = faiss.IndexIVFPQ(self.quantizer, d, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
        self.ivf.cp.seed = seed
        self.ivf.nprobe = min(nprobe, nlist)
        self.index = self.ivf
        if refine and pq_m is not None:
            # re-score refine * k PQ candidates with the exact vectors (a second copy in memory)
            self.index = faiss.IndexRefineFlat(self.ivf)
            self.index.k_factor = float(refine)
        sample = np.random.default_rng(seed).permutation(n)[
            : max(_TRAIN_POINTS_PER_CELL * nlist, 2**pq_bits * 40)
        ]
        self.index.train(vectors[np.sort(sample)])
        self.index.add(vectors)

    @staticmethod
    def _clip_nlist(nlist: int | None, n: int) -> int:
        # faiss k-means wants >= 39 training points per cell; 4 sqrt(n) is the usual default
        limit = max(1, n // 39)
        wanted = nlist if nlist is not None else max(1, int(4 * math.sqrt(n)))
        if wanted > limit:
            log.warning("IVF nlist %d clipped to %d for %d vectors (>= 39 per cell)", wanted, limit, n)
        return min(wanted, limit)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)


class HNSWSearch:
    def __init__(
        self, vectors: np.ndarray, m: int = 32, ef_construction: int = 80, ef_search: int = 64
    ) -> None:
        faiss = _faiss()
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(vectors)
        self.index.hnsw.efSearch = ef_search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        # efSearch bounds the candidate list, so it must be at least k
        self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, k)
        return self.index.search(queries, k)


BACKENDS: dict[str, type | str] = {
    "exact": ExactSearch,
    "ivfflat": IVFSearch,
    "ivfpq": IVFSearch,
    "hnsw": HNSWSearch,
    # imported on use (they import this module; milvus needs the optional pymilvus); they
    # take the IndexSource and a metadata filter
    "auto": "retrieval.serving.auto_index:AutoIndex",
    "milvus": "retrieval.serving.milvus_index:MilvusSearch",
}
_WITH_SOURCE = ("auto", "milvus")


def _backend_class(name: str) -> type:
    entry = BACKENDS[name]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module), attribute)
    return entry


class SearchIndex:
    """A searchable set of L2-normalised vectors; ``backend`` and its ``params`` as above.

    ``SearchIndex(vectors)`` is exact search; the ``search`` config group instantiates it
    as a partial: ``instantiate(cfg.search)(vectors, source=IndexSource(...))``.
    """

    def __init__(
        self, vectors: np.ndarray, backend: str = "exact", source: IndexSource | None = None, **params
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown search backend '{backend}' (one of {sorted(BACKENDS)})")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # BLAS / faiss want float32
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"vectors must be a non-empty (n, d) array, got shape {vectors.shape}")
        if backend == "ivfpq":
            params.setdefault("pq_m", 16)
        elif backend == "ivfflat":
            params["pq_m"] = None
        if backend in _WITH_SOURCE:
            params["source"] = source
        self.backend, self.size, self.dim = backend, len(vectors), vectors.shape[1]
        self._impl: _Backend = _backend_class(backend)(vectors, **params)
        log.info("search index: %s over %d x %d", backend, self.size, self.dim)

    def __len__(self) -> int:
        return self.size

    def search(
        self, queries: np.ndarray, k: int = 10, filter: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query; ``filter`` (milvus only) is a boolean expression over the
        collection's fields, e.g. ``dataset == "oxford5k"`` or ``name like "all_souls%"``."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if filter is not None:
            if self.backend != "milvus":
                raise ValueError(f"a search filter needs search=milvus, this index is '{self.backend}'")
            scores, indices = self._impl.search(queries, min(k, self.size), filter=filter)  # type: ignore[call-arg]
        else:
            scores, indices = self._impl.search(queries, min(k, self.size))
        indices = np.asarray(indices, dtype=np.int64)
        scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
        return scores, indices
