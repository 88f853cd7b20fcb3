"""LightningModule training an embedding network with a triplet loss."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from retrieval.datamodules.landmark_datamodule import VAL_TRIPLETS
from retrieval.training.losses import ClassificationLoss, compute_loss
from retrieval.training.parameter_groups import parameter_groups
from retrieval.utils.errors import UserFacingError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class TripletRetrievalModule(L.LightningModule):
    """``net`` maps images to L2-normalised embeddings; ``loss`` is one of the loss group's
    (:mod:`retrieval.training.losses`): on landmark triplets a triplet or pair loss.
    Optimizer and scheduler come as partials from the config; a loss with parameters (the
    class weights of a classification loss) is a submodule, so it is in the optimizer and
    in every checkpoint.

    ``freeze_batchnorm`` (default): BatchNorm layers stay in eval mode while training, so they
    normalise with their ImageNet running statistics and do not re-estimate them from each
    small batch of tuples (their affine weights still train). cirtorch does the same
    (``set_batchnorm_eval`` in its examples/train.py). Measured on the generated sets
    (tests/training/test_losses_train.py, 12 steps): with batch statistics every loss first
    lowered the held-out metric below the ImageNet network's (triplet on toy: mAP 62.2 ->
    59.5); frozen, every loss raises it (triplet on toy: 62.2 -> 73.2)."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_options: dict | None = None,
        freeze_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        # Only plain values go into the checkpoint, so that it loads with
        # torch.load(weights_only=True): no factories (Hydra partials; the run's config holds
        # them anyway) and no Hydra containers (compile_options, subclasses' options).
        self.save_hyperparameters(logger=False, ignore=["net", "loss", "optimizer", "scheduler"])
        for key, value in list(self.hparams.items()):
            if isinstance(value, (DictConfig, ListConfig)):
                self.hparams[key] = OmegaConf.to_container(value, resolve=True)
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._configured = False

    def train(self, mode: bool = True) -> TripletRetrievalModule:
        # a call to train() (by the user, a callback, DDP's wrapper) keeps BatchNorm frozen
        super().train(mode)
        if mode:
            self._freeze_batchnorm()
        return self

    def on_train_start(self) -> None:
        # Lightning's fit loop never calls train(): it trains in the mode the module is in
        # (a fresh module: all train) and restores each submodule's own mode after each
        # validation, so one freeze when fit starts holds for every epoch (and for a run
        # resumed mid-epoch, which gets no on_train_epoch_start for that epoch)
        self._freeze_batchnorm()

    def _freeze_batchnorm(self) -> None:
        if self.hparams.get("freeze_batchnorm", True):
            for module in self.net.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what serving and export must normalise pixels with (plain lists: weights_only loads)
        checkpoint["input_normalization"] = self.net.input_normalization.to_dict()

    def configure_model(self) -> None:
        """Called by the trainer before the optimizer and before a checkpoint is restored.

        Sizes what waits for the data: a lazy head (head=linear) or per-channel GeM, by one
        dry forward at the datamodule's image size in eval mode (BatchNorm statistics stay
        untouched), and a classification loss's class weights (the datamodule's classes x
        the embedding size). Memory format and compilation come after, as they need
        materialised weights."""
        if self._configured:
            return
        self._configured = True
        lazy = any(
            isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in self.net.modules()
        )
        unsized_loss = isinstance(self.loss, ClassificationLoss) and not self.loss.built
        if lazy or unsized_loss:
            embedding_size = self._dry_forward().shape[1]
            if unsized_loss:
                self.loss.build(self._num_classes(), embedding_size)
        if self.hparams.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            # in place (nn.Module.compile): parameter names and checkpoints stay as without it
            self.net.compile(**dict(self.hparams.compile_options or {}))

    def _dry_forward(self) -> torch.Tensor:
        size = getattr(self.trainer.datamodule, "image_size", 224) if self._trainer else 224
        training = self.net.training
        with torch.no_grad():
            out = self.net.eval()(torch.zeros(1, 3, size, size, device=self.device))
        self.net.train(training)
        return out

    def _num_classes(self) -> int:
        """The training data's number of classes: a landmark-class datamodule's landmarks, a
        class set's classes (every class name counts, trained or not)."""
        datamodule = self.trainer.datamodule if self._trainer else None
        classes = getattr(datamodule, "num_classes", None)
        if classes is None and getattr(datamodule, "train_gt", None) is not None:
            classes = len(datamodule.train_gt.class_names)
        if classes is None:
            raise UserFacingError(
                f"model.loss={type(self.loss).__name__} learns one weight vector per class, but the "
                "training data has no classes (a landmark set's triplets): on a landmark set use "
                "model=landmark_classes, or a tuple loss (loss=triplet|contrastive|multi_similarity)"
            )
        return int(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _triplet_loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        anchor, positive, negative = batch
        # one batched forward for all three roles: one pass of the backbone over 3B images
        # keeps the accelerator busier than three passes over B (see bench/train_step.py)
        embeddings = self(torch.cat([anchor, positive, negative]))
        rows = torch.arange(anchor.shape[0], device=embeddings.device)
        # the batch's tuples as indices: (q_i, p_i, n_i) for a triplet loss, the pairs
        # (q_i, p_i) positive and (q_i, n_i) negative for a pair loss (cirtorch's contrastive)
        return compute_loss(self.loss, embeddings, None, (rows, rows + len(rows), rows + 2 * len(rows)))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._triplet_loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        if dataloader_idx == VAL_TRIPLETS:
            loss = self._triplet_loss(batch)
            self.log(
                "val/loss",
                loss,
                prog_bar=True,
                batch_size=batch[0].shape[0],
                add_dataloader_idx=False,
                sync_dist=True,
            )
            return None
        images, indices = batch
        # the evaluation callback collects these (queries: loader 0, database: loader 1)
        return {"embeddings": self(images).float(), "indices": indices}

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=parameter_groups(self.net, self.loss))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
