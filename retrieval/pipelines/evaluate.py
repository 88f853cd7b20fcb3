"""Evaluate a checkpoint and untrained baselines side by side; one Rich table, one JSON.

One variant (see :mod:`retrieval.pipelines.variants`) goes through, each step off by default so
that the defaults reproduce the evaluation callback's numbers exactly:

    embed queries + database (``scales``) -> whitening (``whitening.kind`` pca|learned,
    fit on ``whitening.fit_on`` none|database|train) -> DBA on the database (``dba.n``) ->
    αQE of the queries (``qe.n``) -> cosine ranking -> re-ranking of each query's shortlist
    (``rerank=superglobal|diffusion|k_reciprocal``) -> the dataset's protocol metrics

The dataset's split (``split=...``, landmark sets) decides the evaluated queries and, for
``fit_on=train``, the images training may see.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from retrieval.datamodules.image_datasets import ImageListDataset
from retrieval.datamodules.transforms import eval_transform
from retrieval.evaluation import protocols
from retrieval.evaluation.learned_whitening import fit_learned_whitening
from retrieval.evaluation.protocols import EvaluationResult, evaluate_embeddings
from retrieval.evaluation.query_expansion import alpha_query_expansion, database_side_augmentation
from retrieval.evaluation.whitening import Whitening, fit_whitening
from retrieval.models.checkpoints import load_weights
from retrieval.models.inference import embed_dataset
from retrieval.pipelines.build import build_datamodule, build_model
from retrieval.pipelines.cli import hydra_command
from retrieval.pipelines.distractor_cache import distractor_vectors, sha256_of
from retrieval.pipelines.report import print_comparison
from retrieval.pipelines.train import LEAK_WARNING
from retrieval.pipelines.variants import Variant, compose_variants, describe, plain
from retrieval.tracking.embedding_plot import plot_embeddings
from retrieval.tracking.retrieval_grid import save_retrieval_grid
from retrieval.utils.errors import UserFacingError

log = logging.getLogger(__name__)


class Embeddings:
    """Descriptors of image sets: computed once per (network, image set) and shared by the
    variants that differ only afterwards (whitening, DBA, αQE)."""

    def __init__(self) -> None:
        self._models: dict[str, L.LightningModule] = {}
        self._vectors: dict[tuple, np.ndarray] = {}

    @staticmethod
    def network_key(cfg: DictConfig) -> str:
        # the seed matters: it draws the weights of an untrained network
        return json.dumps(
            {
                "net": plain(cfg.model.net),
                "ckpt": cfg.ckpt_path,
                "seed": cfg.seed,
                "scales": list(cfg.scales),
                "size": cfg.dataset.image_size,
            },
            sort_keys=True,
        )

    def model(self, cfg: DictConfig) -> L.LightningModule:
        key = self.network_key(cfg)
        if key not in self._models:
            # seeded right before building, as train.py does: an untrained network gets the
            # weights of train.py's "untrained" row, whichever variant builds it
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            self._models[key] = build_model(cfg)
            if cfg.ckpt_path:
                load_weights(self._models[key], Path(cfg.ckpt_path), network_only=True)
        return self._models[key]

    def __call__(self, cfg: DictConfig, images: ImageListDataset, description: str) -> np.ndarray:
        key = (self.network_key(cfg), tuple(map(str, images.paths)), tuple(images.bboxes))
        if key not in self._vectors:
            self._vectors[key] = embed_dataset(
                self.model(cfg),
                images,
                cfg.embed.batch_size,
                cfg.embed.num_workers,
                cfg.embed.device,
                tuple(float(s) for s in cfg.scales),
                description=description,
                bf16=cfg.embed.bf16,
            )
        return self._vectors[key]

    def database(self, cfg: DictConfig, datamodule, description: str) -> np.ndarray:
        """The evaluated database's descriptors; with distractors (ROxf+R1M) the benchmark's
        own images, then the distractors from their per-network cache (distractors.*)."""
        gt = datamodule.eval_gt
        if gt.distractors is None:
            return self(cfg, datamodule.database_dataset(), description)
        transform = eval_transform(datamodule.image_size, datamodule.normalization)
        key = (self.network_key(cfg), "distractors", gt.distractors.fingerprint)
        if key not in self._vectors:
            own = self(cfg, ImageListDataset(gt.image_paths[: gt.distractors.offset], transform), description)
            rest = distractor_vectors(cfg, self.model(cfg), gt.distractors, transform, datamodule.image_size)
            self._vectors[key] = np.concatenate([own, rest], dtype=np.float32)
        return self._vectors[key]


def training_images(datamodule) -> tuple[ImageListDataset, np.ndarray]:
    """What training may see: the training dataset's images minus the split's held-out
    ones (split=cross: another dataset is evaluated; split=landmark_disjoint: no image of a
    held-out landmark), and their indices in that dataset."""
    gt = datamodule.gt
    keep = np.setdiff1d(np.arange(len(gt.image_paths)), datamodule.split.held_out_images)
    return ImageListDataset(
        [gt.image_paths[i] for i in keep], eval_transform(datamodule.image_size, datamodule.normalization)
    ), keep


def training_anchors(datamodule) -> ImageListDataset:
    """The training queries, cropped as training crops its anchors."""
    queries = datamodule.gt.queries
    bboxes = [q.bbox if datamodule.train_anchor_crop else None for q in queries]
    return ImageListDataset(
        [q.path for q in queries], eval_transform(datamodule.image_size, datamodule.normalization), bboxes
    )


def fit_variant_whitening(
    cfg: DictConfig, datamodule, embed: Embeddings, database: np.ndarray
) -> tuple[Whitening | None, dict]:
    w = cfg.whitening  # settings checked by compose_variants
    if w.fit_on == "none":
        return None, {}
    if w.fit_on == "database":
        descriptors = database
    else:
        images, keep = training_images(datamodule)
        descriptors = embed(cfg, images, "training images")
    if w.kind == "pca":
        whitening = fit_whitening(descriptors, w.dim, w.power, w.shrinkage, w.random_state)
        return whitening, {"count": len(descriptors)}
    pairs = datamodule.train_pairs
    if not len(pairs):
        raise UserFacingError("whitening.kind=learned needs training pairs, and this split has none")
    anchors = embed(cfg, training_anchors(datamodule), "training queries")
    # rows: the training images, then the training queries
    rows = np.stack([len(keep) + pairs[:, 0], np.searchsorted(keep, pairs[:, 1])], axis=1)
    whitening = fit_learned_whitening(
        np.concatenate([descriptors, anchors]), rows, w.dim, w.power, w.shrinkage
    )
    return whitening, {"count": len(descriptors) + len(anchors), "pairs": len(rows)}


def check_supported(variant: Variant, datamodule) -> None:
    """Class-labelled sets (leave-one-out over one gallery) have no training pairs nor a
    database apart from the queries: only PCA whitening on the gallery applies there."""
    cfg = variant.cfg
    if datamodule.eval_gt.protocol == "leave_one_out" and (
        cfg.whitening.fit_on == "train" or cfg.qe.n or cfg.dba.n or cfg.get("rerank")
    ):
        raise UserFacingError(
            f"{variant.name}: on a class-labelled set (leave-one-out) only "
            f"whitening.fit_on=none|database applies; αQE, DBA, re-ranking and fit_on=train do not"
        )


def evaluate_variant(variant: Variant, datamodule, embed: Embeddings) -> tuple[EvaluationResult, dict]:
    cfg = variant.cfg
    queries = embed(cfg, datamodule.query_dataset(), f"{variant.name}: queries")
    database = embed.database(cfg, datamodule, f"{variant.name}: database")
    whitening, fitted = fit_variant_whitening(cfg, datamodule, embed, database)
    if whitening is not None:
        queries, database = whitening.apply(queries), whitening.apply(database)
        fitted = {**plain(cfg.whitening), "requested_dim": cfg.whitening.dim, "dim": whitening.dim, **fitted}
    database = database_side_augmentation(database, cfg.dba.n, cfg.dba.alpha)  # n=0: unchanged
    queries = alpha_query_expansion(queries, database, cfg.qe.n, cfg.qe.alpha)
    reranker = instantiate(cfg.rerank) if cfg.get("rerank") else None
    with ranking_progress(f"{variant.name}: ranking", len(queries), len(database)) as progress:
        result = evaluate_embeddings(queries, database, datamodule.eval_gt, cfg.ks, reranker, progress)
    return result, fitted


@contextmanager
def ranking_progress(
    description: str, n_queries: int, n_database: int
) -> Iterator[Callable[[int], None] | None]:
    """A progress bar over the database's blocks when the ranking is blocked (a 1M set:
    two passes of tens of seconds); nothing for a database ranked in one piece."""
    if n_queries * n_database <= protocols.FULL_RANKING_LIMIT:
        yield None
        return
    with Progress() as bar:
        task = bar.add_task(description, total=2 * n_database)  # two passes over the database
        yield lambda done: bar.advance(task, done)


def _entry(
    variant: Variant,
    result: EvaluationResult,
    whitening: dict,
    query_names: list[str],
    checkpoint_sha256: str | None,
) -> dict:
    """A variant's record in the JSON report."""
    cfg = variant.cfg
    return {
        "setup": describe(cfg, whitening.get("dim")),
        "overrides": list(variant.overrides),
        "checkpoint": cfg.ckpt_path,
        "checkpoint_sha256": checkpoint_sha256,
        "scales": list(cfg.scales),
        "whitening": whitening or None,
        "dba": plain(cfg.dba) if cfg.dba.n else None,
        "qe": plain(cfg.qe) if cfg.qe.n else None,
        "rerank": plain(cfg.rerank) if cfg.get("rerank") else None,
        "metrics": result.metrics,
        "per_query_ap": {
            setup: {n: (None if np.isnan(ap) else float(ap)) for n, ap in zip(query_names, aps)}
            for setup, aps in result.per_query_ap.items()
        },
    }


def evaluate(
    cfg: DictConfig, overrides: list[str] | tuple[str, ...] = (), config_name: str = "evaluate"
) -> dict:
    """Evaluate the run's config and every ``cfg.compare`` variant; ``overrides`` are the
    run's command-line overrides, which every variant starts from."""
    L.seed_everything(cfg.seed, workers=True)
    variants = compose_variants(cfg, overrides, config_name)
    datamodule = build_datamodule(cfg)
    datamodule.val_triplets = False  # metrics only: no triplets, no negative mining
    datamodule.prepare_data()
    datamodule.setup("validate")
    embed, results, entries, hashes = Embeddings(), {}, {}, {}
    names = [q.name for q in datamodule.eval_gt.queries]
    for variant in variants:
        check_supported(variant, datamodule)
    for variant in variants:
        results[variant.name], whitening = evaluate_variant(variant, datamodule, embed)
        ckpt = variant.cfg.ckpt_path
        if ckpt and ckpt not in hashes:
            hashes[ckpt] = sha256_of(ckpt)  # hashed once: the distractor cache's key has it
        entries[variant.name] = _entry(variant, results[variant.name], whitening, names, hashes.get(ckpt))

    protocol = results[variants[0].name].protocol
    print_comparison(
        {name: (entry["setup"], entry["metrics"]) for name, entry in entries.items()},
        f"{datamodule.name}: {protocol} protocol (%)",
        protocol,
    )
    if datamodule.evaluates_on_training_anchors and any(
        v.cfg.ckpt_path or v.cfg.whitening.fit_on == "train" for v in variants
    ):
        print(LEAK_WARNING)
    if cfg.get("embedding_plot"):  # plots of the run's own row, beside metrics.json
        own, out_dir = results[variants[0].name], Path(cfg.output_json).parent
        for plot in (
            plot_embeddings(
                own,
                datamodule.eval_gt,
                out_dir / f"embeddings_{cfg.embedding_plot}.png",
                method=cfg.embedding_plot,
                seed=cfg.seed,
            ),
            save_retrieval_grid(own, datamodule.eval_gt, out_dir / "retrieval_grid.png"),
        ):
            if plot is not None:
                print(f"plot written to {plot}")

    main = entries[variants[0].name]
    report = {
        "dataset": datamodule.name,
        "protocol": protocol,
        # the run's own row (the checkpoint, or the baseline it configures), as before
        "checkpoint": main["checkpoint"],
        "checkpoint_sha256": main["checkpoint_sha256"],
        "metrics": main["metrics"],
        "per_query_ap": main["per_query_ap"],
        "variants": entries,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(cfg.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"metrics written to {out}")
    return report


def evaluate_job(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    # the variants of `compare` are composed from the same command-line overrides
    return evaluate(cfg, list(hydra_cfg.overrides.task), hydra_cfg.job.config_name)


main = hydra_command("evaluate", evaluate_job)

if __name__ == "__main__":
    main()
