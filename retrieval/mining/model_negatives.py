"""Hard negatives re-mined every epoch with the network being trained (cirtorch style).

SSIM pools are fixed before training; as the network learns, the negatives it confuses
change. This miner embeds the training queries and a random pool of database images with
the current weights at the start of every epoch and keeps, per query, the ``top_k``
database images most similar to it that are not tied to it (positives, junk, itself).
The random pool (``pool_size``, redrawn per epoch from (seed, epoch)) bounds the cost on
large databases, as cirtorch's ``poolsize`` does. Under DDP every process mines the same
pools from the same weights. ``mining=current_model``; the landmark datamodule calls it as
an :class:`~retrieval.datamodules.negative_pools.EpochNegativePoolSource`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from torch import nn

from retrieval.data.ground_truth import RetrievalGroundTruth
from retrieval.data.truth import BBox
from retrieval.datamodules.image_datasets import ImageListDataset
from retrieval.datamodules.transforms import eval_transform
from retrieval.mining.pools import excluded_from_negatives
from retrieval.models.inference import embed_dataset

log = logging.getLogger(__name__)


def hardest_negatives(
    query_embeddings: np.ndarray,
    candidate_embeddings: np.ndarray,
    candidates: np.ndarray,
    excluded: Sequence[np.ndarray],
    top_k: int,
) -> list[np.ndarray]:
    """Per query, the ``top_k`` candidates (database indices) of highest cosine similarity,
    skipping the query's ``excluded`` indices; most similar first."""
    similarity = query_embeddings @ candidate_embeddings.T
    pools = []
    for q, row in enumerate(similarity):
        row = np.where(np.isin(candidates, excluded[q]), -np.inf, row)
        k = min(top_k, int(np.isfinite(row).sum()))
        best = np.argpartition(-row, k - 1)[:k] if k else np.empty(0, dtype=np.int64)
        pools.append(candidates[best[np.argsort(-row[best], kind="stable")]])
    return pools


class CurrentModelNegatives:
    """A negative-pool source that needs the model: the datamodule calls
    :meth:`pools_for_epoch` once per epoch."""

    def __init__(
        self, top_k: int = 50, pool_size: int | None = 2000, batch_size: int = 32, num_workers: int = 0
    ) -> None:
        self.top_k, self.pool_size = top_k, pool_size
        self.batch_size, self.num_workers = batch_size, num_workers

    def pools_for_epoch(
        self,
        gt: RetrievalGroundTruth,
        model: nn.Module,
        epoch: int,
        seed: int,
        image_size: int,
        query_bboxes: Sequence[BBox | None],
        held_out: np.ndarray,
    ) -> list[np.ndarray]:
        candidates = np.setdiff1d(np.arange(len(gt.image_names)), held_out)
        if self.pool_size is not None and len(candidates) > self.pool_size:
            rng = np.random.default_rng([seed, epoch, 3])
            candidates = np.sort(rng.choice(candidates, size=self.pool_size, replace=False))
        # the network's own pixel normalisation (the module's net, or a bare EmbeddingNetwork)
        net = getattr(model, "net", model)
        transform = eval_transform(image_size, getattr(net, "input_normalization", None))
        device = next(model.parameters()).device
        training = model.training
        try:
            queries = embed_dataset(
                model,
                ImageListDataset([q.path for q in gt.queries], transform, query_bboxes),
                self.batch_size,
                self.num_workers,
                device,
                progress=False,
            )
            database = embed_dataset(
                model,
                ImageListDataset([gt.image_paths[i] for i in candidates], transform),
                self.batch_size,
                self.num_workers,
                device,
                description=f"mining negatives (epoch {epoch})",
            )
        finally:
            model.train(training)
        excluded = [excluded_from_negatives(gt, q) for q in range(len(gt.queries))]
        pools = hardest_negatives(queries, database, candidates, excluded, self.top_k)
        log.info(
            "epoch %d: re-mined %d hardest negatives per query among %d images",
            epoch,
            self.top_k,
            len(candidates),
        )
        return pools
