"""Negative pools: for each query, the database images a triplet may take its negative from.

The ``_target_`` of ``configs/mining/random.yaml`` and ``ssim.yaml``; the SSIM miner itself
(:mod:`retrieval.mining.ssim_miner`) knows queries only as :class:`QuerySpec` and never
imports this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval.data.ground_truth import RetrievalGroundTruth
from retrieval.mining.ssim_miner import mine_ssim_negatives
from retrieval.mining.ssim_store import NegativePool, QuerySpec


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


def negative_pools_for(gt: RetrievalGroundTruth, cache_dir: Path, **params) -> dict[str, NegativePool]:
    """SSIM pools for every query of a dataset, by query name; never offers a labelled image
    or the query itself. ``params``: see :func:`.ssim_miner.mine_ssim_negatives`."""
    specs = [
        QuerySpec(q.name, Path(q.path), excluded_from_negatives(gt, i)) for i, q in enumerate(gt.queries)
    ]
    return mine_ssim_negatives(gt.image_paths, specs, cache_dir, **params)


def ssim_negative_pools(gt: RetrievalGroundTruth, cache_dir: Path, **params) -> list[np.ndarray]:
    """The seed's pools: per query, the ``top_k`` database images most similar by SSIM of
    their centre crops (see :mod:`retrieval.mining.ssim_miner`), cached under ``cache_dir``."""
    pools = negative_pools_for(gt, cache_dir / "ssim", **params)
    return [pools[q.name].indices for q in gt.queries]
