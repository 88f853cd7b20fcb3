"""Embedding a database with ``trainer.predict``: one process or DDP over GPUs and nodes
(the ``trainer=`` configs of training), shards written as they complete, a killed build
resumed where it stopped (:mod:`retrieval.serving.prediction_writer`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from retrieval.models.inference import embed_batch
from retrieval.serving.prediction_writer import ShardBatchSampler, ShardWriter
from retrieval.serving.shards import ShardPlan

log = logging.getLogger(__name__)

TrainerFactory = Callable[..., L.Trainer]


class DescriptorModule(L.LightningModule):
    """``predict_step`` = :func:`~retrieval.models.inference.embed_batch`: the descriptor a
    query gets (multi-scale, bf16 autocast on CUDA, float32 on CPU), so the trainer runs at
    ``precision=32-true`` and leaves the autocast to it."""

    def __init__(self, net: nn.Module, scales: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        self.net, self.scales = net, tuple(scales)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return embed_batch(self.net, images, self.scales)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).cpu()


@dataclass(frozen=True)
class ShardedEmbedding:
    vectors: np.ndarray  # (n, dim) float32 in dataset order
    embedded: int  # images embedded by this run (the rest came from an earlier run's shards)
    plan: ShardPlan


def embed_in_shards(
    net: nn.Module,
    dataset: Dataset,
    plan: ShardPlan,
    make_trainer: TrainerFactory,
    batch_size: int,
    num_workers: int,
    scales: Sequence[float] = (1.0,),
    callbacks: Sequence[L.Callback] = (),
) -> ShardedEmbedding | None:
    """Embed the shards of ``plan`` still missing; rank 0 gets every vector (merged and
    checked: each image exactly once), the other ranks None once their shards are written."""
    writer = ShardWriter(plan)
    trainer = make_trainer(
        callbacks=[writer, *callbacks],
        logger=False,
        enable_checkpointing=False,
        # whole shards per rank (ShardBatchSampler), never a padded DistributedSampler
        use_distributed_sampler=False,
        precision="32-true",
        enable_model_summary=False,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=ShardBatchSampler(writer, batch_size),
        num_workers=num_workers,
        pin_memory=trainer.strategy.root_device.type == "cuda",
        persistent_workers=False,
    )
    with warnings.catch_warnings():
        # "custom batch sampler ... can't guarantee" all indices: ShardBatchSampler returns
        # every index of its shards, and the merge checks each image is there exactly once
        warnings.filterwarnings("ignore", message="You are using a custom batch sampler")
        trainer.predict(DescriptorModule(net, scales), dataloaders=loader, return_predictions=False)
    writer.finish(trainer)
    if trainer.global_rank != 0:
        return None
    vectors, _ = plan.merge()
    log.info("embedded %d of %d images in this run", writer.embedded, plan.count)
    return ShardedEmbedding(vectors, writer.embedded, plan)
