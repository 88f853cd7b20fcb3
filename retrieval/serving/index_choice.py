"""Which faiss index fits ``n`` vectors of dimension ``d`` in a memory budget (autofaiss-style).

autofaiss itself (2.18.0) pins ``numpy<2`` and ``pandas<3``: installing it would downgrade
this project's numpy 2.4 and pandas 3.1, so its choice rules are re-stated here, for the
three index families the project serves (:mod:`retrieval.serving.search`):

- below ``exact_below`` vectors: exact search (a few ms per query at most, nothing to train);
- HNSW (``M=32`` links: fastest queries) for up to ``hnsw_max_n`` vectors, if full vectors
  plus links fit: its build inserts one vector at a time, minutes per 10^5 on 2 cores;
- IVF-Flat if full vectors fit (exact scores inside the visited cells);
- else IVF-PQ with the most bytes per code that fit (``pq_m`` sub-quantisers of 8 bits),
  re-ranked on the exact vectors, which stay outside the budget: they are read, memory-mapped,
  from the database's ``embeddings.npy`` for the ``refine * k`` candidates of each query.

``nlist`` is the power of two nearest ``4 sqrt(n)`` (autofaiss' and faiss' rule of thumb),
at most ``n / 39`` (k-means wants 39 points per cell) and ``max_nlist``; from 4096 cells the
coarse quantiser is itself an HNSW graph (``IVF..._HNSW32``), as autofaiss does, so that
assigning 10^7 vectors and probing cells does not scan every centroid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from retrieval.utils.errors import UserFacingError

IDS_BYTES = 8  # faiss stores an int64 id per vector in an inverted list
HNSW_M = 32
# faiss HNSW: 2 M int32 links at level 0, ~1/M of the nodes on each upper level
HNSW_LINK_BYTES = 4 * 2 * HNSW_M * 1.07
HNSW_QUANTIZER_FROM = 4096

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_bytes(value: int | float | str, setting: str = "search.memory_budget") -> int:
    """``4GB``, ``512MiB``, ``1.5e9`` or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([KMGT]I?B|B)?\s*", str(value), re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise UserFacingError(
            f"{setting}={value!r} is not a memory size; write it as a number of bytes or with a "
            "unit, e.g. 4GB, 512MB or 2GiB"
        )
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


@dataclass(frozen=True)
class IndexPlan:
    kind: str  # exact | hnsw | ivfflat | ivfpq
    factory: str  # the faiss index_factory key ("" for exact)
    bytes_per_vector: float  # estimated, in memory (the on-disk file is the same size)
    nlist: int = 0
    pq_m: int = 0
    refine: int = 0  # re-score refine * k candidates on the exact vectors (ivfpq)

    def describe(self) -> str:
        extra = f", re-ranking {self.refine} x k candidates on exact vectors" if self.refine else ""
        return (
            f"{self.kind} ({self.factory or 'brute force'}, ~{self.bytes_per_vector:.0f} bytes/vector{extra})"
        )


def choose_nlist(n: int, max_nlist: int) -> int:
    wanted = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    return max(1, min(wanted, max_nlist, n // 39))


def plan_index(
    n: int,
    d: int,
    memory_budget: int,
    exact_below: int = 10_000,
    hnsw_max_n: int = 250_000,
    max_nlist: int = 8192,
    refine: int = 10,
) -> IndexPlan:
    """The most accurate index for ``n`` x ``d`` float vectors within ``memory_budget`` bytes."""
    per_vector = memory_budget / n
    full = 4 * d
    if n < exact_below:
        return IndexPlan("exact", "", full)
    if n <= hnsw_max_n and full + HNSW_LINK_BYTES <= per_vector:
        return IndexPlan("hnsw", f"HNSW{HNSW_M}", full + HNSW_LINK_BYTES)
    nlist = choose_nlist(n, max_nlist)
    quantizer = f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_FROM else f"IVF{nlist}"
    # the centroids (and their graph) are shared by all vectors
    shared = nlist * (full + (HNSW_LINK_BYTES if nlist >= HNSW_QUANTIZER_FROM else 0)) / n
    if full + IDS_BYTES + shared <= per_vector:
        return IndexPlan("ivfflat", f"{quantizer},Flat", full + IDS_BYTES + shared, nlist)
    codebooks = 256 * full / n  # 256 centroids per sub-quantiser, all sub-vectors together
    # bytes per code: divisors of d (faiss PQ splits the vector evenly), at least 2 dims each
    for pq_m in sorted((m for m in range(4, d // 2 + 1) if d % m == 0), reverse=True):
        cost = pq_m + IDS_BYTES + shared + codebooks
        if cost <= per_vector and n >= 256 * 39:  # 256 codewords, 39 training points each
            return IndexPlan("ivfpq", f"{quantizer},PQ{pq_m}", cost, nlist, pq_m, refine)
    raise UserFacingError(
        f"search.memory_budget={memory_budget:,} bytes is {per_vector:.1f} bytes per vector for "
        f"{n:,} vectors of dimension {d}; the smallest index (IVF-PQ, 4-byte codes) needs about "
        f"{4 + IDS_BYTES + shared:.0f} (and at least {256 * 39:,} vectors to train): raise the "
        "budget or use search=exact"
    )
