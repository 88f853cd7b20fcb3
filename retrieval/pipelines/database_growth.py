"""``retrieval-database add`` and ``remove``: grow or shrink a built database in place
(written atomically, as a build is), embedding only the images it does not hold yet.

    retrieval-database add db_dir=DIR images=FOLDER_OR_FILE        (or 'images=[A,B]')
    retrieval-database remove db_dir=DIR 'names=[NAME,...]'

Added images are embedded with the database's own network (its stored model config and
checkpoint, checked by sha256), image size, normalisation and scales, through the same
sharded ``trainer.predict`` as a build (resumable; ``trainer=ddp`` works); the stored
whitening is reused, not refitted (see :mod:`retrieval.serving.growth`).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig

from retrieval.datamodules.image_datasets import ImageListDataset
from retrieval.pipelines.database_shards import embed_database, embedding_settings, finish_shards
from retrieval.serving.database import load_database, load_model_for_database
from retrieval.serving.growth import image_files, new_images, with_added, without
from retrieval.utils.errors import UserFacingError


def _listed(value: object, key: str, example: str) -> list[str]:
    if value is None or value == "" or (isinstance(value, (list, ListConfig)) and not value):
        raise UserFacingError(f"{key}= is required: e.g. {example}")
    return [str(v) for v in value] if isinstance(value, (list, ListConfig)) else [str(value)]


def add_images(cfg: DictConfig) -> Path:
    """Embed the images of ``cfg.images`` that ``cfg.db_dir`` lacks and append them."""
    sources = _listed(
        cfg.get("images"), "images", "images=DIR (searched recursively) or 'images=[A.jpg,B.jpg]'"
    )
    artifact = load_database(cfg.db_dir)
    target = Path(cfg.db_dir).expanduser().resolve()
    paths, names = new_images(artifact, image_files(sources))
    if not paths:
        print(f"database {artifact.path}: every image of images= is in it already; nothing to add")
        return target
    model, transform = load_model_for_database(artifact, cfg.ckpt_path)
    settings = embedding_settings(
        cfg,
        artifact.checkpoint_sha256,
        artifact.model_config,
        artifact.image_size,
        artifact.input_normalization,
        artifact.scales,
    )
    sharded = embed_database(
        cfg, model, ImageListDataset([Path(p) for p in paths], transform), paths, settings
    )
    if sharded is None:  # a DDP rank other than 0
        return target
    grown = with_added(artifact, sharded.vectors, paths, names)
    path = grown.write(target, overwrite=True)
    finish_shards(sharded, cfg)
    print(f"added {len(paths)} images to {path}: {len(grown.image_paths)} now")
    return path


def remove_images(cfg: DictConfig) -> Path:
    """Drop the rows of ``cfg.names`` from ``cfg.db_dir``."""
    names = _listed(cfg.get("names"), "names", "'names=[all_souls_000001,radcliffe_camera_000523]'")
    target = Path(cfg.db_dir).expanduser().resolve()
    smaller = without(load_database(target), names)
    path = smaller.write(target, overwrite=True)
    print(f"removed {len(names)} images from {path}: {len(smaller.image_paths)} left")
    return path
