"""The ``loss`` group's objects, and the one call the modules make to any of them.

Three kinds of loss, told apart by type (:func:`compute_loss`):

* a triplet loss on ``(anchor, positive, negative)`` embeddings, e.g. torch's
  ``TripletMarginWithDistanceLoss`` (``loss=triplet``, the reference's);
* :class:`PairLoss`: a pytorch-metric-learning tuple/pair loss (``loss=contrastive``,
  ``loss=multi_similarity``) on the batch's embeddings with labels and/or explicit tuples;
  under DDP it gathers the other processes' embeddings (pml's ``DistributedLossWrapper``);
* :class:`ClassificationLoss`: a pml classification loss with its own class weights
  (``loss=arcface|cosface|subcenter_arcface``), sized when the run knows the number of
  classes and the embedding size, trained by the optimizer (its own lr if configured) and
  saved in checkpoints as ``loss.criterion.W``.

Landmark triplet batches give tuples and no labels; class-labelled P×K batches give labels
(and mined tuples where a miner is configured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, is_distributed
from torch import nn
from torch.nn.parameter import UninitializedParameter

from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)

Tuples = tuple[torch.Tensor, ...]  # pml indices: (a, p, n) triplets or (a1, p, a2, n) pairs


class PairLoss(nn.Module):
    """A pml tuple/pair loss. ``distributed``: under DDP, a loss on labels is computed on
    the embeddings of every process (pml's ``DistributedLossWrapper``; every cross-process
    pair, more negatives per anchor); one on explicit tuples (landmark triplets, mined
    tuples) stays local. Outside DDP the loss is called as it is (the wrapper would only
    warn)."""

    def __init__(self, criterion: BaseMetricLossFunction, distributed: bool = True, efficient: bool = False):
        super().__init__()
        self.criterion = criterion
        # the wrapper holds the same criterion (no parameters of its own): nothing doubles in
        # checkpoints, which see pair losses as parameter-free
        self.gather = DistributedLossWrapper(criterion, efficient=efficient) if distributed else None

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, tuples: Tuples | None = None
    ) -> torch.Tensor:
        if labels is None and tuples is None:
            raise ValueError("a pair loss needs labels or explicit tuples")
        # Gather only when the loss forms its pairs from the labels: explicit tuples index
        # this process's rows, so the gathered rows would go unused while pml's wrapper still
        # multiplies the loss by the world size (it assumes every rank's loss covers all
        # pairs), doubling the gradient at 2 processes. Computed locally, DDP's gradient
        # average gives the single-process gradient of the whole batch (tested).
        if self.gather is not None and tuples is None and is_distributed():
            return self.gather(embeddings, labels)
        return self.criterion(embeddings, labels, tuples)


class _Unbuilt(nn.Module):
    """Stands in for a classification criterion until it is sized: its ``W`` gives
    checkpoint loading the key to expect, with the shape still open."""

    def __init__(self) -> None:
        super().__init__()
        self.W = UninitializedParameter()

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        # as LazyModuleMixin does: an uninitialized parameter cannot be detached, keep it
        destination[prefix + "W"] = self.W


class ClassificationLoss(nn.Module):
    """A pml classification loss (``criterion``: a partial of e.g. ``ArcFaceLoss`` taking
    ``num_classes`` and ``embedding_size``), built by :meth:`build` once both are known (the
    module does it in ``configure_model``: classes from the datamodule, size from a dry
    forward), or from a checkpoint's ``W`` when one is loaded first.

    ``lr`` / ``weight_decay``: the optimizer's values for the class weights (None: the
    network's); margin-loss recipes often train them with a larger lr than the backbone.
    """

    def __init__(
        self,
        criterion: Callable[..., BaseMetricLossFunction],
        lr: float | None = None,
        weight_decay: float | None = None,
        num_classes: int | None = None,
        embedding_size: int | None = None,
    ) -> None:
        super().__init__()
        self.factory = criterion
        self.lr, self.weight_decay = lr, weight_decay
        self.criterion: nn.Module = _Unbuilt()
        if num_classes is not None and embedding_size is not None:
            self.build(num_classes, embedding_size)
        self.register_load_state_dict_pre_hook(self._build_from_state_dict)

    @property
    def built(self) -> bool:
        return not isinstance(self.criterion, _Unbuilt)

    @property
    def sub_centers(self) -> int:
        """Columns of ``W`` per class (sub-centre ArcFace keeps several)."""
        return int(getattr(self.factory, "keywords", {}).get("sub_centers", 1))

    def build(self, num_classes: int, embedding_size: int) -> None:
        if num_classes < 2:
            raise UserFacingError(
                f"a classification loss needs at least 2 classes in the training data, found {num_classes}"
            )
        self.criterion = self.factory(num_classes=num_classes, embedding_size=embedding_size)
        log.info(
            "%s: %d classes x %d-d class weights",
            type(self.criterion).__name__,
            num_classes,
            embedding_size,
        )

    def _build_from_state_dict(self, module, state_dict, prefix, *args) -> None:
        weight = state_dict.get(prefix + "criterion.W")
        if not self.built and weight is not None:
            self.build(weight.shape[1] // self.sub_centers, weight.shape[0])

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.built:
            raise RuntimeError("the classification loss is not sized yet (build it in configure_model)")
        return self.criterion(embeddings, labels)


def needs_labels(loss: nn.Module) -> bool:
    return isinstance(loss, ClassificationLoss)


def compute_loss(
    loss: nn.Module,
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    tuples: Tuples | None = None,
) -> torch.Tensor:
    """The loss of a batch's embeddings, whatever its kind (see the module docstring).
    ``tuples``: index tensors into ``embeddings`` (landmark triplets, or mined ones)."""
    if isinstance(loss, ClassificationLoss):
        if labels is None:
            name = getattr(loss.factory, "func", loss.factory).__name__
            raise UserFacingError(
                f"{name} trains on class labels, but this data gives (query, positive, negative) "
                "tuples: on a landmark set use model=landmark_classes (every training image "
                "labelled with its landmark), or a tuple loss (loss=triplet|contrastive|multi_similarity)"
            )
        return loss(embeddings, labels)
    if isinstance(loss, PairLoss):
        return loss(embeddings, labels, tuples)
    if tuples is None or len(tuples) != 3:
        raise ValueError("a triplet loss needs (anchor, positive, negative) indices")
    anchor, positive, negative = tuples
    if not len(anchor):  # nothing mined (e.g. no semi-hard triplet left): a zero that keeps the graph
        return embeddings.sum() * 0.0
    return loss(embeddings[anchor], embeddings[positive], embeddings[negative])
