"""Online mining: triplets chosen inside each P×K batch from the current embeddings.

The ``mining`` config group serves both kinds of data; seen from a class-labelled set
(``dataset=folder|csv``) its options mean:

* ``mining=random`` (the framework's default): no selection, every valid (anchor,
  positive, negative) triplet of the batch ("batch all"), the in-batch counterpart of the
  landmark sets' random negatives;
* ``mining=batch_hard``: per anchor, its farthest positive and nearest negative
  (pytorch-metric-learning's ``BatchHardMiner``; Hermans et al. 2017);
* ``mining=semi_hard``: every triplet whose negative is farther than the positive but
  within the margin, d_ap < d_an <= d_ap + margin (pml's ``TripletMarginMiner``,
  ``type_of_triplets="semihard"``; Schroff et al. 2015);
* ``mining=ssim``: an error; SSIM pools are mined per landmark query, offline.

The pml miners are used as they are rather than re-written: they are tested upstream, and
their distance is configurable (our configs give them the loss's squared Euclidean).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from retrieval.datamodules.class_datamodule import ClassDataModule
from retrieval.mining.pools import random_negative_pools
from retrieval.utils.errors import UserFacingError

MinerFactory = Callable[[], BaseMiner]
CLASS_SET_OPTIONS = "mining=random (every triplet of the batch), batch_hard or semi_hard"


def is_online_miner(mining: object) -> bool:
    """A pml miner, or a Hydra partial that builds one (``_partial_: true`` configs)."""
    target = getattr(mining, "func", mining)
    return isinstance(mining, BaseMiner) or (isinstance(target, type) and issubclass(target, BaseMiner))


def class_set_miner(mining: BaseMiner | MinerFactory | Callable | None) -> BaseMiner | None:
    """The miner a class-labelled set trains with, from the ``mining`` group's object.

    None means every triplet of the batch (``mining=random``)."""
    if mining is None or getattr(mining, "func", None) is random_negative_pools:
        return None
    if isinstance(mining, BaseMiner):
        return mining
    if is_online_miner(mining):
        return mining()
    target = getattr(mining, "func", mining)  # a partial's function, or the object itself
    name = getattr(target, "__name__", type(target).__name__)
    raise UserFacingError(f"the configured miner ({name}) mines negative pools for the queries of "
                          f"a landmark set; class-labelled sets (dataset=folder|csv) choose "
                          f"negatives inside each P×K batch: use {CLASS_SET_OPTIONS}")


def check_mining_fits(datamodule: object, mining: object) -> None:
    """Fail before anything is built, with the fix, when the ``mining`` group's object does
    not suit the kind of dataset (errors raised inside Hydra's instantiate reach the user
    wrapped in its InstantiationException, hence this check ahead of it)."""
    if isinstance(datamodule, ClassDataModule):
        class_set_miner(mining)
    elif is_online_miner(mining):
        # landmark sets draw triplets from per-query pools: an online miner cannot serve them
        raise UserFacingError("mining=batch_hard / semi_hard choose negatives inside P×K batches of "
                              "class-labelled data (dataset=folder|csv); landmark sets take their "
                              "negatives from per-query pools: use mining=random or mining=ssim")


def mine_triplets(miner: BaseMiner | None, embeddings: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) index tensors into the batch."""
    indices = miner(embeddings, labels) if miner is not None else None
    # pair miners return (a1, p, a2, n): pml turns them into triplets sharing the anchor
    return lmu.convert_to_triplets(indices, labels, t_per_anchor="all")
