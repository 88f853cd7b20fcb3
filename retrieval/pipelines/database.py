"""Build a searchable database: embed a dataset's database images with a checkpoint, fit
the whitening, write the artifact (:class:`~retrieval.serving.database.DatabaseArtifact`).

    retrieval-database build ckpt_path=CKPT dataset=oxford5k [db_dir=DIR]
        [whitening.dim=512] [whitening.enabled=auto|true|false] [whitening.fit_on_database=DIR]
        [dtype=float32] [overwrite=true] [trainer=ddp] [embed.shard_size=1024]
    retrieval-database add|remove ...   (retrieval.pipelines.database_growth)

The images are embedded by ``trainer.predict`` in shards (retrieval.serving.shards): a
killed build run again resumes at the first missing shard.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from retrieval.data.class_ground_truth import ClassGroundTruth
from retrieval.evaluation.protocols import evaluate_embeddings
from retrieval.evaluation.whitening import Whitening, fit_whitening
from retrieval.models.checkpoints import file_sha256, load_weights
from retrieval.models.inference import embed_dataset
from retrieval.pipelines.build import build_datamodule, build_model
from retrieval.pipelines.cli import hydra_command
from retrieval.pipelines.database_growth import add_images, remove_images
from retrieval.pipelines.database_shards import embed_database, embedding_settings, finish_shards
from retrieval.pipelines.variants import pretrained
from retrieval.serving.database import (
    BUILD_HINT,
    DatabaseArtifact,
    DatabaseError,
    check_target,
    load_database,
)
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)

_VERSIONED = ("retrieval", "torch", "torchvision", "timm", "lightning", "numpy", "scikit-learn", "faiss-cpu")


def _library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _fit_whitening(
    cfg: DictConfig, embeddings: np.ndarray, checkpoint_sha256: str | None
) -> tuple[Whitening, dict]:
    """Fit on this database's ``embeddings``, or on those of the database directory
    ``cfg.fit_on_database`` (built with the same checkpoint, unwhitened: leak-free)."""
    source = "database"
    if cfg.fit_on_database:
        other = load_database(cfg.fit_on_database)
        if other.whitening is not None or other.checkpoint_sha256 != checkpoint_sha256:
            raise DatabaseError(
                f"whitening.fit_on_database={other.path} must be a database built with "
                f"the same checkpoint and whitening.enabled=false"
            )
        embeddings, source = other.embeddings.astype(np.float32), f"{other.dataset} ({other.path})"
    whitening = fit_whitening(
        embeddings, dim=cfg.dim, power=cfg.power, shrinkage=cfg.shrinkage, random_state=cfg.random_state
    )
    return whitening, {
        "power": whitening.power,
        "shrinkage": whitening.shrinkage,
        "fit_on": source,
        "fit_count": len(embeddings),
    }


def _headline(metrics: dict[str, float]) -> float:
    """mAP of the classic protocol, Medium of the revisited one, MAP@R of a class set."""
    return metrics.get("mAP", metrics.get("M/mAP", float("nan")))


def _whitening_mode(cfg: DictConfig) -> str:
    mode = str(cfg.whitening.enabled).lower()
    if mode not in ("true", "false", "auto"):
        raise UserFacingError(f"whitening.enabled={cfg.whitening.enabled!r}: use true, false or auto")
    return mode


def _choose_whitening(
    cfg: DictConfig, datamodule, model, embeddings: np.ndarray, sha: str | None
) -> tuple[Whitening | None, dict]:
    """``whitening.enabled``: true, false, or auto: fit it, then keep it only if it does not
    lower the dataset's own headline metric (mAP over its queries; MAP@R of a class set)
    against the plain vectors. PCA whitening fitted on a few hundred images can amplify noise
    axes and cost more than half the mAP (the toy set), while on Oxford-size sets it is the
    reference recipe's gain: only a measurement on the data decides."""
    mode = _whitening_mode(cfg)
    if mode == "false":
        return None, {}
    whitening, info = _fit_whitening(cfg.whitening, embeddings, sha)
    if mode == "true":
        return whitening, info
    gt = datamodule.eval_gt
    if isinstance(gt, ClassGroundTruth):  # the gallery queries itself (leave-one-out)
        queries = embeddings
    else:
        queries = embed_dataset(
            model,
            datamodule.query_dataset(),
            cfg.embed.batch_size,
            cfg.embed.num_workers,
            cfg.embed.device,
            tuple(cfg.embed.scales),
            description="queries (whitening.enabled=auto)",
        )
    plain = _headline(evaluate_embeddings(queries, embeddings, gt).metrics)
    whitened = _headline(
        evaluate_embeddings(whitening.apply(queries), whitening.apply(embeddings), gt).metrics
    )
    keep = whitened > plain
    print(
        f"whitening.enabled=auto: mAP over the {gt.name} queries {100 * plain:.2f} plain, "
        f"{100 * whitened:.2f} PCA-whitened (shrinkage {whitening.shrinkage:g}): "
        f"{'whitened' if keep else 'plain'} vectors kept"
    )
    if not keep:
        return None, {}
    return whitening, {**info, "chosen_by": {"metric": "mAP", "plain": plain, "whitened": whitened}}


def _evaluation_root(datamodule) -> str | None:
    """Root of the dataset whose images the database holds: under split=cross the evaluation
    set, not the training set."""
    eval_reader = getattr(datamodule, "load_eval_ground_truth", None)
    root = getattr(eval_reader, "keywords", {}).get("root") if eval_reader is not None else datamodule.root
    return str(Path(root).resolve()) if root else None


def build_database(cfg: DictConfig) -> Path:
    """Embed ``cfg.dataset``'s database images with ``cfg.ckpt_path`` and write the artifact."""
    if not cfg.ckpt_path and not pretrained(cfg):
        raise UserFacingError(
            "a database needs the network's weights: ckpt_path=CKPT (a trained "
            "checkpoint) or pretrained backbone weights (model.net.backbone.weights=imagenet|FILE); "
            "a random network could not be rebuilt for queries"
        )
    _whitening_mode(cfg)  # bad settings fail before the long part
    check_target(Path(cfg.db_dir).expanduser().resolve(), cfg.overwrite)
    datamodule = build_datamodule(cfg)
    datamodule.val_triplets = False
    datamodule.prepare_data()
    datamodule.setup("validate")
    model = build_model(cfg)
    ckpt = Path(cfg.ckpt_path).expanduser().resolve() if cfg.ckpt_path else None
    if ckpt is not None:
        load_weights(model, ckpt, network_only=True)
    sha = file_sha256(ckpt) if ckpt is not None else None
    dataset = datamodule.database_dataset()
    paths = [str(Path(p).resolve()) for p in dataset.paths]
    settings = embedding_settings(
        cfg,
        sha,
        OmegaConf.to_container(cfg.model, resolve=True),
        cfg.dataset.image_size,
        model.net.input_normalization,
        cfg.embed.scales,
    )
    sharded = embed_database(cfg, model, dataset, paths, settings)
    if sharded is None:  # a DDP rank other than 0: its shards are written, rank 0 merges
        return Path(cfg.db_dir).expanduser().resolve()
    embeddings = sharded.vectors
    whitening, info = _choose_whitening(cfg, datamodule, model, embeddings, sha)
    vectors = whitening.apply(embeddings) if whitening is not None else embeddings
    artifact = DatabaseArtifact(
        embeddings=vectors.astype(cfg.dtype),
        image_paths=paths,
        image_names=list(datamodule.eval_gt.image_names),
        dataset=datamodule.eval_gt.name,
        image_root=_evaluation_root(datamodule),
        model_config=OmegaConf.to_container(cfg.model, resolve=True),
        image_size=int(cfg.dataset.image_size),
        input_normalization=model.net.input_normalization,
        checkpoint=str(ckpt) if ckpt else None,
        checkpoint_sha256=sha,
        whitening=whitening,
        whitening_info=info,
        scales=tuple(float(s) for s in cfg.embed.scales),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_library_versions(),
    )
    path = artifact.write(cfg.db_dir, overwrite=cfg.overwrite)
    finish_shards(sharded, cfg)
    print(
        f"database of {len(vectors)} images ({datamodule.name}, {artifact.dim}-d {cfg.dtype}"
        f"{', PCA-whitened' if whitening else ''}) written to {path}"
    )
    return path


ACTIONS = {"build": build_database, "add": add_images, "remove": remove_images}


def database_job(cfg: DictConfig) -> Path:
    if cfg.action not in ACTIONS:
        raise UserFacingError(
            f"unknown database action {cfg.action!r}; usage: {BUILD_HINT}, "
            f"retrieval-database add db_dir=DIR images=DIR, or retrieval-database remove db_dir=DIR 'names=[...]'"
        )
    return ACTIONS[cfg.action](cfg)


# `retrieval-database build|add|remove ...`: the sub-command word is the override action=...
main = hydra_command("database", database_job, verbs={a: f"action={a}" for a in ACTIONS})


if __name__ == "__main__":
    main()
