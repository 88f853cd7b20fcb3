"""From embeddings to the metrics of the dataset's protocol: classic, revisited, or
leave-one-out for class-labelled galleries (chosen by the type of the ground truth)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.data.class_ground_truth import LEAVE_ONE_OUT, ClassGroundTruth
from retrieval.data.ground_truth import RetrievalGroundTruth
from retrieval.evaluation.blocked_ranking import TopRanking, rank_top_and_labelled
from retrieval.evaluation.class_metrics import class_metrics
from retrieval.evaluation.landmark_metrics import classic_metrics, revisited_metrics
from retrieval.evaluation.ranking import leave_one_out_rankings, rank_by_similarity
from retrieval.evaluation.reranking import Reranker
from retrieval.evaluation.vectors import cosine_similarity

# queries x database scores ranked in one piece (128 MB of float32); above, the ranking is
# blocked: the first BLOCKED_DEPTH columns are kept, plus the exact rank of every labelled image
FULL_RANKING_LIMIT = 1 << 25
BLOCKED_DEPTH = 100


@dataclass(frozen=True)
class EvaluationResult:
    protocol: str
    metrics: dict[str, float]  # fractions in [0, 1]
    per_query_ap: dict[str, np.ndarray]  # setup name -> AP per query (NaN: no positives)
    # (n_queries, n_database) database indices, best first (a large database: the first
    # max(BLOCKED_DEPTH, re-ranking depth) columns). Leave-one-out (class sets): each
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
    reranker: Reranker | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvaluationResult:
    """The protocol of ``gt``; for a :class:`ClassGroundTruth` ``queries`` is the gallery
    (``database``, the same images, is not used). ``reranker`` re-orders each query's first
    ``reranker.depth`` images after the cosine ranking (landmark sets only). ``progress`` is
    told the database images scored, block by block, when the ranking is blocked."""
    if isinstance(gt, ClassGroundTruth):
        return evaluate_leave_one_out(queries, gt.labels, ks)
    ranked, rankings = rank_queries(queries, database, gt, reranker, progress)
    protocol = revisited_metrics if gt.protocol == "revisited" else classic_metrics
    result = protocol(ranked, gt.queries, ks)
    return EvaluationResult(gt.protocol, result.metrics, result.per_query_ap, rankings, queries, database)


def rank_queries(
    queries: np.ndarray,
    database: np.ndarray,
    gt: RetrievalGroundTruth,
    reranker: Reranker | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray | TopRanking, np.ndarray]:
    """(what the metrics read, the rankings to report): the full [nq, n] ranking of a small
    database; for a large one a :class:`TopRanking` (bounded memory, exact metrics) and its
    first columns. The re-ranked head replaces the ranking's first ``reranker.depth`` columns."""
    depth = min(reranker.depth, len(database)) if reranker is not None else 0
    if len(queries) * len(database) <= FULL_RANKING_LIMIT:
        rankings = rank_by_similarity(cosine_similarity(queries, database))
        if reranker is not None:
            rankings[:, :depth] = reranker(queries, database, rankings[:, :depth])
        return rankings, rankings
    labelled = [q.labelled for q in gt.queries]
    top = rank_top_and_labelled(queries, database, max(depth, BLOCKED_DEPTH), labelled, progress=progress)
    if reranker is not None:
        top = top.with_head(reranker(queries, database, top.ids[:, :depth]))
    return top, top.ids
