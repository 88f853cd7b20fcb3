"""Train/val splits of a landmark set as pure functions (the ``split`` config group): which
(query, positive) pairs train and validate, which queries are evaluated, which images
training must never see; and how a negative joins each pair to make a triplet.

Pairs are ``(n, 2)`` int64 arrays of ``(query index, database index)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval.data.ground_truth import RetrievalGroundTruth


@dataclass(frozen=True)
class PairSplit:
    train_pairs: np.ndarray
    val_pairs: np.ndarray
    # queries the retrieval metrics use (None: all of them)
    eval_queries: np.ndarray | None = None
    # database images that training must never see, as positive or as negative
    held_out_images: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # True when the evaluated queries are also training anchors (optimistic numbers)
    evaluates_on_training_anchors: bool = True


# what the split group instantiates (a Hydra partial of one of the functions below)
SplitFunction = Callable[[RetrievalGroundTruth], PairSplit]


def _pairs(query: int, positives: np.ndarray) -> np.ndarray:
    return np.stack([np.full(len(positives), query, dtype=np.int64), positives.astype(np.int64)], 1)


def _concat(pairs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)


def split_positives_per_query(
    gt: RetrievalGroundTruth, val_fraction: float = 0.2, seed: int = 0
) -> PairSplit:
    """The reference project's split as its README states it (``split=reference``): each
    query's training positives (good ∪ ok ∪ junk, as the reference trains on) are shuffled
    and split, ``ceil(f·n)`` to validation (scikit-learn's rounding) and the rest to
    training; a query with a single positive keeps it for training. The same queries are
    the evaluation queries, so test numbers under this split are optimistic.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for q, query in enumerate(gt.queries):
        positives = rng.permutation(query.labelled)
        n_val = math.ceil(val_fraction * len(positives)) if len(positives) > 1 else 0
        val.append(_pairs(q, positives[:n_val]))
        train.append(_pairs(q, positives[n_val:]))
    return PairSplit(_concat(train), _concat(val))


def split_by_query(gt: RetrievalGroundTruth, num_val_queries: int = 15) -> PairSplit:
    """The other reading of the reference code (``split=reference_by_query``): queries
    sorted by name, the last ``num_val_queries`` (on Oxford/Paris: the last three
    landmarks) validate. As in the reference, all queries are evaluated, so training
    anchors are among them."""
    order = sorted(range(len(gt.queries)), key=lambda q: gt.queries[q].name)
    cut = len(order) - num_val_queries
    if cut <= 0:
        raise ValueError(
            f"num_val_queries={num_val_queries} leaves no training query ({len(order)} queries in {gt.name})"
        )

    def pairs(qs: Sequence[int]) -> np.ndarray:
        return _concat([_pairs(q, gt.queries[q].labelled) for q in qs])

    return PairSplit(pairs(order[:cut]), pairs(order[cut:]))


def split_held_out_queries(gt: RetrievalGroundTruth, per_landmark: int = 2) -> PairSplit:
    """Unseen queries (``split=held_out_queries``): the last ``per_landmark`` queries of each
    landmark (in file order) are the only evaluated ones; they are never a training anchor,
    and their own images never enter training (not as a positive, not as a negative). The
    landmarks are shared with training (their other queries train), so this measures
    retrieval for new query photos of known places; ``split=landmark_disjoint`` measures
    unseen places."""
    by_landmark: dict[str, list[int]] = {}
    for q, query in enumerate(gt.queries):
        by_landmark.setdefault(query.landmark, []).append(q)
    if any(len(qs) <= per_landmark for qs in by_landmark.values()):
        raise ValueError(
            f"split.per_landmark={per_landmark} leaves a landmark of {gt.name} without a "
            f"training query (fewest queries per landmark: "
            f"{min(map(len, by_landmark.values()))})"
        )
    eval_queries = np.asarray(sorted(q for qs in by_landmark.values() for q in qs[-per_landmark:]))
    held_out_images = np.asarray(
        sorted(gt.index_of(gt.queries[q].name) for q in eval_queries if gt.has_image(gt.queries[q].name)),
        dtype=np.int64,
    )
    train = [
        _pairs(q, np.setdiff1d(query.labelled, held_out_images))
        for q, query in enumerate(gt.queries)
        if q not in set(eval_queries.tolist())
    ]
    val = [_pairs(q, gt.queries[q].labelled) for q in eval_queries]
    return PairSplit(
        _concat(train), _concat(val), eval_queries, held_out_images, evaluates_on_training_anchors=False
    )


def split_by_landmark(
    gt: RetrievalGroundTruth, held_out: Sequence[str] | None = None, num_held_out: int = 3
) -> PairSplit:
    """Landmark-disjoint split (``split=landmark_disjoint``): the queries of the held-out
    landmarks (``held_out``, or the last ``num_held_out`` landmarks by name) are the only
    evaluated ones, and every image tied to them never enters training, not even as a
    negative. Leak-free."""
    landmarks = gt.landmarks
    held = sorted(held_out) if held_out else landmarks[-num_held_out:]
    unknown = set(held) - set(landmarks)
    if unknown or len(held) >= len(landmarks):
        raise ValueError(f"held-out landmarks {held} must be a proper subset of {landmarks}")
    eval_queries = np.asarray([q for q, query in enumerate(gt.queries) if query.landmark in held])
    held_images = [gt.queries[q].labelled for q in eval_queries]
    held_images += [
        np.asarray([gt.index_of(gt.queries[q].name)])
        for q in eval_queries
        if gt.has_image(gt.queries[q].name)
    ]
    held_out_images = np.unique(np.concatenate(held_images)).astype(np.int64)
    train = [
        _pairs(q, np.setdiff1d(query.labelled, held_out_images))
        for q, query in enumerate(gt.queries)
        if query.landmark not in held
    ]
    val = [_pairs(q, gt.queries[q].labelled) for q in eval_queries]
    return PairSplit(
        _concat(train), _concat(val), eval_queries, held_out_images, evaluates_on_training_anchors=False
    )


def draw_triplets(
    pairs: np.ndarray, negative_pools: Sequence[np.ndarray], seed: int, epoch: int
) -> np.ndarray:
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
