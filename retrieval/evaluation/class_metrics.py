"""Metrics of class-labelled galleries (flowers, Fashion-MNIST, ...), leave-one-out.

Every item is a query against all the others; its positives are the other items of its
class, and the query itself is treated as junk, so the machinery of
:mod:`retrieval.evaluation.ranking` applies unchanged. For a query with n_pos other items
of its class:

* **R@k**: 1 if one of them is in the top k, else 0;
* **P@k**: the number of them in the top k, divided by k;
* **mAP@k**: ``sum_{i<=k} P(i) rel(i) / min(k, n_pos)``;
* **MAP@R** (Musgrave et al. 2020): mAP@k with k = n_pos for each query.

Items alone in their class have no positives and are left out of every mean.
:func:`class_metrics` reports them all from one ranking (MAP@R as "mAP").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retrieval.evaluation.ranking import PositiveRanks, ProtocolResult, ranks_from_masks, top_rankings


def _recall(ranks: PositiveRanks, k: int) -> np.ndarray:
    return (ranks.hits_within(k) > 0).astype(np.float64)


def _precision(ranks: PositiveRanks, k: int) -> np.ndarray:
    return ranks.hits_within(k) / k


def _map_at(ranks: PositiveRanks, k: int) -> np.ndarray:
    return ranks.hit_precision_within(k) / np.maximum(np.minimum(ranks.n_pos, k), 1)


_LEAVE_ONE_OUT = {"R": _recall, "P": _precision, "mAP": _map_at}


def leave_one_out_metrics(
    similarity_or_rankings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    which: Sequence[str] = ("R", "P", "mAP"),
) -> dict[str, float]:
    """Recall@k ("R@k"), Precision@k ("P@k") and mAP@k ("mAP@k"), means over queries.

    ``similarity_or_rankings``: a float [n, n] similarity (the diagonal is ignored) or an
    integer [n, K] ranking of item indices, best first (K > max(ks) when it holds the query
    itself). For a query with n_pos other items of its class, the query itself excluded:
    R@k = 1 if one of them is in the top k else 0; P@k = #of them in the top k / k;
    AP@k = sum_{i<=k} P(i)·rel(i) / min(k, n_pos). Items alone in their class are left out.
    """
    ranks = _leave_one_out_ranks(similarity_or_rankings, labels, depth=max(ks) + 1)
    return {f"{name}@{k}": float(ranks.mean(_LEAVE_ONE_OUT[name](ranks, k))) for name in which for k in ks}


def recall_at_k(
    similarity_or_rankings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Fraction of queries with a same-class item in the top k: "R@k" (leave-one-out)."""
    return leave_one_out_metrics(similarity_or_rankings, labels, ks, which=("R",))


def precision_at_k(
    similarity_or_rankings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean fraction of same-class items in the top k: "P@k" (leave-one-out)."""
    return leave_one_out_metrics(similarity_or_rankings, labels, ks, which=("P",))


def map_at_k(
    similarity_or_rankings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean AP@k = sum_{i<=k} P(i)·rel(i) / min(k, n_pos): "mAP@k" (leave-one-out)."""
    return leave_one_out_metrics(similarity_or_rankings, labels, ks, which=("mAP",))


def _leave_one_out_ranks(similarity_or_rankings: np.ndarray, labels: np.ndarray, depth: int) -> PositiveRanks:
    values, labels = np.asarray(similarity_or_rankings), np.asarray(labels)
    if values.shape[0] != len(labels):
        raise ValueError(f"{values.shape[0]} queries but {len(labels)} labels")
    rankings = values if np.issubdtype(values.dtype, np.integer) else top_rankings(values, depth)
    is_self = rankings == np.arange(len(labels))[:, None]
    positive = (labels[rankings] == labels[:, None]) & ~is_self
    _, class_of, class_size = np.unique(labels, return_inverse=True, return_counts=True)
    return ranks_from_masks(positive, is_self, class_size[class_of.ravel()] - 1)


def _ap_at_r(ranks: PositiveRanks) -> np.ndarray:
    """AP@R per query with R = its n_pos: sum_{i<=R} P(i)·rel(i) / R (NaN without positives)."""
    within = ranks.rank < ranks.n_pos[ranks.query]
    hits = ranks.per_query_sum(ranks.precision_at_hits() * within)
    return ranks.nan_without_positives(hits / np.maximum(ranks.n_pos, 1))


def map_at_r(similarity_or_rankings: np.ndarray, labels: np.ndarray) -> float:
    """MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020), leave-one-out: the
    mean over queries of AP@R, R = the number of other items of the query's class."""
    labels = np.asarray(labels)
    ranks = _leave_one_out_ranks(similarity_or_rankings, labels, depth=_largest_class(labels))
    return float(ranks.mean(_ap_at_r(ranks)))


def class_metrics(
    similarity_or_rankings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> ProtocolResult:
    """The leave-one-out protocol of class-labelled galleries, from one ranking.

    Keys: "mAP" = MAP@R (see :func:`map_at_r`; it is what checkpoints monitor as val/mAP),
    then "R@k", "P@k", "mAP@k" as :func:`leave_one_out_metrics` defines them. Rankings of
    item indices must reach depth max(max(ks), largest class - 1) (one more if they hold the
    query itself) to be exact. ``per_query_ap["leave_one_out"]`` is AP@R per query.
    """
    labels = np.asarray(labels)
    ranks = _leave_one_out_ranks(
        similarity_or_rankings, labels, depth=max(max(ks) + 1, _largest_class(labels))
    )
    ap = _ap_at_r(ranks)
    metrics = {"mAP": float(ranks.mean(ap))}
    metrics.update(
        {
            f"{name}@{k}": float(ranks.mean(_LEAVE_ONE_OUT[name](ranks, k)))
            for name in _LEAVE_ONE_OUT
            for k in ks
        }
    )
    return ProtocolResult(metrics, {"leave_one_out": ap})


def _largest_class(labels: np.ndarray) -> int:
    """Ranking depth that reaches every positive of every query, the query itself included."""
    return int(np.unique(labels, return_counts=True)[1].max(initial=1))
