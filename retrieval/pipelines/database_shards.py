"""The database commands' embedding step: the shard plan of a build (where, keyed by
what), the trainer from ``cfg.trainer``, and what is said and removed once it is merged."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from retrieval.models.input_normalization import InputNormalization
from retrieval.serving.sharded_embedding import ShardedEmbedding, embed_in_shards
from retrieval.serving.shards import ShardPlan


def embedding_settings(
    cfg: DictConfig,
    checkpoint_sha256: str | None,
    model_config: dict,
    image_size: int,
    normalization: InputNormalization,
    scales: Sequence[float],
) -> dict:
    """Everything a descriptor depends on besides the image: shards embedded under other
    settings are never reused (the shard key hashes this)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "model": model_config,
        "image_size": int(image_size),
        "input_normalization": normalization.to_dict(),
        "scales": [float(s) for s in scales],
        # bf16 autocast on CUDA moves descriptors by ~1e-3: a CPU and a GPU shard never mix
        "cuda": accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available(),
    }


def work_folder(cfg: DictConfig) -> Path:
    """``.<db_dir name>.shards`` beside the database (same filesystem; hidden)."""
    if cfg.embed.get("shards_dir"):
        return Path(cfg.embed.shards_dir).expanduser().resolve()
    target = Path(cfg.db_dir).expanduser().resolve()
    return target.parent / f".{target.name}.shards"


def embed_database(
    cfg: DictConfig, net: nn.Module, dataset: Dataset, paths: Sequence[str], settings: dict
) -> ShardedEmbedding | None:
    """Embed ``dataset`` (images ``paths``) in shards with the trainer of ``cfg.trainer``;
    None on DDP ranks other than 0."""
    plan = ShardPlan.create(work_folder(cfg), settings, paths, int(cfg.embed.shard_size))
    callbacks = [instantiate(c) for c in (cfg.embed.get("callbacks") or {}).values() if c is not None]
    sharded = embed_in_shards(
        net,
        dataset,
        plan,
        partial(instantiate, cfg.trainer),
        int(cfg.embed.batch_size),
        int(cfg.embed.num_workers),
        tuple(settings["scales"]),
        callbacks,
    )
    if sharded is not None:
        reused = plan.count - sharded.embedded
        print(
            f"embedded {sharded.embedded} images in {plan.n_blocks} shard(s) of {plan.size}"
            + (f"; {reused} came from the shards of an interrupted build" if reused else "")
        )
    return sharded


def finish_shards(sharded: ShardedEmbedding, cfg: DictConfig) -> None:
    """The shards are in the database now: delete them unless ``embed.keep_shards``."""
    if not cfg.embed.get("keep_shards", False):
        sharded.plan.remove()
