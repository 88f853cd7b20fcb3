"""The contract between the landmark datamodule and the ``mining`` config group: sources of
negative pools, which the datamodule draws each epoch's triplet negatives from.

A pool is, for each query of the ground truth, the database indices a triplet of that query
may take its negative from (never an image tied to the query). There are two kinds of source,
and each is a structural :class:`typing.Protocol`, so the mining code implements it without
importing this module:

* :class:`NegativePoolSource`: pools from the ground truth alone, computed once per run:
  ``mining=random`` (:func:`retrieval.mining.pools.random_negative_pools`) and ``mining=ssim``
  (:func:`retrieval.mining.pools.ssim_negative_pools`, cached), as Hydra partials;
* :class:`EpochNegativePoolSource`: pools re-mined at every epoch with the network being
  trained: ``mining=current_model`` (:class:`retrieval.mining.model_negatives.CurrentModelNegatives`).

Class-labelled sets choose negatives inside each batch instead (the ``batch_miner`` group,
:mod:`retrieval.mining.in_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from torch import nn

from retrieval.data.ground_truth import RetrievalGroundTruth
from retrieval.data.truth import BBox


class NegativePoolSource(Protocol):
    """Per-query pools from the ground truth; ``cache_dir`` (``<cache>/<dataset>``) is where a
    source that is worth caching keeps its results."""

    def __call__(self, gt: RetrievalGroundTruth, cache_dir: Path) -> list[np.ndarray]: ...


@runtime_checkable
class EpochNegativePoolSource(Protocol):
    """Per-query pools mined with the network being trained, once per epoch: the training
    anchors (``query_bboxes``: as training crops them) against the database images that
    training may see (``held_out`` excluded), embedded at ``image_size``; seeded by
    ``(seed, epoch)``, so that every process mines the same pools."""

    def pools_for_epoch(
        self,
        gt: RetrievalGroundTruth,
        model: nn.Module,
        epoch: int,
        seed: int,
        image_size: int,
        query_bboxes: Sequence[BBox | None],
        held_out: np.ndarray,
    ) -> list[np.ndarray]: ...


NegativePools = NegativePoolSource | EpochNegativePoolSource
