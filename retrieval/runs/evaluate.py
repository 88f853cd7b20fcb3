"""Evaluate a checkpoint (or an untrained / ImageNet baseline) on a dataset's protocol."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf

from retrieval.evaluation.callback import RetrievalEvaluation
from retrieval.runs.build import build_datamodule, build_model, build_trainer
from retrieval.runs.report import print_metrics
from retrieval.runs.train import LEAK_WARNING
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_weights(model: L.LightningModule, ckpt_path: Path) -> None:
    if not ckpt_path.is_file():
        raise UserFacingError(f"checkpoint {ckpt_path} does not exist (ckpt_path=...)")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise UserFacingError(f"checkpoint {ckpt_path} does not match the configured model "
                              f"(pass the same model/pooling overrides it was trained with): "
                              f"{str(error).splitlines()[0]}") from None


def evaluate(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.val_triplets = False  # metrics only: no triplets, no negative mining
    model = build_model(cfg)
    ckpt = Path(cfg.ckpt_path) if cfg.ckpt_path else None
    if ckpt is not None:
        load_weights(model, ckpt)
    evaluator = RetrievalEvaluation(ks=tuple(cfg.ks))
    trainer = build_trainer(cfg, [evaluator, RichProgressBar()], [], max_epochs=1)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    result = evaluator.last_result
    label = "checkpoint" if ckpt else "untrained" + (" (ImageNet)" if cfg.model.net.backbone.pretrained else "")
    print_metrics({label: result.metrics}, f"{datamodule.name}: {result.protocol} protocol (%)")
    if datamodule.evaluates_on_training_anchors and ckpt is not None:
        print(LEAK_WARNING)

    names = [q.name for q in datamodule.eval_gt.queries]
    report = {
        "dataset": datamodule.name,
        "protocol": result.protocol,
        "checkpoint": str(ckpt) if ckpt else None,
        "checkpoint_sha256": file_sha256(ckpt) if ckpt else None,
        "metrics": result.metrics,
        "per_query_ap": {setup: {n: (None if np.isnan(ap) else float(ap)) for n, ap in zip(names, aps)}
                         for setup, aps in result.per_query_ap.items()},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(cfg.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"metrics written to {out}")
    return report
