"""Negative pools: for each query, the database images a triplet may take its negative from."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.data.ground_truth import RetrievalGroundTruth


def excluded_from_negatives(gt: RetrievalGroundTruth, q: int) -> np.ndarray:
    """Everything tied to query ``q`` (good/ok/easy/hard/junk) and the query image itself."""
    query = gt.queries[q]
    own = [gt.index_of(query.name)] if gt.has_image(query.name) else []
    return np.union1d(query.labelled, np.asarray(own, dtype=np.int64))


def random_negative_pools(gt: RetrievalGroundTruth, cache_dir: Path | None = None) -> list[np.ndarray]:
    """Every database image not tied to the query: random out-of-class negatives, as in
    the 'deep ranking' approach. ``cache_dir`` is unused (nothing worth caching)."""
    everything = np.arange(len(gt.image_names), dtype=np.int64)
    return [np.setdiff1d(everything, excluded_from_negatives(gt, q)) for q in range(len(gt.queries))]


def ssim_negative_pools(gt: RetrievalGroundTruth, cache_dir: Path, **params) -> list[np.ndarray]:
    """The seed's pools: per query, the ``top_k`` database images most similar by SSIM of
    their centre crops (see :mod:`retrieval.mining.ssim_miner`), cached under ``cache_dir``."""
    from retrieval.mining.ssim_miner import negative_pools_for  # heavy: only when configured

    pools = negative_pools_for(gt, cache_dir / "ssim", **params)
    return [pools[q.name].indices for q in gt.queries]
