"""LightningModule for class-labelled batches: embed a P×K batch and apply the loss group's
loss: a triplet loss to the triplets mined in it, a pair loss to the mined tuples (or every
pair), a classification loss to the labels. ``model=class_metric``, which the class-labelled
datasets (``dataset=folder|csv|toy_classes``) choose in their config, and
``model=landmark_classes`` (a landmark set's images labelled with their landmark).

It is the triplet module with another ``training_step``: the network, the loss (margin and
distance of ``model.loss``), optimizer/scheduler partials, ``forward`` and the evaluation
``validation_step`` (``{"embeddings", "indices"}`` for the RetrievalEvaluation callback)
are inherited, so checkpoints of both modules share one layout.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.miners import BaseMiner
from torch import nn

from retrieval.mining.in_batch import InBatchMinerFactory, mine_triplets
from retrieval.training.losses import ClassificationLoss, PairLoss, compute_loss
from retrieval.training.triplet_module import (
    OptimizerFactory,
    SchedulerFactory,
    TripletRetrievalModule,
)


class ClassMetricModule(TripletRetrievalModule):
    """``miner`` builds the in-batch miner (the ``batch_miner`` group's partial, see
    :mod:`retrieval.mining.in_batch`); None, or ``batch_miner=all``, trains on every valid
    triplet of the batch."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        miner: InBatchMinerFactory | None = None,
        **options,
    ) -> None:
        # options: the triplet module's own switches (channels_last, ...), passed through
        super().__init__(net, loss, optimizer, scheduler, **options)
        # The parent's save_hyperparameters collects the arguments of every __init__ of this
        # object, this one's too, and checkpoints keep plain values only: drop the miner
        # (the run's config holds the batch_miner choice).
        self.hparams.pop("miner", None)
        self.miner: BaseMiner | None = miner() if miner is not None else None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        embeddings = self(images)
        batch_size = images.shape[0]
        if isinstance(self.loss, ClassificationLoss):  # labels against class weights: no tuples
            loss = compute_loss(self.loss, embeddings, labels)
        elif isinstance(self.loss, PairLoss):
            # the miner's tuples as they come (pml pair losses take triplets and pairs); with
            # none, pml forms every pair of the batch from the labels (no repeated pairs)
            tuples = self.miner(embeddings, labels) if self.miner is not None else None
            loss = compute_loss(self.loss, embeddings, labels, tuples)
        else:
            triplets = mine_triplets(self.miner, embeddings, labels)
            loss = compute_loss(self.loss, embeddings, labels, triplets)
            self.log(
                "train/triplets", float(len(triplets[0])), on_step=False, on_epoch=True, batch_size=batch_size
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss
