"""From embeddings to the metrics of the dataset's protocol (classic or revisited)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.datamodules.ground_truth import RetrievalGroundTruth
from retrieval.evaluation.metrics import classic_metrics, rank_by_similarity, revisited_metrics


@dataclass(frozen=True)
class EvaluationResult:
    protocol: str
    metrics: dict[str, float]  # fractions in [0, 1]
    per_query_ap: dict[str, np.ndarray]  # setup name -> AP per query (NaN: no positives)
    rankings: np.ndarray  # (n_queries, n_database) database indices, best first
    # the embeddings that were ranked, for plots and reports (dataset order)
    query_embeddings: np.ndarray | None = None
    database_embeddings: np.ndarray | None = None


def cosine_similarity(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query with every database vector (rows re-normalised, so
    it is exact also after float16 storage or whitening)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    d = database / np.maximum(np.linalg.norm(database, axis=1, keepdims=True), 1e-12)
    return q.astype(np.float32) @ d.astype(np.float32).T


def evaluate_embeddings(queries: np.ndarray, database: np.ndarray, gt: RetrievalGroundTruth,
                        ks: Sequence[int] = (1, 5, 10)) -> EvaluationResult:
    rankings = rank_by_similarity(cosine_similarity(queries, database))
    protocol = revisited_metrics if gt.protocol == "revisited" else classic_metrics
    result = protocol(rankings, gt.queries, ks)
    return EvaluationResult(gt.protocol, result.metrics, result.per_query_ap, rankings,
                            queries, database)
