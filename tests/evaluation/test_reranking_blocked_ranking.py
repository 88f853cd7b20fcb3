"""Bounded-memory ranking (evaluation/blocked_ranking.py): its top-k and the exact ranks of
the labelled images give the metrics of the full ranking exactly, ties and junk included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.data.ground_truth import Query, RetrievalGroundTruth
from retrieval.evaluation import protocols
from retrieval.evaluation.blocked_ranking import rank_top_and_labelled
from retrieval.evaluation.landmark_metrics import classic_metrics, revisited_metrics
from retrieval.evaluation.protocols import evaluate_embeddings
from retrieval.evaluation.ranking import positive_ranks, rank_by_similarity
from retrieval.evaluation.reranking.diffusion import Diffusion
from retrieval.evaluation.reranking.k_reciprocal import KReciprocal
from retrieval.evaluation.reranking.superglobal import SuperGlobal
from retrieval.evaluation.vectors import cosine_similarity


def problem(seed: int, n_q: int = 9, n_db: int = 1500, dim: int = 6):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_q, dim)).astype(np.float32)
    db = np.round(rng.standard_normal((n_db, dim)), 1).astype(np.float32)  # coarse: many ties
    db[10:20] = db[3]  # exact duplicates
    db[30] = 0.0  # a zero vector scores 0 (and -0.0) for every query
    queries = []
    for i in range(n_q):
        labelled = rng.choice(n_db, size=120, replace=False)
        easy, hard, junk = np.sort(labelled[:40]), np.sort(labelled[40:80]), np.sort(labelled[80:])
        queries.append(Query(f"q{i}", "l", Path(f"q{i}.jpg"), easy=easy, hard=hard, junk=junk))
    return q, db, queries


def labelled_of(queries):
    return [x.labelled for x in queries]


@pytest.mark.parametrize("block", [1, 7, 256, None])
def test_metrics_equal_the_full_ranking_exactly(block):
    q, db, queries = problem(seed=block or 0)
    full = rank_by_similarity(cosine_similarity(q, db))
    top = rank_top_and_labelled(q, db, 25, labelled_of(queries), block_columns=block)
    np.testing.assert_array_equal(top.ids, full[:, :25])
    for metrics in (classic_metrics, revisited_metrics):
        assert metrics(top, queries).metrics == metrics(full, queries).metrics  # bit for bit


def test_a_reordered_head_moves_its_labelled_images_only():
    q, db, queries = problem(seed=5)
    full = rank_by_similarity(cosine_similarity(q, db))
    top = rank_top_and_labelled(q, db, 60, labelled_of(queries))
    rng = np.random.default_rng(0)
    head = np.stack([rng.permutation(row) for row in full[:, :40]])
    reordered = full.copy()
    reordered[:, :40] = head
    moved = top.with_head(head)
    positives, junk = [x.positives for x in queries], [x.junk for x in queries]
    a, b = positive_ranks(reordered, positives, junk), moved.positive_ranks(positives, junk)
    for field in ("query", "order", "rank", "n_pos"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    with pytest.raises(ValueError, match="permute"):
        top.with_head(full[:, 1:41])


def test_unlabelled_index_is_refused():
    q, db, queries = problem(seed=1)
    top = rank_top_and_labelled(q, db, 5, labelled_of(queries))
    with pytest.raises(ValueError, match="not labelled"):
        top.positive_ranks([np.array([x]) for x in range(len(q))])


@pytest.mark.parametrize(
    "reranker",
    [
        None,
        SuperGlobal(M=30, K=4),
        Diffusion(k=10, kq=5, truncation=40),
        KReciprocal(k1=8, k2=3, shortlist=40),
    ],
    ids=["plain", "superglobal", "diffusion", "k_reciprocal"],
)
def test_blocked_evaluation_equals_the_full_one_with_each_reranker(reranker, monkeypatch):
    """evaluate_embeddings on a 'large' database (the limit lowered to force blocks) gives the
    full ranking's metrics and per-query APs exactly, re-ranked or not."""
    q, db, queries = problem(seed=7, n_db=400, dim=12)
    names = [str(i) for i in range(len(db))]
    gt = RetrievalGroundTruth("t", names, [Path(f"{n}.jpg") for n in names], queries, "revisited")
    full = evaluate_embeddings(q, db, gt, reranker=reranker)
    monkeypatch.setattr(protocols, "FULL_RANKING_LIMIT", 0)
    seen: list[int] = []
    blocked = evaluate_embeddings(q, db, gt, reranker=reranker, progress=seen.append)
    assert blocked.metrics == full.metrics
    for setup, aps in full.per_query_ap.items():
        np.testing.assert_array_equal(blocked.per_query_ap[setup], aps)
    width = blocked.rankings.shape[1]
    np.testing.assert_array_equal(blocked.rankings, full.rankings[:, :width])
    assert sum(seen) == 2 * len(db)  # both passes reported
