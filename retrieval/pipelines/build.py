"""Instantiate the run's objects from a composed config (shared by train and evaluate)."""

from __future__ import annotations

import logging

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from retrieval.models.input_normalization import InputNormalization
from retrieval.utils.arguments import check_arguments

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list:
    """Every ``_target_`` node of a mapping group (callbacks, loggers), in config order."""
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


def build_trainer(
    cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Logger], **overrides
) -> L.Trainer:
    check_arguments(L.Trainer, OmegaConf.to_container(cfg.trainer, resolve=True), "trainer")  # type: ignore[arg-type]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The dataset's datamodule, normalising pixels as the configured backbone expects."""
    log.info("dataset: %s", cfg.dataset.name)
    return instantiate(cfg.dataset, normalization=input_normalization(cfg))


def input_normalization(cfg: DictConfig) -> InputNormalization:
    """The configured backbone's pixel normalisation (timm's pretrained config): the one
    source for training, evaluation and database builds."""
    return InputNormalization.of_backbone(cfg.model.net.backbone.name)


def build_model(cfg: DictConfig) -> L.LightningModule:
    log.info("model: %s + %s", cfg.model.net.backbone.name, cfg.model.net.pooling._target_.rsplit(".", 1)[-1])
    return instantiate(cfg.model)
