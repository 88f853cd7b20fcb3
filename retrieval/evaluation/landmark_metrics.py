"""Landmark-retrieval metrics that equal the field's reference implementations exactly.

Computed from :class:`~retrieval.evaluation.ranking.PositiveRanks` (see that module for
the NaN, float64 and truncated-ranking conventions). For the j-th retrieved positive
(0-based) of a query at rank r (0-based, junk removed) and n_pos = all positives of the
query:

* **AP** (Oxford ``compute_ap.cpp`` and revisitop ``compute_ap``): trapezoidal rule,
  ``AP = sum_j (p0 + p1) / 2 / n_pos`` with ``p0 = 1 if r == 0 else j / r`` and
  ``p1 = (j + 1) / (r + 1)``. Positives that the ranking never reaches contribute 0.
  (compute_ap.cpp accumulates in float32, so its APs can differ from these in the 7th digit.)
* **mP@k** (revisitop ``compute_map``): with 1-based ranks R, ``kq = min(max R, k)`` and
  ``P = #(R <= kq) / kq``. revisitop would crash on a query with no retrieved positive;
  here its mP@k is 0.
* **reference AP@k** (the seed project): ``sum of precision at each hit within the top k / k``.

The protocols: :func:`classic_metrics` (Oxford5k / Paris6k) and :func:`revisited_metrics`
(ROxford5k / RParis6k, Easy / Medium / Hard).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.data.ground_truth import Query
from retrieval.evaluation.ranking import (
    LocatesPositives,
    PositiveRanks,
    ProtocolResult,
    locate,
    positive_ranks,
)


def ap_from_ranks(ranks: PositiveRanks) -> np.ndarray:
    """AP per query by the trapezoidal rule of compute_ap.cpp / revisitop (NaN: no positives)."""
    j, r = ranks.order, ranks.rank
    precision_before = np.where(r == 0, 1.0, j / np.maximum(r, 1))
    area = ranks.per_query_sum((precision_before + ranks.precision_at_hits()) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ranks.nan_without_positives(area / ranks.n_pos)


def revisitop_precision_from_ranks(ranks: PositiveRanks, ks: Sequence[int]) -> np.ndarray:
    """revisitop's P@k per query and k, [nq, len(ks)]: kq = min(last positive's rank, k)."""
    per_query = np.bincount(ranks.query, minlength=ranks.n_queries)
    retrieved = per_query > 0
    # 1-based rank of the last retrieved positive (ranks are non-decreasing within a query);
    # a query with none retrieved keeps max rank 1, hence P = 0 (revisitop would crash).
    max_rank = np.ones(ranks.n_queries, dtype=np.int64)
    max_rank[retrieved] = ranks.rank[np.cumsum(per_query)[retrieved] - 1] + 1
    out = np.empty((ranks.n_queries, len(ks)))
    for col, k in enumerate(ks):  # a handful of ks: the work inside is vectorised
        kq = np.minimum(max_rank, k)
        out[:, col] = ranks.hits_within(kq) / kq
    return ranks.nan_without_positives(out)


def average_precisions(
    rankings: np.ndarray, positives: Sequence[np.ndarray], junk: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """AP per query [nq] (compute_ap.cpp / revisitop semantics); NaN where no positives."""
    return ap_from_ranks(positive_ranks(rankings, positives, junk))


def precision_at_ks(
    rankings: np.ndarray,
    positives: Sequence[np.ndarray],
    junk: Sequence[np.ndarray] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> np.ndarray:
    """revisitop's P@k per query [nq, len(ks)]; NaN where no positives."""
    return revisitop_precision_from_ranks(positive_ranks(rankings, positives, junk), ks)


def reference_ap_from_ranks(ranks: PositiveRanks, k: int) -> np.ndarray:
    """The seed project's AP@k per query: (sum of precision at each hit in the top k) / k."""
    return ranks.nan_without_positives(ranks.hit_precision_within(k) / k)


def reference_ap_at_k(
    rankings: np.ndarray,
    positives: Sequence[np.ndarray],
    k: int,
    junk: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """The seed project's "AP@k" per query [nq].

    ``AP@k = (1 / k) · sum_{i=1..k} rel(i) · #hits(1..i) / i``: the precision at each hit
    within the top k, summed, divided by k (not by the number of positives, so a query with
    fewer than k positives can never reach 1). ``junk`` (default none) is removed from the
    ranking first. NaN where a query has no positives.
    """
    return reference_ap_from_ranks(positive_ranks(rankings, positives, junk), k)


def _protocol_metrics(
    ranks: PositiveRanks, ks: Sequence[int], prefix: str
) -> tuple[dict[str, float], np.ndarray]:
    ap = ap_from_ranks(ranks)
    metrics = {f"{prefix}mAP": float(ranks.mean(ap))}
    precisions = ranks.mean(revisitop_precision_from_ranks(ranks, ks))
    metrics.update({f"{prefix}mP@{k}": float(p) for k, p in zip(ks, precisions)})
    metrics.update({f"{prefix}AP@{k}": float(ranks.mean(reference_ap_from_ranks(ranks, k))) for k in ks})
    return metrics, ap


def classic_metrics(
    rankings: np.ndarray | LocatesPositives, queries: Sequence[Query], ks: Sequence[int] = (1, 5, 10)
) -> ProtocolResult:
    """Oxford5k / Paris6k protocol: positives good ∪ ok, junk ignored in every metric.

    Keys: "mAP", "mP@k" (revisitop precision) and "AP@k" (the seed's reference AP@k, junk
    removed first). On revisited ground truth the positives are easy ∪ hard (= Medium).
    """
    ranks = locate(rankings, [q.positives for q in queries], [q.junk for q in queries])
    metrics, ap = _protocol_metrics(ranks, ks, prefix="")
    return ProtocolResult(metrics, {"classic": ap})


def revisited_metrics(
    rankings: np.ndarray | LocatesPositives, queries: Sequence[Query], ks: Sequence[int] = (1, 5, 10)
) -> ProtocolResult:
    """ROxford5k / RParis6k protocol (revisitop): Easy, Medium and Hard setups.

    Easy: positives easy, ignore junk ∪ hard. Medium: positives easy ∪ hard, ignore junk.
    Hard: positives hard, ignore junk ∪ easy. Keys "E/mAP", "M/mP@5", "H/AP@10", ...
    """
    setups = {
        "E": ([q.easy for q in queries], [np.union1d(q.junk, q.hard) for q in queries]),
        "M": ([np.union1d(q.easy, q.hard) for q in queries], [q.junk for q in queries]),
        "H": ([q.hard for q in queries], [np.union1d(q.junk, q.easy) for q in queries]),
    }
    metrics: dict[str, float] = {}
    per_query: dict[str, np.ndarray] = {}
    for name, (positives, junk) in setups.items():
        setup_metrics, per_query[name] = _protocol_metrics(
            locate(rankings, positives, junk), ks, prefix=f"{name}/"
        )
        metrics.update(setup_metrics)
    return ProtocolResult(metrics, per_query)
