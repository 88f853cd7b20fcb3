"""A searchable database: the descriptors of a dataset's images plus everything needed to
embed a new query the same way (model config, checkpoint hash, whitening).

    python -m retrieval.serving.database build ckpt_path=CKPT dataset=oxford5k [db_dir=DIR]
        [whitening.dim=512] [whitening.enabled=false] [dtype=float32] [overwrite=true]

On disk (a directory, written atomically: built in ``<dir>.tmp-XXXX`` and renamed into
place, so a crash never leaves a half artifact under the final name):

- ``embeddings.npy``: ``(n, dim)`` float16 or float32, L2-normalised, whitened when
  whitening is on: the vectors the search index is built from;
- ``whitening.npz``: the PCA whitening (:class:`~retrieval.evaluation.whitening.Whitening`)
  that queries go through, when whitening is on;
- ``meta.json``: format version, image paths (absolute) and names, dataset and image root,
  the resolved ``model`` config and image size, checkpoint path + sha256, embedding and
  whitening settings, creation time, library versions.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from retrieval.datamodules.transforms import eval_transform
from retrieval.evaluation.whitening import Whitening, fit_whitening
from retrieval.runs.build import build_datamodule, build_model
from retrieval.runs.evaluate import file_sha256, load_weights
from retrieval.serving.embed import embed_dataset
from retrieval.utils.errors import UserFacingError, exit_on_user_error

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
EMBEDDINGS, META, WHITENING = "embeddings.npy", "meta.json", "whitening.npz"
BUILD_HINT = "python -m retrieval.serving.database build ckpt_path=CKPT dataset=NAME db_dir=DIR"
_VERSIONED = ("retrieval", "torch", "torchvision", "timm", "lightning", "numpy", "scikit-learn", "faiss-cpu")


class DatabaseError(UserFacingError):
    """A database directory is missing, incomplete, of another format version, or stale."""


class CheckpointMismatchError(DatabaseError):
    """The checkpoint offered for queries is not the one the database was built with."""


@dataclass
class DatabaseArtifact:
    embeddings: np.ndarray  # (n, dim): the searchable vectors (whitened if ``whitening``)
    image_paths: list[str]  # absolute
    image_names: list[str]
    dataset: str
    image_root: str | None
    model_config: dict  # the resolved ``model`` node of the build's config
    image_size: int
    checkpoint: str | None
    checkpoint_sha256: str | None
    whitening: Whitening | None = None
    whitening_info: dict = field(default_factory=dict)  # settings and what it was fit on
    scales: tuple[float, ...] = (1.0,)
    created_at: str = ""
    versions: dict = field(default_factory=dict)
    path: Path | None = None  # where it was loaded from

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def meta(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "created_at": self.created_at,
            "dataset": self.dataset,
            "image_root": self.image_root,
            "images": {"paths": self.image_paths, "names": self.image_names},
            "embedding": {"count": len(self.embeddings), "dim": self.dim,
                          "dtype": str(self.embeddings.dtype), "scales": list(self.scales)},
            "model": {"config": self.model_config, "image_size": self.image_size},
            "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256},
            "whitening": None if self.whitening is None else
            {"file": WHITENING, "dim": self.whitening.dim, "input_dim": self.whitening.input_dim,
             **self.whitening_info},
            "versions": self.versions,
        }

    def write(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write atomically to ``directory``; replaces an existing database only with ``overwrite``."""
        target = Path(directory).expanduser().resolve()
        _check_target(target, overwrite)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{secrets.token_hex(4)}")
        tmp.mkdir()
        try:
            np.save(tmp / EMBEDDINGS, self.embeddings)
            if self.whitening is not None:
                np.savez(tmp / WHITENING, **self.whitening.to_dict())
            # meta.json last: a directory with meta.json was written completely
            (tmp / META).write_text(json.dumps(self.meta(), indent=1))
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir() or (any(target.iterdir()) and not (target / META).is_file()):
        # never delete a folder that is not a database: db_dir may be mistyped
        raise DatabaseError(f"{target} exists and is not a database; choose another db_dir")
    if (target / META).is_file() and not overwrite:
        raise DatabaseError(f"database {target} already exists; pass overwrite=true to replace it")


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and deleted
    after (a directory cannot be atomically replaced by another non-empty one on POSIX)."""
    if target.exists():
        old = target.with_name(f"{target.name}.old-{secrets.token_hex(4)}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)  # put the previous database back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _read_meta(directory: Path) -> dict:
    if not directory.is_dir():
        raise DatabaseError(f"database directory {directory} does not exist (db=DIR); build one with {BUILD_HINT}")
    if not (directory / META).is_file():
        raise DatabaseError(f"{directory} is not a database (no {META}); build one with {BUILD_HINT}")
    try:
        meta = json.loads((directory / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatabaseError(f"database {directory}: {META} is not valid JSON ({error}); rebuild it") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise DatabaseError(f"database {directory} has format version {version}, this code reads version "
                            f"{FORMAT_VERSION}; rebuild it with {BUILD_HINT}")
    return meta


def load_database(directory: str | Path) -> DatabaseArtifact:
    """Read and validate a database directory written by :meth:`DatabaseArtifact.write`."""
    directory = Path(directory).expanduser().resolve()
    meta = _read_meta(directory)
    try:
        return _artifact_from(meta, directory)
    except (KeyError, TypeError) as error:  # a hand-edited or truncated meta.json / whitening.npz
        raise DatabaseError(f"database {directory}: {META} or {WHITENING} lacks {error}; rebuild it "
                            f"with {BUILD_HINT}") from None


def _artifact_from(meta: dict, directory: Path) -> DatabaseArtifact:
    embeddings = _load_array(directory / EMBEDDINGS)
    paths, names, dim = meta["images"]["paths"], meta["images"]["names"], meta["embedding"]["dim"]
    if embeddings.ndim != 2 or embeddings.shape != (len(paths), dim) or len(names) != len(paths):
        raise DatabaseError(f"database {directory}: {EMBEDDINGS} has shape {embeddings.shape} but {META} lists "
                            f"{len(paths)} images of dimension {dim}; rebuild it")
    whitening = None
    if meta["whitening"] is not None:
        with _open_npz(directory / WHITENING) as stored:
            whitening = Whitening.from_dict(stored)
    return DatabaseArtifact(
        embeddings=embeddings, image_paths=paths, image_names=names, dataset=meta["dataset"],
        image_root=meta.get("image_root"), model_config=meta["model"]["config"],
        image_size=int(meta["model"]["image_size"]), checkpoint=meta["checkpoint"]["path"],
        checkpoint_sha256=meta["checkpoint"]["sha256"], whitening=whitening,
        whitening_info={k: v for k, v in (meta["whitening"] or {}).items() if k not in ("file", "dim", "input_dim")},
        scales=tuple(meta["embedding"].get("scales", (1.0,))), created_at=meta.get("created_at", ""),
        versions=meta.get("versions", {}), path=directory)


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatabaseError(f"database {path.parent} is incomplete: {path.name} is missing; rebuild it")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DatabaseError(f"database {path.parent}: {path.name} is unreadable ({error}); rebuild it") from None


def _open_npz(path: Path):
    if not path.is_file():
        raise DatabaseError(f"database {path.parent} is incomplete: {path.name} is missing; rebuild it")
    return np.load(path, allow_pickle=False)


def load_model_for_database(artifact: DatabaseArtifact, ckpt_path: str | Path | None = None):
    """``(model, transform)`` that embed a query exactly as the database was embedded.

    The network is rebuilt from the stored model config and loaded from the database's
    checkpoint (or ``ckpt_path``, if it moved); a checkpoint whose sha256 differs from the
    one recorded at build time is refused: its descriptors would not match the database's.
    """
    config = copy.deepcopy(artifact.model_config)
    if artifact.checkpoint_sha256 is not None:
        ckpt = Path(ckpt_path or artifact.checkpoint).expanduser()
        if not ckpt.is_file():
            raise DatabaseError(f"checkpoint {ckpt} of database {artifact.path} does not exist; pass "
                                f"ckpt_path=FILE if it moved (it must be the same file: sha256 "
                                f"{artifact.checkpoint_sha256[:12]}...)")
        digest = file_sha256(ckpt)
        if digest != artifact.checkpoint_sha256:
            raise CheckpointMismatchError(
                f"database {artifact.path} was built with another checkpoint; rebuild it "
                f"(python -m retrieval.serving.database build ckpt_path={ckpt} ...) or query it with "
                f"the original checkpoint (sha256 {artifact.checkpoint_sha256[:12]}..., {ckpt} has "
                f"{digest[:12]}...)")
        # every weight comes from the checkpoint: never download or read backbone weights
        config["net"]["backbone"].update(pretrained=False, weights_path=None)
    model = instantiate(config)
    if artifact.checkpoint_sha256 is not None:
        load_weights(model, ckpt)
    return model.eval(), eval_transform(artifact.image_size)


# ------------------------------------------------------------------------------ build
def _library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _fit_whitening(cfg: DictConfig, embeddings: np.ndarray, checkpoint_sha256: str | None) -> tuple[Whitening, dict]:
    source = "database"
    if cfg.fit_on:
        other = load_database(cfg.fit_on)
        if other.whitening is not None or other.checkpoint_sha256 != checkpoint_sha256:
            raise DatabaseError(f"whitening.fit_on={other.path} must be a database built with the same "
                                f"checkpoint and whitening.enabled=false")
        embeddings, source = other.embeddings.astype(np.float32), f"{other.dataset} ({other.path})"
    whitening = fit_whitening(embeddings, dim=cfg.dim, power=cfg.power, shrinkage=cfg.shrinkage,
                              random_state=cfg.random_state)
    return whitening, {"power": whitening.power, "shrinkage": whitening.shrinkage,
                       "fit_on": source, "fit_count": len(embeddings)}


def _evaluation_root(datamodule) -> str | None:
    """Root of the dataset whose images the database holds: under a cross-dataset protocol
    the evaluation set, not the training set."""
    eval_reader = getattr(datamodule, "load_eval_ground_truth", None)
    root = getattr(eval_reader, "keywords", {}).get("root") if eval_reader is not None else datamodule.root
    return str(Path(root).resolve()) if root else None


def build_database(cfg: DictConfig) -> Path:
    """Embed ``cfg.dataset``'s database images with ``cfg.ckpt_path`` and write the artifact."""
    backbone = cfg.model.net.backbone
    if not cfg.ckpt_path and not (backbone.pretrained or backbone.weights_path):
        raise UserFacingError("a database needs the network's weights: ckpt_path=CKPT (a trained "
                              "checkpoint) or pretrained ImageNet weights (model.net.backbone.pretrained="
                              "true or weights_path=FILE); a random network could not be rebuilt for queries")
    _check_target(Path(cfg.db_dir).expanduser().resolve(), cfg.overwrite)  # before the long part
    datamodule = build_datamodule(cfg)
    datamodule.val_triplets = False
    datamodule.prepare_data()
    datamodule.setup("validate")
    model = build_model(cfg)
    ckpt = Path(cfg.ckpt_path).expanduser().resolve() if cfg.ckpt_path else None
    if ckpt is not None:
        load_weights(model, ckpt)
    sha = file_sha256(ckpt) if ckpt is not None else None
    dataset = datamodule.database_dataset()
    embeddings = embed_dataset(model, dataset, cfg.embed.batch_size, cfg.embed.num_workers,
                               cfg.embed.device, tuple(cfg.embed.scales), description="database")
    whitening, info = (_fit_whitening(cfg.whitening, embeddings, sha) if cfg.whitening.enabled
                       else (None, {}))
    vectors = whitening.apply(embeddings) if whitening is not None else embeddings
    artifact = DatabaseArtifact(
        embeddings=vectors.astype(cfg.dtype), image_paths=[str(Path(p).resolve()) for p in dataset.paths],
        image_names=list(datamodule.eval_gt.image_names), dataset=datamodule.eval_gt.name,
        image_root=_evaluation_root(datamodule),
        model_config=OmegaConf.to_container(cfg.model, resolve=True), image_size=int(cfg.dataset.image_size),
        checkpoint=str(ckpt) if ckpt else None, checkpoint_sha256=sha, whitening=whitening,
        whitening_info=info, scales=tuple(float(s) for s in cfg.embed.scales),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), versions=_library_versions())
    path = artifact.write(cfg.db_dir, overwrite=cfg.overwrite)
    print(f"database of {len(vectors)} images ({datamodule.name}, {artifact.dim}-d {cfg.dtype}"
          f"{', PCA-whitened' if whitening else ''}) written to {path}")
    return path


@hydra.main(version_base="1.3", config_path="../../configs", config_name="database.yaml")
@exit_on_user_error
def _build_main(cfg: DictConfig) -> None:
    build_database(cfg)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] != "build":
        sys.exit(f"usage: {BUILD_HINT} [whitening.dim=512] [overwrite=true] (any Hydra override)")
    del sys.argv[1]  # Hydra parses the rest as overrides
    _build_main()


if __name__ == "__main__":
    main()
