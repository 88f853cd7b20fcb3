"""In-batch mining for class-labelled sets: triplets chosen inside each P×K batch from the
current embeddings, by the module that trains on those sets (``model=class_metric``).

The ``batch_miner`` config group names the miner:

* ``batch_miner=all`` (the default): no selection, every valid (anchor, positive,
  negative) triplet of the batch ("batch all"), the in-batch counterpart of the landmark
  sets' ``mining=random``;
* ``batch_miner=batch_hard``: per anchor, its farthest positive and nearest negative
  (pytorch-metric-learning's ``BatchHardMiner``; Hermans et al. 2017);
* ``batch_miner=semi_hard``: every triplet whose negative is farther than the positive but
  within the margin, d_ap < d_an <= d_ap + margin (pml's ``TripletMarginMiner``,
  ``type_of_triplets="semihard"``; Schroff et al. 2015).

Landmark sets take their negatives from per-query pools instead (the ``mining`` group, see
:mod:`retrieval.datamodules.negative_pools`); each kind of set composes only its own group.

The pml miners are used as they are rather than re-written: they are tested upstream, and
their distance is configurable (our configs give them the loss's squared Euclidean).
"""

from __future__ import annotations

from typing import Protocol

import torch
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu


class InBatchMinerFactory(Protocol):
    """What the ``batch_miner`` group instantiates (a Hydra partial, e.g. of pml's
    ``BatchHardMiner``): called once by the module, it builds the miner; None means
    every valid triplet of the batch."""

    def __call__(self) -> BaseMiner | None: ...


def every_triplet() -> None:
    """``batch_miner=all``: no miner, so :func:`mine_triplets` takes every valid triplet."""
    return None


def mine_triplets(
    miner: BaseMiner | None, embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) index tensors into the batch; every valid triplet
    without a miner."""
    indices = miner(embeddings, labels) if miner is not None else None
    # pair miners return (a1, p, a2, n): pml turns them into triplets sharing the anchor
    return lmu.convert_to_triplets(indices, labels, t_per_anchor="all")
