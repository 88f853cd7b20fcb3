"""From embeddings to the metrics of the dataset's protocol: classic, revisited, or
leave-one-out for class-labelled galleries (chosen by the type of the ground truth)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.data.class_ground_truth import LEAVE_ONE_OUT, ClassGroundTruth
from retrieval.data.ground_truth import RetrievalGroundTruth
from retrieval.evaluation.metrics import (class_metrics, classic_metrics, rank_by_similarity,
                                          revisited_metrics)


@dataclass(frozen=True)
class EvaluationResult:
    protocol: str
    metrics: dict[str, float]  # fractions in [0, 1]
    per_query_ap: dict[str, np.ndarray]  # setup name -> AP per query (NaN: no positives)
    # (n_queries, n_database) database indices, best first. Leave-one-out (class sets): each
    # item's ranking of the *other* items, cut at depth max(max(ks), largest class - 1)
    rankings: np.ndarray
    # the embeddings that were ranked, for plots and reports (dataset order)
    query_embeddings: np.ndarray | None = None
    database_embeddings: np.ndarray | None = None


def cosine_similarity(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query with every database vector (rows re-normalised, so
    it is exact also after float16 storage or whitening)."""
    return _unit_rows(queries) @ _unit_rows(database).T


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def leave_one_out_rankings(embeddings: np.ndarray, depth: int, chunk_elements: int = 1 << 24
                           ) -> np.ndarray:
    """For every item, the other items by decreasing cosine similarity, [n, min(depth, n-1)]
    (ties keep index order, as rank_by_similarity). Built in row blocks of about
    ``chunk_elements`` similarities, so memory stays O(block × n), never n × n; each row is
    fully sorted (exact ties; ~10 s for a 10k-image gallery on one core)."""
    x = _unit_rows(np.asarray(embeddings))
    n = len(x)
    depth = max(0, min(depth, n - 1))
    rows = max(1, chunk_elements // max(n, 1))
    out = np.empty((n, depth), dtype=np.int64)
    for start in range(0, n, rows):
        similarity = x[start:start + rows] @ x.T
        block = np.arange(len(similarity))
        similarity[block, start + block] = -np.inf  # the query itself ranks last: cut off
        out[start:start + rows] = rank_by_similarity(similarity)[:, :depth]
    return out


def evaluate_leave_one_out(embeddings: np.ndarray, labels: np.ndarray,
                           ks: Sequence[int] = (1, 5, 10)) -> EvaluationResult:
    """Every item queries all the others: MAP@R ("mAP"), R@k, P@k, mAP@k (metrics.class_metrics)."""
    largest_class = int(np.bincount(np.asarray(labels)).max(initial=1))
    rankings = leave_one_out_rankings(embeddings, max(max(ks), largest_class - 1))
    result = class_metrics(rankings, labels, ks)
    return EvaluationResult(LEAVE_ONE_OUT, result.metrics, result.per_query_ap, rankings,
                            embeddings, embeddings)


def evaluate_embeddings(queries: np.ndarray, database: np.ndarray,
                        gt: RetrievalGroundTruth | ClassGroundTruth,
                        ks: Sequence[int] = (1, 5, 10)) -> EvaluationResult:
    """The protocol of ``gt``; for a :class:`ClassGroundTruth` ``queries`` is the gallery
    (``database``, the same images, is not used)."""
    if isinstance(gt, ClassGroundTruth):
        return evaluate_leave_one_out(queries, gt.labels, ks)
    rankings = rank_by_similarity(cosine_similarity(queries, database))
    protocol = revisited_metrics if gt.protocol == "revisited" else classic_metrics
    result = protocol(rankings, gt.queries, ks)
    return EvaluationResult(gt.protocol, result.metrics, result.per_query_ap, rankings,
                            queries, database)
