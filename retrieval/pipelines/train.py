"""The training run: baseline evaluation, fit, evaluation of the best checkpoint.

retrieval-train                                   # generated toy set, CPU, minutes
python train.py dataset=paris6k trainer=gpu       # the same command from a clone
retrieval-train --cfg job                         # print the composed config
retrieval-train -m model.optimizer.lr=1e-6,5e-6   # a grid sweep
retrieval-train hparams_search=optuna             # an Optuna TPE sweep of val/mAP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from retrieval.models.checkpoints import load_weights
from retrieval.pipelines.build import build_datamodule, build_model, build_trainer, instantiate_group
from retrieval.pipelines.cli import hydra_command
from retrieval.pipelines.report import print_metrics
from retrieval.pipelines.variants import pretrained
from retrieval.tracking.wandb_run import finishing_wandb_run
from retrieval.training.evaluation_callback import RetrievalEvaluation
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)

LEAK_WARNING = (
    "note: under this split the evaluated queries are also training images, so these "
    "numbers are optimistic; leak-free: split=cross or split=landmark_disjoint "
    "(landmark sets), held-out images (class-labelled sets: dataset.val_fraction > 0)."
)


def _find(callbacks: list, kind: type):
    return next((c for c in callbacks if isinstance(c, kind)), None)


def _best_checkpoint(callbacks: list) -> ModelCheckpoint | None:
    """The callback that keeps the best epoch by a metric (not the one writing last.ckpt)."""
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    return next((c for c in checkpoints if c.monitor is not None), checkpoints[0] if checkpoints else None)


def _in_metric_sweep() -> bool:
    """Whether this job runs under a sweeper that maximises its return value (Optuna)."""
    try:
        sweeper = HydraConfig.get().sweeper
    except ValueError:  # composed outside a Hydra app (tests, notebooks)
        return False
    return "optuna" in str(sweeper.get("_target_", "")).lower()


def train(cfg: DictConfig) -> float | None:
    """Run one training job; returns ``cfg.optimized_metric`` of the final evaluation."""
    if _in_metric_sweep() and not (cfg.evaluate_after and cfg.train):
        raise UserFacingError(
            f"an Optuna sweep maximises {cfg.optimized_metric} of each trial's final evaluation, "
            "but this configuration does not train and evaluate (evaluate_after=false or "
            "train=false; debug=fast skips evaluation). For a quick sweep use debug=limit, e.g. "
            "python train.py hparams_search=optuna debug=limit hydra.sweeper.n_trials=2"
        )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    if cfg.ckpt_path:  # a wrong file is one paragraph now, not a traceback from inside Lightning
        load_weights(model, cfg.ckpt_path)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer = build_trainer(cfg, callbacks, loggers)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    evaluator: RetrievalEvaluation | None = _find(callbacks, RetrievalEvaluation)
    results: dict[str, dict[str, float]] = {}

    def evaluate(label: str, ckpt_path: str | None = None) -> None:
        trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        if evaluator is not None and evaluator.last_result is not None:
            results[label] = evaluator.last_result.metrics

    if cfg.evaluate_before and evaluator is not None and not cfg.ckpt_path:
        evaluate("untrained")
    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    checkpoint = _best_checkpoint(callbacks)
    if cfg.evaluate_after and evaluator is not None and not trainer.interrupted:
        best = checkpoint.best_model_path if checkpoint is not None else ""
        # train=false evaluates the given checkpoint, or with none the network as built
        label = "trained" if cfg.train else ("checkpoint" if cfg.ckpt_path else "untrained")
        if label not in results:  # train=false without a checkpoint: evaluated once, before
            evaluate(label, best or (None if cfg.train else cfg.ckpt_path))

    if results and trainer.is_global_zero:  # one report and one metrics.json, not one per process
        # "untrained" names the run before training in metrics.json; the report says whether
        # that network is an ImageNet one or a random one
        before = "untrained (ImageNet)" if pretrained(cfg) else "untrained"
        shown = {before if label == "untrained" else label: metrics for label, metrics in results.items()}
        print_metrics(shown, f"{datamodule.name}: retrieval metrics (%)")
        if datamodule.evaluates_on_training_anchors:
            print(LEAK_WARNING)
        # R@1: the headline of class-labelled sets (their "mAP" is MAP@R)
        for key in ("mAP", "R@1"):
            if {"untrained", "trained"} <= results.keys() and key in results["trained"]:
                gain = results["trained"][key] - results["untrained"][key]
                print(
                    f"{key} {before} {results['untrained'][key]:.4f} -> trained "
                    f"{results['trained'][key]:.4f} ({gain:+.4f})"
                )
        out = Path(cfg.paths.output_dir) / "metrics.json"
        out.write_text(
            json.dumps(
                {"results": results, "best_checkpoint": checkpoint.best_model_path if checkpoint else None},
                indent=2,
            )
        )
        log.info("metrics written to %s", out)
    final = results.get("trained") or results.get("checkpoint") or results.get("untrained") or {}
    key = cfg.optimized_metric.split("/", 1)[-1]
    return final.get(key)


def train_job(cfg: DictConfig) -> float | None:
    # one W&B run per job: multirun jobs share a process under the basic launcher
    with finishing_wandb_run():
        # the sweepers (Optuna) read the job's return value: cfg.optimized_metric
        return train(cfg)


main = hydra_command("train", train_job)

if __name__ == "__main__":
    main()
