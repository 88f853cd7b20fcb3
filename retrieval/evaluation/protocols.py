"""From embeddings to the metrics of the dataset's protocol: classic, revisited, or
leave-one-out for class-labelled galleries (chosen by the type of the ground truth)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.data.class_ground_truth import LEAVE_ONE_OUT, ClassGroundTruth
from retrieval.data.ground_truth import RetrievalGroundTruth
from retrieval.evaluation.class_metrics import class_metrics
from retrieval.evaluation.landmark_metrics import classic_metrics, revisited_metrics
from retrieval.evaluation.ranking import leave_one_out_rankings, rank_by_similarity
from retrieval.evaluation.vectors import cosine_similarity


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


def evaluate_leave_one_out(
    embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> EvaluationResult:
    """Every item queries all the others: MAP@R ("mAP"), R@k, P@k, mAP@k (see class_metrics)."""
    largest_class = int(np.bincount(np.asarray(labels)).max(initial=1))
    rankings = leave_one_out_rankings(embeddings, max(max(ks), largest_class - 1))
    result = class_metrics(rankings, labels, ks)
    return EvaluationResult(
        LEAVE_ONE_OUT, result.metrics, result.per_query_ap, rankings, embeddings, embeddings
    )


def evaluate_embeddings(
    queries: np.ndarray,
    database: np.ndarray,
    gt: RetrievalGroundTruth | ClassGroundTruth,
    ks: Sequence[int] = (1, 5, 10),
) -> EvaluationResult:
    """The protocol of ``gt``; for a :class:`ClassGroundTruth` ``queries`` is the gallery
    (``database``, the same images, is not used)."""
    if isinstance(gt, ClassGroundTruth):
        return evaluate_leave_one_out(queries, gt.labels, ks)
    rankings = rank_by_similarity(cosine_similarity(queries, database))
    protocol = revisited_metrics if gt.protocol == "revisited" else classic_metrics
    result = protocol(rankings, gt.queries, ks)
    return EvaluationResult(gt.protocol, result.metrics, result.per_query_ap, rankings, queries, database)
