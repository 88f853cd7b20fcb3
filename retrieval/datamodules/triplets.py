"""Training protocols as pure functions: which (query, positive) pairs train and validate,
and how a negative joins each pair to make a triplet.

Pairs are ``(n, 2)`` int64 arrays of ``(query index, database index)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from retrieval.datamodules.ground_truth import RetrievalGroundTruth


def _pairs(query: int, positives: np.ndarray) -> np.ndarray:
    return np.stack([np.full(len(positives), query, dtype=np.int64), positives.astype(np.int64)], 1)


def _concat(pairs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def split_positives_per_query(gt: RetrievalGroundTruth, val_fraction: float = 0.2,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The seed project's protocol as its README states it: each query's training positives
    (good ∪ ok ∪ junk, as the reference trains on) are shuffled and split, ``ceil(f·n)``
    to validation (scikit-learn's rounding) and the rest to training; a query with a single
    positive keeps it for training. The same queries are the evaluation queries, so test
    numbers under this protocol are optimistic.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for q, query in enumerate(gt.queries):
        positives = rng.permutation(query.labelled)
        n_val = math.ceil(val_fraction * len(positives)) if len(positives) > 1 else 0
        val.append(_pairs(q, positives[:n_val]))
        train.append(_pairs(q, positives[n_val:]))
    return _concat(train), _concat(val)


def split_by_query(gt: RetrievalGroundTruth, num_val_queries: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """The other reading of the reference code: queries sorted by name, the last
    ``num_val_queries`` (on Oxford/Paris: the last three landmarks) validate."""
    order = sorted(range(len(gt.queries)), key=lambda q: gt.queries[q].name)
    cut = len(order) - num_val_queries
    if cut <= 0:
        raise ValueError(f"num_val_queries={num_val_queries} leaves no training query "
                         f"({len(order)} queries in {gt.name})")
    def pairs(qs: Sequence[int]) -> np.ndarray:
        return _concat([_pairs(q, gt.queries[q].labelled) for q in qs])
    return pairs(order[:cut]), pairs(order[cut:])


def draw_triplets(pairs: np.ndarray, negative_pools: Sequence[np.ndarray], seed: int,
                  epoch: int) -> np.ndarray:
    """Give every (query, positive) pair one negative drawn uniformly from its query's pool.

    Seeded by ``(seed, epoch)``: a new draw each epoch, identical across processes and
    across an interrupted and a resumed run.
    """
    rng = np.random.default_rng([seed, epoch])
    negatives = np.empty(len(pairs), dtype=np.int64)
    for q in np.unique(pairs[:, 0]):
        rows = np.flatnonzero(pairs[:, 0] == q)
        pool = negative_pools[q]
        if len(pool) == 0:
            raise ValueError(f"query {q} has an empty negative pool")
        negatives[rows] = pool[rng.integers(0, len(pool), size=len(rows))]
    return np.concatenate([pairs, negatives[:, None]], axis=1)


def evaluates_on_training_anchors(split) -> bool:
    """True for the seed protocols: their evaluation queries are also training anchors."""
    return getattr(split, "func", split) in (split_positives_per_query, split_by_query)
